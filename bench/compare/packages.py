"""The fixed package set: 40 projects of wheels on disk, and the simple pages that list them.

Everything comes from SEED, so the bytes are the same on every run and every machine. The
files are built once into a cache directory (BUILD_VERSION names it: change it when the set
changes); the pages are written per run, because their absolute file URLs carry the
upstream's port.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import html
import json
import os
import random
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.builders import core_metadata

CACHE_DIR = Path(__file__).resolve().parents[2] / ".bench-cache"  # gitignored

SEED = 20_240_601
BUILD_VERSION = 1  # part of the cache directory's name: bump it when anything below changes
DEPENDENCY_COUNT = 37  # bench-pkg-00 ... bench-pkg-36, all installed by bench-meta
LEAF_COUNT = 12  # the last twelve depend on nothing
MAX_DEPENDENCIES = 4
VERSIONS = ("1.0.0", "1.1.0", "1.2.0")  # projects list 1-3 versions; pip takes the newest
MIN_WHEEL_BYTES = 10_000  # 10 KB: the installed wheels' payloads spread log-uniformly up to
MAX_WHEEL_BYTES = 5_000_000  # 5 MB (pip's own work grows with them; the 200 MB one is apart)
OLD_WHEEL_BYTES = 2_000  # older versions are listed, never downloaded
SIDECAR_EVERY = 4  # every 4th project offers a PEP 658 .metadata sidecar
META_PROJECT = "bench-meta"  # depends on every bench-pkg and on bench-many: `pip install` it
MANY_PROJECT = "bench-many"  # 2,000 versions x 5 files = 10,000 files on one page
MANY_VERSIONS = 2_000
MANY_TAGS = (  # only py3-none-any installs here; the newest version's is the one real wheel
    "py3-none-any",
    "cp27-cp27mu-manylinux1_x86_64",
    "cp36-cp36m-win_amd64",
    "cp38-cp38-macosx_10_9_x86_64",
)
PLACEHOLDER_BYTES = 1_000  # the 9,999 files nobody installs: 1 KB of random bytes each
HUGE_PROJECT = "bench-huge"  # one 200 MB wheel, for the download and memory measurements
HUGE_WHEEL_BYTES = 200_000_000
CHUNK_BYTES = 1 << 20
UPLOAD_TIME = "2024-06-01T00:00:00.000000Z"
MIME_JSON = "application/vnd.pypi.simple.v1+json"


@dataclass(frozen=True)
class Release:
    """One file on the upstream."""

    project: str
    version: str
    filename: str
    sha256: str
    size: int
    metadata_sha256: str | None  # the PEP 658 sidecar's, when the upstream offers one
    requires: tuple[str, ...]

    @property
    def path(self) -> str:
        """Below the upstream's /files/, as PyPI spreads its files over directories."""
        return f"{self.sha256[:2]}/{self.sha256[2:4]}/{self.filename}"


def _underscored(name: str) -> str:
    return name.replace("-", "_")


def _record_line(path: str, digest: bytes, size: int) -> str:
    encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return f"{path},sha256={encoded},{size}"


def _payload_chunks(rng: random.Random, size: int) -> Iterator[bytes]:
    left = size
    while left > 0:
        chunk = rng.randbytes(min(CHUNK_BYTES, left))
        left -= len(chunk)
        yield chunk


