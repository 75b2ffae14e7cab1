"""Promoting a release: copy a version's files and docs from one stage into another (devpi push).

The staging workflow: upload to `alice/dev`, test, then copy the release into a non-volatile
`alice/prod` that installers use. A copy adds rows to the target that point at the same blobs
(files, PEP 658 sidecars, the docs zip): nothing is written to the blob store, and hashes,
upload times, uploader and metadata stay as they were. Every rule of the target holds:
`acl_upload`, immutability (`volatile=False`: other bytes under a filename it has are a
conflict, the same bytes a no-op), and the dependency-confusion guard, which is the project row
itself (app/services/indexes_view.py project_view: a name a stage holds hides its mirrors' project).
Reading the source needs read access to it (acl_read): a release the caller may not read
is answered exactly as a missing one.

No request objects here: app/http/devpi.py (devpi push), app/http/api.py and app/http/web call
`promote` and turn its errors into HTTP answers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from packaging.version import Version
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.dists import normalize_name
from app.data.db import begin_write
from app.data.models import DocSet, File, Index, Project, Promotion, User, utcnow
from app.services.fulltext_docs import index_stored_docset
from app.services.indexes import Reader, file_path, get_index_by_path, may_read
from app.services.mirror_description import Blobs
from app.services.provenance import copy_provenance
from app.services.releases import add_file, copied_fields, may_upload
from app.services.status import CLOSED_TO_UPLOADS, QUARANTINED

log = logging.getLogger(__name__)

EXTERNAL_PREFIX = "pypi:"  # devpi-client's target for another server (`devpi push X pypi:NAME`)
EXTERNAL_REFUSAL = (
    "pyshelf does not push to other servers (pypi: targets): it never sends packages or "
    "credentials elsewhere for you. Download the files and upload them there with "
    "twine upload --repository-url URL."
)
COPIED_DOC_FIELDS = (
    "sha256",
    "size",
    "uncompressed_bytes",
    "entry_count",
    "path_prefix",
    "uploader",
    "uploaded_at",
)


class PromoteError(Exception):
    """A release cannot be promoted; the message says why and what to do."""


class ReleaseNotFound(PromoteError):
    """The source has no such release, or the caller may not read it (the same answer)."""


class InvalidPromotion(PromoteError):
    """The request cannot be carried out: a bad version or target, a mirror, another server."""


class PromoteRefused(PromoteError):
    """The caller may not upload to the target."""


class FileConflict(PromoteError):
    """A file of the release is on the non-volatile target already, with other bytes."""


@dataclasses.dataclass(frozen=True)
class Promoted:
    """What a promotion did: files and docs copied, and those that were there already."""

    name: str  # the project's name as uploaded
    normalized_name: str
    version: str  # as the files spell it (a PEP 440 version)
    source: str  # USER/INDEX
    target: str
    copied: list[str]  # filenames, sorted
    unchanged: list[str]  # filenames the target had with the same bytes
    docs: str | None  # "copied", "unchanged", or None (no docs came along)
    promoted_by: str
    promoted_at: dt.datetime
    sha256_of: dict[str, str]  # filename -> sha256 of every file above

    @property
    def is_noop(self) -> bool:
        """Whether the target had every file (and the docs) already: nothing changed."""
        return not self.copied and self.docs != "copied"

    def path(self, filename: str) -> str:
        """The target's `+f` path of one of the files (devpi's action log names files so)."""
        return file_path(self.target, self.sha256_of[filename], filename)


def check_target(value: object) -> str:
    """The target index path `USER/INDEX` from a request; InvalidPromotion for anything else.

    devpi's `pypi:NAME` targets (another server, credentials from .pypirc) are refused: this
    server never sends packages or credentials elsewhere on a user's behalf.
    """
    if isinstance(value, str) and value.startswith(EXTERNAL_PREFIX):
        raise InvalidPromotion(EXTERNAL_REFUSAL)
    if not isinstance(value, str) or value.count("/") != 1 or "" in value.split("/"):
        raise InvalidPromotion(
            f"The target must be an index of this server as USER/INDEX, not {str(value)[:100]!r}."
        )
    return value


def release_files(
    session: Session, index: Index, normalized: str, version: Version
) -> tuple[Project | None, list[File], DocSet | None]:
    """A stage's own project, files and doc set of one version (never its bases')."""
    project = session.scalar(
        select(Project).where(Project.index_id == index.id, Project.normalized_name == normalized)
    )
    docset = _docset(session, index, normalized, version)
    if project is None:
        return None, [], docset
    files = [
        f
        for f in session.scalars(select(File).where(File.project_id == project.id))
        if _same_version(f.version, version)
    ]
    return project, sorted(files, key=lambda f: f.filename), docset


def _docset(session: Session, index: Index, normalized: str, version: Version) -> DocSet | None:
    """The doc set of a version, whichever spelling of it the docs were uploaded under."""
    docsets = session.scalars(
        select(DocSet).where(DocSet.index_id == index.id, DocSet.normalized_name == normalized)
    )
    return next((d for d in docsets if _same_version(d.version, version)), None)


def _same_version(candidate: str, wanted: Version) -> bool:
    try:
        return Version(candidate) == wanted
    except ValueError:  # stored before versions were checked: never the one asked for
        return False


def promotable_targets(session: Session, source: Index, user: User) -> list[Index]:
    """The stages other than `source` that `user` may upload to (the web's Promote to...)."""
    indexes = session.scalars(select(Index)).all()
    found = [i for i in indexes if not i.is_mirror and i.id != source.id and may_upload(i, user)]
    return sorted(found, key=lambda i: i.path)


def promote(
    session: Session,
    source: Index,
    name: str,
    version: str,
    target_path: str,
    *,
    user: User,
    reader: Reader,
    token_index: str | None = None,
    with_files: bool = True,
    with_docs: bool = True,
    blobs: Blobs | None = None,
) -> Promoted:
    """Copy release `name` `version` (its files and docs) from `source` into `target_path` as
    `user` (who reads as `reader`); the caller commits.

    `token_index` is the index a token limited to one index was made for: it may write there
    only. `with_files`/`with_docs` are devpi's `--only-docs`/`--no-docs`.
    """
    try:
        wanted = Version(version)
    except ValueError:  # InvalidVersion, or past int()'s 4300-digit limit
        raise InvalidPromotion(f"'{version[:100]}' is not a valid version (PEP 440).") from None
    normalized = normalize_name(name)
    target_path = check_target(target_path)
    begin_write(session)  # one writer at a time: no upload or delete slips in between
    if source.is_mirror:
        raise InvalidPromotion(
            f"Index {source.path} is a mirror: promote releases from the stage that holds them."
        )
    project, files, docset = release_files(session, source, normalized, wanted)
    if not with_files:
        files = []
    if not with_docs:
        docset = None
    if not may_read(source, reader) or (not files and docset is None):
        # The same answer whether it is missing or unreadable: nothing leaks about a release
        # on an index the caller may not read.
        raise ReleaseNotFound(
            f"There is no release {normalized} {wanted} on index {source.path} that you may "
            "read: check the name, the version and the source index."
        )
    if project is not None and project.status == QUARANTINED:
        # PEP 792: a quarantined project offers no file; a copy elsewhere would serve them.
        raise InvalidPromotion(
            f"{normalized} is quarantined on {source.path} (PEP 792): set it back to active "
            "there before promoting it."
        )
    target = get_index_by_path(session, target_path)
    if target is None:
        raise InvalidPromotion(
            f"Target index {target_path} does not exist: create it first, or check its name."
        )
    if target.is_mirror:
        raise InvalidPromotion(
            f"Target index {target.path} is a mirror and takes no uploads: promote to a stage."
        )
    if target.id == source.id:
        raise InvalidPromotion(
            f"{normalized} {wanted} is on {source.path} already: choose another target index."
        )
    if not may_upload(target, user) or (token_index is not None and token_index != target.path):
        raise PromoteRefused(
            f"The user '{user.username}' isn't allowed to upload to index '{target.path}': "
            "ask its owner to add you to its acl_upload."
        )
    return _copy(session, source, target, normalized, project, files, docset, user, wanted, blobs)


def _copy(
    session: Session,
    source: Index,
    target: Index,
    normalized: str,
    project: Project | None,
    files: list[File],
    docset: DocSet | None,
    user: User,
    version: Version,
    blobs: Blobs | None,
) -> Promoted:
    """Check every file against the target, then add the rows: all or nothing (`blobs`, when
    given, is where the docs' pages are read from to index them for search)."""
    existing_project = session.scalar(
        select(Project).where(Project.index_id == target.id, Project.normalized_name == normalized)
    )
    existing: dict[str, File] = {}
    if existing_project is not None and existing_project.status in CLOSED_TO_UPLOADS:
        raise InvalidPromotion(
            f"{normalized} is {existing_project.status} on {target.path} and takes no new "
            "files (PEP 792): set it back to active there first."
        )
    if existing_project is not None:
        existing = {
            f.filename: f
            for f in session.scalars(select(File).where(File.project_id == existing_project.id))
        }
    copied: list[File] = []
    unchanged: list[str] = []
    for record in files:
        there = existing.get(record.filename)
        if there is not None and there.sha256 == record.sha256:
            unchanged.append(record.filename)
        elif there is not None and not target.volatile:
            raise FileConflict(
                f"File already exists on {target.path} ('{record.filename}', with sha256 hash "
                f"'{there.sha256}'), with other bytes than on {source.path}. Index "
                f"{target.path} is not volatile: promote a new version instead."
            )
        else:
            copied.append(record)
    if existing_project is None and not files:
        raise InvalidPromotion(
            f"Project {normalized} is not on index {target.path}: promote its files with the "
            "docs (docs alone need the project there)."
        )
    target_docs = _docset(session, target, normalized, version) if docset is not None else None
    docs = None
    if docset is not None:
        docs = "unchanged" if target_docs and target_docs.sha256 == docset.sha256 else "copied"
    now = utcnow()
    name = project.name if project else normalized
    # As the version page spells it: the files' own version, else the docs'.
    shown_version = files[0].version if files else docset.version if docset else str(version)
    if copied or docs == "copied":
        copy_release(
            session,
            target,
            project_name=name,
            normalized=normalized,
            files=copied,
            replaced=[existing[f.filename] for f in copied if f.filename in existing],
            docset=docset if docs == "copied" else None,
            target_docs=target_docs,
            blobs=blobs,
        )
        session.add(
            Promotion(
                index_id=target.id,
                normalized_name=normalized,
                version=shown_version,
                source_path=source.path,
                promoted_by=user.username,
                promoted_at=now,
                filenames=[f.filename for f in copied],
                has_docs=docs == "copied",
            )
        )
        session.flush()
    return Promoted(
        name=name,
        normalized_name=normalized,
        version=shown_version,
        source=source.path,
        target=target.path,
        copied=[f.filename for f in copied],
        unchanged=unchanged,
        docs=docs,
        promoted_by=user.username,
        promoted_at=now,
        sha256_of={f.filename: f.sha256 for f in files},
    )


def copy_release(
    session: Session,
    target: Index,
    *,
    project_name: str,
    normalized: str,
    files: list[File],
    replaced: list[File],
    docset: DocSet | None,
    target_docs: DocSet | None,
    blobs: Blobs | None = None,
) -> None:
    """Add copies of `files` (and `docset`) to `target`, replacing `replaced` and `target_docs`
    (a volatile target's older bytes); the one place where a release enters an index by copy.

    The rows point at the blobs the originals use: nothing is stored or duplicated.
    """
    project = session.scalar(
        select(Project).where(Project.index_id == target.id, Project.normalized_name == normalized)
    )
    if (
        project is None
    ):  # the name now hides its mirrors' project of this name (app/services/indexes_view.py)
        project = Project(index_id=target.id, name=project_name, normalized_name=normalized)
        session.add(project)
        session.flush()
    for old in replaced:
        session.delete(old)
    session.flush()
    for record in files:
        copy = add_file(session, project, copied_fields(record))
        session.flush()  # the copy's id: the attestations describe its bytes too (PEP 740)
        copy_provenance(session, record.id, copy.id)
    summary = next((f.core_metadata.get("summary") for f in files if f.core_metadata), None)
    if summary:
        project.summary = str(summary)[:1000]  # the latest upload's, as app/http/upload.py does
    if docset is not None:
        if target_docs is None:
            target_docs = DocSet(
                index_id=target.id, normalized_name=normalized, version=docset.version
            )
            session.add(target_docs)
        for field in COPIED_DOC_FIELDS:
            setattr(target_docs, field, getattr(docset, field))
        session.flush()
        if blobs is not None:  # the copy's pages become searchable, as an upload's are
            index_stored_docset(session, blobs, target_docs)
    session.flush()


def promotions_of(session: Session, index: Index, normalized: str, version: str) -> list[Promotion]:
    """The audit trail of one version on `index`: every copy into it, oldest first."""
    try:
        wanted = Version(version)
    except ValueError:  # not a PEP 440 version: nothing was ever promoted under it
        return []
    records = session.scalars(
        select(Promotion)
        .where(Promotion.index_id == index.id, Promotion.normalized_name == normalized)
        .order_by(Promotion.promoted_at, Promotion.id)
    )
    return [r for r in records if _same_version(r.version, wanted)]
