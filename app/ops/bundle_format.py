"""The bundle archive that carries projects across an air gap: its layout and its manifest.

A bundle is an uncompressed tar (app/ops/bundle_export.py writes it, app/ops/bundle_import.py
reads it): `pyshelf-bundle/blobs/<sha256>` for every file, sidecar and docs zip (each once), then
`pyshelf-bundle/manifest.json`, written last because it holds the sha256 of every blob, hashed
while it was streamed in. The manifest names the bundle (a random id and the time it was made),
lists every blob with its size and sha256, and describes mirror projects (their page entries as
the mirror holds them: upstream sha256, PEP 700 upload time and size, the PEP 658 sidecar) and
stage releases (file rows and doc sets). A reader trusts nothing in it before it checks it here.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.dists import InvalidDistribution, normalize_name, parse_filename
from app.ops.prepare import OperationError

FORMAT = 1
ROOT = "pyshelf-bundle"
MANIFEST = f"{ROOT}/manifest.json"
BLOB_PREFIX = f"{ROOT}/blobs/"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
BUNDLE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
INDEX_PATH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}/[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_MANIFEST_BYTES = 256 << 20  # 256 MiB: some 500,000 files; bounds what is read into memory
CHUNK_BYTES = 1 << 20  # 1 MiB per read and write: archives never sit in memory whole


class BundleError(OperationError):
    """A bundle cannot be written or is refused; the message says why and what to do."""


def blob_member(sha256: str) -> str:
    """The archive member that holds the blob `sha256`."""
    return f"{BLOB_PREFIX}{sha256}"


def format_time(moment: dt.datetime) -> str:
    """A naive UTC time as the manifest writes it (RFC 3339, seconds and microseconds)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Manifest:
    """A bundle's checked manifest: who made it when, its blobs, mirror and stage projects."""

    bundle_id: str
    created_at: dt.datetime  # naive UTC
    blobs: dict[str, int]  # sha256 -> size in bytes
    mirrors: list[dict[str, Any]]  # {"index": path, "projects": [{"name", "files": [...]}]}
    stages: list[dict[str, Any]]  # {"index": path, "projects": [{"name", "files", "docs"}]}

    def to_json(self) -> bytes:
        """The manifest as the archive stores it."""
        document = {
            "format": FORMAT,
            "bundle_id": self.bundle_id,
            "created_at": format_time(self.created_at),
            "mirrors": self.mirrors,
            "stages": self.stages,
            "blobs": self.blobs,
        }
        return json.dumps(document, indent=1, sort_keys=True).encode("utf-8")


def open_bundle(path: Path) -> tuple[tarfile.TarFile, Manifest, dict[str, tarfile.TarInfo]]:
    """Open a bundle, read and check its manifest against its members; BundleError when it is
    not one, is truncated, or its manifest does not describe exactly the blobs it holds."""
    if not path.is_file():
        raise BundleError(f"no bundle at {path}")
    try:
        archive = tarfile.open(path, "r:")  # noqa: SIM115 - the caller closes it; uncompressed: members are read in place
        members = archive.getmembers()  # reads every header: a cut archive fails here
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{path} is truncated or damaged ({exc}): copy it again") from None
    try:
        by_name = {member.name: member for member in members}
        manifest_member = by_name.get(MANIFEST)
        if manifest_member is None:
            raise BundleError(f"{path} has no {MANIFEST}: truncated, or not a bundle")
        manifest = _read_manifest(archive, manifest_member)
        blob_members = _check_members(manifest, by_name)
    except BaseException:
        archive.close()
        raise
    return archive, manifest, blob_members