def write_wheel(
    directory: Path,
    rng: random.Random,
    name: str,
    version: str,
    requires: tuple[str, ...],
    payload_bytes: int,
) -> tuple[Path, bytes]:
    """Stream a real, installable wheel (stored, not deflated) to disk; (path, METADATA).

    The payload is `payload_bytes` of pseudo-random bytes in `<package>/data.bin`, written in
    1 MiB chunks, so a 200 MB wheel never sits in memory.
    """
    package = _underscored(name)
    stem = f"{package}-{version}"
    filename = f"{stem}-py3-none-any.whl"
    metadata = core_metadata(
        name, version, requires_dist=requires, summary=f"pyshelf comparative benchmark: {name}"
    ).encode()
    wheel_info = b"Wheel-Version: 1.0\nGenerator: pyshelf-bench\nRoot-Is-Purelib: true\n"
    wheel_info += b"Tag: py3-none-any\n"
    small = {
        f"{package}/__init__.py": f'__version__ = "{version}"\n'.encode(),
        f"{stem}.dist-info/METADATA": metadata,
        f"{stem}.dist-info/WHEEL": wheel_info,
    }
    path = directory / filename
    records = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for member, data in small.items():
            archive.writestr(zipfile.ZipInfo(member, (2020, 1, 1, 0, 0, 0)), data)
            records.append(_record_line(member, hashlib.sha256(data).digest(), len(data)))
        if payload_bytes:
            member = f"{package}/data.bin"
            info = zipfile.ZipInfo(member, (2020, 1, 1, 0, 0, 0))
            digest = hashlib.sha256()
            with archive.open(info, "w", force_zip64=payload_bytes > (1 << 31)) as out:
                for chunk in _payload_chunks(rng, payload_bytes):
                    digest.update(chunk)
                    out.write(chunk)
            records.append(_record_line(member, digest.digest(), payload_bytes))
        records.append(f"{stem}.dist-info/RECORD,,")
        record = ("\n".join(records) + "\n").encode()
        archive.writestr(zipfile.ZipInfo(f"{stem}.dist-info/RECORD", (2020, 1, 1, 0, 0, 0)), record)
    return path, metadata


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _store(
    files_dir: Path, built: Path, metadata: bytes | None, project: str, version: str, requires
) -> Release:
    """Move a built file to its content-addressed place below `files_dir`; its Release."""
    sha256 = _file_sha256(built)
    release = Release(
        project,
        version,
        built.name,
        sha256,
        built.stat().st_size,
        hashlib.sha256(metadata).hexdigest() if metadata is not None else None,
        tuple(requires),
    )
    target = files_dir / release.path
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(built, target)
    if metadata is not None:
        Path(f"{target}.metadata").write_bytes(metadata)
    return release


def _dependency_tree(rng: random.Random) -> list[tuple[str, tuple[str, ...], int]]:
    names = [f"bench-pkg-{i:02d}" for i in range(DEPENDENCY_COUNT)]
    ratio = MAX_WHEEL_BYTES / MIN_WHEEL_BYTES
    sizes = [
        round(MIN_WHEEL_BYTES * ratio ** (k / (DEPENDENCY_COUNT - 1)))
        for k in range(DEPENDENCY_COUNT)
    ]
    rng.shuffle(sizes)
    tree = []
    for i, name in enumerate(names):
        later = names[i + 1 :]  # depending only on later projects keeps the graph acyclic
        requires: tuple[str, ...] = ()
        if i < DEPENDENCY_COUNT - LEAF_COUNT:
            requires = tuple(sorted(rng.sample(later, min(len(later), rng.randint(1, 4)))))
        tree.append((name, requires, sizes[i]))
    return tree


def build(files_dir: Path) -> list[Release]:
    """Write every file of the set below `files_dir` (emptied first); the releases, in order."""
    shutil.rmtree(files_dir, ignore_errors=True)
    scratch = files_dir / ".building"
    scratch.mkdir(parents=True)
    rng = random.Random(SEED)  # noqa: S311 - reproducible test data, not secrets
    releases: list[Release] = []

    def wheel(name: str, version: str, requires: tuple[str, ...], size: int, sidecar: bool):
        path, metadata = write_wheel(scratch, rng, name, version, requires, size)
        releases.append(
            _store(files_dir, path, metadata if sidecar else None, name, version, requires)
        )

    tree = _dependency_tree(rng)
    for i, (name, requires, size) in enumerate(tree):
        versions = VERSIONS[: 1 + i % len(VERSIONS)]
        for version in versions:
            payload = size if version == versions[-1] else OLD_WHEEL_BYTES
            wheel(name, version, requires, payload, i % SIDECAR_EVERY == 0)
    for number in range(MANY_VERSIONS):
        version = f"{number // 100}.{number % 100}.0"
        is_newest = number == MANY_VERSIONS - 1
        stem = f"{_underscored(MANY_PROJECT)}-{version}"
        for tag in MANY_TAGS:
            if is_newest and tag == "py3-none-any":
                wheel(MANY_PROJECT, version, (), MIN_WHEEL_BYTES, sidecar=False)
                continue
            placeholder = scratch / f"{stem}-{tag}.whl"
            placeholder.write_bytes(rng.randbytes(PLACEHOLDER_BYTES))
            releases.append(_store(files_dir, placeholder, None, MANY_PROJECT, version, ()))
        sdist = scratch / f"{stem}.tar.gz"
        sdist.write_bytes(rng.randbytes(PLACEHOLDER_BYTES))
        releases.append(_store(files_dir, sdist, None, MANY_PROJECT, version, ()))
    wheel(HUGE_PROJECT, "1.0.0", (), HUGE_WHEEL_BYTES, sidecar=False)
    meta_requires = (*(name for name, _, _ in tree), MANY_PROJECT)
    wheel(META_PROJECT, "1.0.0", meta_requires, 0, sidecar=False)
    scratch.rmdir()
    return releases


