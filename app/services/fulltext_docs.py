"""The full-text index of uploaded documentation: one row of `search_documents` per HTML page of
a doc set, read from its zip (what else is indexed, and when: app/services/fulltext.py)."""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
import zlib
from collections.abc import Iterable
from typing import IO

from sqlalchemy import delete
from sqlalchemy.orm import Session

from app.data.models import DocSet, SearchDocument
from app.services.fulltext_engines import MAX_FIELD_CHARS, html_text, write_documents
from app.services.mirror_description import Blobs

log = logging.getLogger(__name__)

HTML_SUFFIXES = (".html", ".htm")
SKIPPED_PAGES = {"genindex.html", "search.html", "py-modindex.html"}  # Sphinx's generated lists
SKIPPED_FOLDERS = ("_static/", "_sources/", "_images/")


@dataclasses.dataclass(frozen=True)
class DocsPage:
    """One HTML page of a doc set, as text."""

    path: str  # below the doc set's top folder, as in +doc/PATH
    title: str
    body: str


def read_docs(source: str | os.PathLike[str] | IO[bytes], prefix: str) -> list[DocsPage]:
    """The HTML pages of a documentation zip below `prefix` (checked at upload:
    app/http/web/docs.py), as text; Sphinx's generated index, search page and static files are left
    out."""
    pages = []
    with zipfile.ZipFile(source) as archive:
        for info in archive.infolist():
            name = info.filename.replace("\\", "/")
            # zipfile cuts a name at a NUL, which can leave it empty: ZipInfo.is_dir() fails then.
            if not name or name.endswith("/") or not name.startswith(prefix):
                continue
            path = name[len(prefix) :]
            if (
                not path.lower().endswith(HTML_SUFFIXES)
                or path in SKIPPED_PAGES
                or path.startswith(SKIPPED_FOLDERS)
                or ".." in path.split("/")
            ):
                continue
            try:
                with archive.open(info) as member:
                    page = member.read(MAX_FIELD_CHARS * 4).decode("utf-8", "replace")
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError):
                # A damaged, encrypted or oddly compressed member: the upload checks read only
                # the directory, and this page is as unreadable to the docs server; not indexed.
                log.warning("docs page %s is unreadable; not indexed", name)
                continue
            title, body = html_text(page)
            pages.append(DocsPage(path, title, body))
    return pages


def index_docset(session: Session, docset: DocSet, pages: Iterable[DocsPage]) -> int:
    """(Re)index a doc set from its pages (read_docs); return how many; the caller commits."""
    session.flush()  # a new doc set gets its id
    session.execute(delete(SearchDocument).where(SearchDocument.docset_id == docset.id))
    rows = [
        {
            "index_id": docset.index_id,
            "docset_id": docset.id,
            "kind": "docs",
            "normalized_name": docset.normalized_name,
            "version": docset.version,
            "path": page.path,
            "title": page.title,
            "body": page.body,
            "updated_at": docset.uploaded_at,
        }
        for page in pages
    ]
    write_documents(session, rows)
    return len(rows)


def index_stored_docset(session: Session, blobs: Blobs, docset: DocSet) -> int:
    """(Re)index a doc set from its zip in the blob store; return how many pages."""
    try:
        with blobs.open(docset.sha256) as blob:
            pages = read_docs(blob, docset.path_prefix)
    except (FileNotFoundError, zipfile.BadZipFile, OSError) as exc:  # checked at upload
        log.error(
            "cannot index the docs of %s %s (%s): %s",
            docset.normalized_name,
            docset.version,
            docset.sha256,
            exc,
        )
        return 0
    return index_docset(session, docset, pages)
