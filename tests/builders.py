"""Build real, installable wheels and sdists (and deliberately broken archives) in memory."""

from __future__ import annotations

import base64
import hashlib
import io
import pathlib
import re
import tarfile
import zipfile
from collections.abc import Iterable

FIXED_DATE = (2020, 1, 1, 0, 0, 0)  # reproducible archives
FIXED_MTIME = 1577836800  # 2020-01-01T00:00:00Z

# A stdlib-only PEP 517 backend shipped inside every sdist, so pip builds it offline with no
# setuptools download: pyproject.toml names it with `backend-path = ["."]`.
BACKEND_PY = '''\
"""A stdlib-only PEP 517 backend: turns this sdist into a pure-Python wheel."""

import base64
import csv
import hashlib
import io
import pathlib
import re
import zipfile
from email.parser import HeaderParser

ROOT = pathlib.Path(__file__).resolve().parent


def _stem():
    headers = HeaderParser().parsestr((ROOT / "PKG-INFO").read_text(encoding="utf-8"))
    name = re.sub(r"[-_.]+", "_", headers["Name"]).lower()
    return name, f"{name}-{headers['Version']}"


def _dist_info_files():
    return {
        "METADATA": (ROOT / "PKG-INFO").read_bytes(),
        "WHEEL": b"Wheel-Version: 1.0\\nGenerator: backend\\nRoot-Is-Purelib: true\\n"
        b"Tag: py3-none-any\\n",
    }


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    dist_info = _stem()[1] + ".dist-info"
    target = pathlib.Path(metadata_directory, dist_info)
    target.mkdir(parents=True, exist_ok=True)
    for name, data in _dist_info_files().items():
        (target / name).write_bytes(data)
    return dist_info


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    package, stem = _stem()
    members = {
        path.relative_to(ROOT).as_posix(): path.read_bytes()
        for path in sorted((ROOT / package).rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }
    for name, data in _dist_info_files().items():
        members[f"{stem}.dist-info/{name}"] = data
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\\n")
    for path, data in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        writer.writerow([path, f"sha256={digest}", len(data)])
    writer.writerow([f"{stem}.dist-info/RECORD", "", ""])
    members[f"{stem}.dist-info/RECORD"] = record.getvalue().encode()
    filename = f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(pathlib.Path(wheel_directory, filename), "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in members.items():
            zf.writestr(path, data)
    return filename
'''

PYPROJECT_TOML = """\
[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]
"""


def _underscored(name: str) -> str:
    """The normalized name with '-' -> '_', as wheel and PEP 625 sdist filenames spell it."""
    return re.sub(r"[-_.]+", "_", name).lower()


def core_metadata(
    name: str,
    version: str,
    *,
    requires_dist: Iterable[str] = (),
    requires_python: str | None = None,
    summary: str | None = "A demo package",
    description: str = "",
    description_content_type: str | None = None,
    metadata_version: str = "2.1",
    extra_metadata: str = "",
) -> str:
    """Return METADATA / PKG-INFO text; the description goes into the body (PEP 566)."""
    lines = [f"Metadata-Version: {metadata_version}", f"Name: {name}", f"Version: {version}"]
    if summary is not None:
        lines.append(f"Summary: {summary}")
    if requires_python is not None:
        lines.append(f"Requires-Python: {requires_python}")
    lines += [f"Requires-Dist: {requirement}" for requirement in requires_dist]
    if description_content_type is not None:
        lines.append(f"Description-Content-Type: {description_content_type}")
    text = "\n".join(lines) + "\n" + extra_metadata
    if extra_metadata and not extra_metadata.endswith("\n"):
        text += "\n"
    if description:
        text += "\n" + description
    return text


def record_line(path: str, data: bytes) -> str:
    """Return a RECORD row: path, urlsafe-base64 sha256 without padding, size."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def zip_bytes(members: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """Return a zip archive of `members` (path -> content)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for path, data in members.items():
            archive.writestr(zipfile.ZipInfo(path, FIXED_DATE), data, compress_type=compression)
    return buffer.getvalue()


def tar_gz_bytes(
    members: dict[str, bytes],
    *,
    symlinks: dict[str, str] | None = None,
    directories: Iterable[str] = (),
) -> bytes:
    """Return a gzip tarball of `members` (path -> content), plus symlinks (path -> target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in directories:
            entry = tarfile.TarInfo(path)
            entry.type, entry.mode, entry.mtime = tarfile.DIRTYPE, 0o755, FIXED_MTIME
            archive.addfile(entry)
        for path, data in members.items():
            entry = tarfile.TarInfo(path)
            entry.size, entry.mode, entry.mtime = len(data), 0o644, FIXED_MTIME
            archive.addfile(entry, io.BytesIO(data))
        for path, target in (symlinks or {}).items():
            entry = tarfile.TarInfo(path)
            entry.type, entry.linkname, entry.mtime = tarfile.SYMTYPE, target, FIXED_MTIME
            archive.addfile(entry)
    return buffer.getvalue()


def wheel_metadata(data: bytes) -> bytes:
    """A wheel's METADATA: what its PEP 658 sidecar is."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(name)