def load_or_build(cache_dir: Path) -> list[Release]:
    """The releases from `cache_dir` when a complete build of this BUILD_VERSION is there."""
    manifest = cache_dir / "manifest.json"
    files_dir = cache_dir / "files"
    if manifest.is_file():
        releases = [Release(**{**r, "requires": tuple(r["requires"])}) for r in _read(manifest)]
        if all((files_dir / r.path).is_file() for r in releases):
            return releases
    releases = build(files_dir)
    manifest.write_text(json.dumps([asdict(r) for r in releases]) + "\n")
    return releases


def _read(manifest: Path) -> list[dict]:
    return json.loads(manifest.read_text())


def by_project(releases: list[Release]) -> dict[str, list[Release]]:
    """Releases grouped by project, in the order they were built (oldest version first)."""
    grouped: dict[str, list[Release]] = {}
    for release in releases:
        grouped.setdefault(release.project, []).append(release)
    return grouped


def installed(releases: list[Release]) -> list[Release]:
    """What `pip install bench-meta` downloads: the newest py3-none-any wheel of each project
    it needs."""
    wanted = {META_PROJECT, MANY_PROJECT} | {
        name for r in releases if r.project == META_PROJECT for name in r.requires
    }
    best: dict[str, Release] = {}
    for release in releases:
        if release.project in wanted and release.filename.endswith("-py3-none-any.whl"):
            best[release.project] = release  # built oldest first
    return list(best.values())


def _json_page(name: str, files: list[Release], files_url: str) -> bytes:
    entries = []
    for release in files:
        core = {"sha256": release.metadata_sha256} if release.metadata_sha256 else False
        entries.append(
            {
                "filename": release.filename,
                "url": f"{files_url}{release.path}",
                "hashes": {"sha256": release.sha256},
                "requires-python": None,
                "yanked": False,
                "size": release.size,
                "upload-time": UPLOAD_TIME,
                "core-metadata": core,
                "data-dist-info-metadata": core,
            }
        )
    versions = list(dict.fromkeys(r.version for r in files))
    document = {
        "meta": {"api-version": "1.1", "_last-serial": 1},
        "name": name,
        "versions": versions,
        "files": entries,
    }
    return json.dumps(document).encode()


def _html_page(name: str, files: list[Release], files_url: str) -> bytes:
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        '    <meta name="pypi:repository-version" content="1.1">',
        f"    <title>Links for {html.escape(name)}</title>",
        "  </head>",
        "  <body>",
        f"    <h1>Links for {html.escape(name)}</h1>",
    ]
    for release in files:
        attributes = [f'href="{files_url}{release.path}#sha256={release.sha256}"']
        if release.metadata_sha256:
            value = f"sha256={release.metadata_sha256}"
            attributes.append(f'data-dist-info-metadata="{value}" data-core-metadata="{value}"')
        lines.append(f"    <a {' '.join(attributes)}>{html.escape(release.filename)}</a><br />")
    lines += ["  </body>", "</html>", ""]
    return "\n".join(lines).encode()


def _write_page(directory: Path, stem: str, body: bytes) -> None:
    """`stem` and its gzip twin (nginx's gzip_static sends it to clients that accept gzip)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / stem).write_bytes(body)
    (directory / f"{stem}.gz").write_bytes(gzip.compress(body, compresslevel=6, mtime=0))


def write_pages(www_dir: Path, releases: list[Release], files_url: str) -> None:
    """The PEP 503 HTML and PEP 691 JSON pages below `www_dir`/simple/, with absolute file URLs
    under `files_url` (as PyPI's point to its file host)."""
    simple = www_dir / "simple"
    grouped = by_project(releases)
    for name, files in grouped.items():
        _write_page(simple / name, "index.json", _json_page(name, files, files_url))
        _write_page(simple / name, "index.html", _html_page(name, files, files_url))
    names = sorted(grouped)
    listing = {"meta": {"api-version": "1.1"}, "projects": [{"name": n} for n in names]}
    _write_page(simple, "index.json", json.dumps(listing).encode())
    links = "".join(f'    <a href="{n}/">{n}</a><br />\n' for n in names)
    _write_page(
        simple, "index.html", f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n".encode()
    )