def _read_manifest(archive: tarfile.TarFile, member: tarfile.TarInfo) -> Manifest:
    if not member.isfile() or member.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{MANIFEST} is not a manifest (a file of at most 256 MiB)")
    source = archive.extractfile(member)
    if source is None:
        raise BundleError(f"{MANIFEST} cannot be read")
    try:
        raw = source.read()
        if len(raw) != member.size:
            raise BundleError(f"{MANIFEST} is cut short: the bundle is truncated")
        document = json.loads(raw)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise BundleError(f"{MANIFEST} cannot be read ({exc}): the bundle is damaged") from None
    except ValueError as exc:
        raise BundleError(f"{MANIFEST} is not JSON ({exc}): the bundle is damaged") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise BundleError(f"bundle format {found!r} is not {FORMAT}: made by another pyshelf?")
    bundle_id = document.get("bundle_id")
    if not isinstance(bundle_id, str) or not BUNDLE_ID_RE.match(bundle_id):
        raise BundleError("the manifest's bundle_id is not 32 hex digits")
    try:
        created_at = dt.datetime.strptime(str(document.get("created_at")), "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        raise BundleError("the manifest's created_at is not a UTC time") from None
    blobs = document.get("blobs")
    if not isinstance(blobs, dict) or not all(
        isinstance(k, str) and SHA256_RE.match(k) and isinstance(v, int) and v >= 0
        for k, v in blobs.items()
    ):
        raise BundleError("the manifest's blobs are not sha256 -> size")
    mirrors, stages = document.get("mirrors"), document.get("stages")
    if not isinstance(mirrors, list) or not isinstance(stages, list):
        raise BundleError("the manifest lists no mirrors or stages")
    manifest = Manifest(bundle_id, created_at, blobs, mirrors, stages)
    for part in (*mirrors, *stages):
        _check_part(manifest, part)
    return manifest


def _check_part(manifest: Manifest, part: Any) -> None:
    """A mirror's or stage's projects: names, filenames and every referenced blob listed."""
    if not isinstance(part, dict) or not INDEX_PATH_RE.match(str(part.get("index"))):
        raise BundleError("the manifest names an index that is not USER/NAME")
    projects = part.get("projects")
    if not isinstance(projects, list):
        raise BundleError(f"the manifest lists no projects for {part['index']}")
    for project in projects:
        if not isinstance(project, dict) or not isinstance(project.get("name"), str):
            raise BundleError(f"a project of {part['index']} has no name")
        normalized = normalize_name(project["name"])
        for file in project.get("files") or []:
            _check_file(manifest, normalized, file)
        for docs in project.get("docs") or []:
            if not isinstance(docs, dict) or manifest.blobs.get(
                str(docs.get("sha256"))
            ) != docs.get("size"):
                raise BundleError(f"docs of {normalized} name a blob the manifest does not list")


def _check_file(manifest: Manifest, normalized: str, file: Any) -> None:
    if not isinstance(file, dict) or not isinstance(file.get("filename"), str):
        raise BundleError(f"a file of {normalized} has no filename")
    filename = file["filename"]
    try:
        info = parse_filename(filename)
    except InvalidDistribution as exc:
        raise BundleError(f"{filename}: {exc}") from None
    if info.normalized_name != normalized:
        raise BundleError(f"{filename} is not a file of {normalized}")
    if manifest.blobs.get(str(file.get("sha256"))) != file.get("size"):
        raise BundleError(f"{filename}: its sha256 and size are not among the manifest's blobs")
    metadata = file.get("metadata_blob")
    if metadata is not None and metadata not in manifest.blobs:
        raise BundleError(f"{filename}: its metadata is not among the manifest's blobs")


def _check_members(
    manifest: Manifest, by_name: dict[str, tarfile.TarInfo]
) -> dict[str, tarfile.TarInfo]:
    """The member of each listed blob, which must be a file of the listed size; nothing else."""
    found: dict[str, tarfile.TarInfo] = {}
    for sha256, size in manifest.blobs.items():
        member = by_name.get(blob_member(sha256))
        if member is None or not member.isfile():
            raise BundleError(f"blob {sha256} is missing from the bundle: truncated?")
        if member.size != size:
            raise BundleError(f"blob {sha256} holds {member.size} bytes, the manifest {size}")
        found[sha256] = member
    extra = set(by_name) - {MANIFEST, *(blob_member(k) for k in found)}
    if extra:
        raise BundleError(f"the bundle holds members its manifest does not list: {min(extra)}")
    return found