def make_wheel(
    name: str = "demo-pkg",
    version: str = "1.0.0",
    *,
    requires_dist: Iterable[str] = (),
    requires_python: str | None = None,
    summary: str | None = "A demo package",
    description: str = "",
    description_content_type: str | None = None,
    metadata_version: str = "2.1",
    python_tag: str = "py3",
    abi_tag: str = "none",
    platform_tag: str = "any",
    files: dict[str, bytes] | None = None,
    extra_metadata: str = "",
    dist_name: str | None = None,
    omit: Iterable[str] = (),
) -> tuple[str, bytes]:
    """Return (filename, bytes) of a real, pip-installable wheel.

    `files` are added to (or replace) the default `<importname>/__init__.py`; `dist_name`
    overrides the Name written into METADATA; `omit` leaves out .dist-info files by name
    ("METADATA", "WHEEL", "RECORD") to build broken wheels.
    """
    stem = f"{_underscored(name)}-{version}"
    dist_info = f"{stem}.dist-info"
    members = {f"{_underscored(name)}/__init__.py": f'__version__ = "{version}"\n'.encode()}
    members.update(files or {})
    metadata = core_metadata(
        dist_name or name,
        version,
        requires_dist=requires_dist,
        requires_python=requires_python,
        summary=summary,
        description=description,
        description_content_type=description_content_type,
        metadata_version=metadata_version,
        extra_metadata=extra_metadata,
    )
    tags = [
        f"Tag: {python}-{abi}-{platform}"
        for python in python_tag.split(".")
        for abi in abi_tag.split(".")
        for platform in platform_tag.split(".")
    ]
    is_purelib = "true" if platform_tag == "any" else "false"
    wheel = "\n".join(
        ["Wheel-Version: 1.0", "Generator: pyshelf-tests", f"Root-Is-Purelib: {is_purelib}", *tags]
    )
    members[f"{dist_info}/METADATA"] = metadata.encode()
    members[f"{dist_info}/WHEEL"] = (wheel + "\n").encode()
    record = [record_line(path, data) for path, data in members.items()]
    record.append(f"{dist_info}/RECORD,,")
    members[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    for skipped in omit:
        del members[f"{dist_info}/{skipped}"]
    filename = f"{stem}-{python_tag}-{abi_tag}-{platform_tag}.whl"
    return filename, zip_bytes(members)


def make_sdist(
    name: str = "demo-pkg",
    version: str = "1.0.0",
    *,
    requires_dist: Iterable[str] = (),
    requires_python: str | None = None,
    summary: str | None = "A demo package",
    description: str = "",
    description_content_type: str | None = None,
    metadata_version: str = "2.1",
    extra_metadata: str = "",
    dist_name: str | None = None,
    fmt: str = "tar.gz",
    stem: str | None = None,
) -> tuple[str, bytes]:
    """Return (filename, bytes) of a real sdist that pip builds offline with its in-tree backend.

    `fmt` is "tar.gz" or "zip"; `stem` overrides "<name_>-<version>" (the filename and the top
    directory), e.g. "Demo.Pkg-1.0" for a legacy name; `dist_name` overrides the Name in PKG-INFO.
    """
    stem = stem or f"{_underscored(name)}-{version}"
    pkg_info = core_metadata(
        dist_name or name,
        version,
        requires_dist=requires_dist,
        requires_python=requires_python,
        summary=summary,
        description=description,
        description_content_type=description_content_type,
        metadata_version=metadata_version,
        extra_metadata=extra_metadata,
    )
    members = {
        f"{stem}/PKG-INFO": pkg_info.encode(),
        f"{stem}/pyproject.toml": PYPROJECT_TOML.encode(),
        f"{stem}/backend.py": BACKEND_PY.encode(),
        f"{stem}/{_underscored(name)}/__init__.py": f'__version__ = "{version}"\n'.encode(),
    }
    if fmt == "tar.gz":
        return f"{stem}.tar.gz", tar_gz_bytes(members, directories=[stem])
    if fmt == "zip":
        return f"{stem}.zip", zip_bytes({f"{stem}/": b"", **members})
    raise ValueError(f"unknown sdist format {fmt!r}: use 'tar.gz' or 'zip'")


def write_dist(directory: str | pathlib.Path, filename: str, data: bytes) -> pathlib.Path:
    """Write a built distribution into `directory` and return its path."""
    path = pathlib.Path(directory) / filename
    path.write_bytes(data)
    return path
