"""Documentation zips: the checks an uploaded (or imported) zip of HTML passes before it is
stored (readable, not encrypted, no absolute or `..` member names, DOCS_MAX_FILES members and
DOCS_MAX_SIZE bytes at most, an index.html at its top)."""

from __future__ import annotations

import dataclasses
import re
import zipfile
from pathlib import Path
from typing import IO

INDEX_HTML = "index.html"
ENCRYPTED_FLAG = 0x1  # general purpose bit 0 (APPNOTE.TXT 4.4.4)
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


class InvalidDocs(ValueError):
    """The documentation zip cannot be accepted; the message says why."""


@dataclasses.dataclass(frozen=True)
class DocZip:
    """What checking a documentation zip found out."""

    entry_count: int
    uncompressed_bytes: int
    path_prefix: str  # the single top folder all files are in ("html/"), or ""


def member_path(name: str) -> str:
    """A zip member's path, cleaned; InvalidDocs for absolute names or `..` segments."""
    path = name.replace("\\", "/")  # zips made on Windows may use backslashes
    if "\x00" in path or path.startswith("/") or _DRIVE_RE.match(path):
        raise InvalidDocs(f"Documentation zip member {name[:100]!r} has an absolute path.")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise InvalidDocs(f"Documentation zip member {name[:100]!r} points outside the zip (..).")
    return "/".join(parts)


def inspect_zip(source: str | Path | IO[bytes], *, max_bytes: int, max_files: int) -> DocZip:
    """Check a documentation zip before it is stored; InvalidDocs says what is wrong."""
    try:
        archive = zipfile.ZipFile(source)
    # NotImplementedError: a member that needs a newer zip version ("zip file version 23.5")
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise InvalidDocs(f"The documentation is not a readable zip file: {exc}.") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > max_files:
            raise InvalidDocs(
                f"Documentation zip has {len(infos)} members; the limit is {max_files} "
                "(DOCS_MAX_FILES)."
            )
        total = 0
        files: list[str] = []
        for info in infos:
            path = member_path(info.filename)
            if info.flag_bits & ENCRYPTED_FLAG:
                raise InvalidDocs(f"Documentation zip member {path!r} is encrypted.")
            if not path or info.is_dir():  # is_dir() fails on an empty name
                continue
            total += info.file_size
            if total > max_bytes:
                raise InvalidDocs(
                    f"Documentation zip unpacks to more than {max_bytes} bytes (DOCS_MAX_SIZE)."
                )
            files.append(path)
    if not files:
        raise InvalidDocs("Documentation zip holds no files.")
    prefix = _common_top_folder(files)
    if prefix + INDEX_HTML not in files:
        raise InvalidDocs(
            "Documentation zip has no index.html at its top (or in its single top folder); "
            "zip the built HTML directory (Sphinx: _build/html, MkDocs: site)."
        )
    return DocZip(len(infos), total, prefix)


def _common_top_folder(files: list[str]) -> str:
    tops = {path.partition("/")[0] for path in files}
    if len(tops) == 1 and all("/" in path for path in files):
        return tops.pop() + "/"
    return ""
