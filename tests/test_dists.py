"""Unit tests for app.core.dists and app.core.dist_metadata: filenames, archives, core metadata
and digests (PEP 427, 527, 625)."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import os
import random
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from typing import IO, Any

import pytest

from app.core import dist_metadata, dists
from app.core.dist_metadata import (
    NOT_A_TARFILE,
    NOT_A_ZIPFILE,
    TOP_LEVEL_COUNT,
    CoreMetadata,
    read_metadata,
)
from app.core.dists import (
    FilenameInfo,
    Hashes,
    InvalidDistribution,
    check_digests,
    check_filetype,
    is_valid_project_name,
    normalize_name,
    parse_filename,
)
from tests.builders import (
    core_metadata,
    make_sdist,
    make_wheel,
    tar_gz_bytes,
    write_dist,
    zip_bytes,
)

WHEEL = "demo_pkg-1.0.0-py3-none-any.whl"
SDIST = "demo_pkg-1.0.0.tar.gz"
ZIP_SDIST = "demo_pkg-1.0.0.zip"
DIST_INFO = "demo_pkg-1.0.0.dist-info"
TOP = "demo_pkg-1.0.0"
SPEC = "See https://packaging.python.org/specifications/core-metadata for more information."
BAD_EXTENSION = (
    "Invalid file extension: Use .tar.gz, .whl or .zip extension. See "
    "https://www.python.org/dev/peps/pep-0527 and https://peps.python.org/pep-0715/ for more "
    "information"
)
MIB = 1024 * 1024


def hash_stream(fileobj: IO[bytes], chunk_bytes: int = 1 << 20) -> Hashes:
    """Hash `fileobj` from its current position to EOF (as app/http/spool.py hashes uploads)."""
    hashes = Hashes()
    while chunk := fileobj.read(chunk_bytes):
        hashes.update(chunk)
    return hashes


def _read(tmp_path, filename: str, data: bytes) -> CoreMetadata:
    """Write `data` as `filename` and read its metadata the way an upload does."""
    return read_metadata(write_dist(tmp_path, filename, data), parse_filename(filename))


def _rezip(data: bytes, changes: dict[str, bytes | None]) -> bytes:
    """Rebuild a zip with members replaced, added, or (None) removed."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members.update(changes)
    return zip_bytes({name: body for name, body in members.items() if body is not None})


def _wheel_with_metadata(metadata: bytes) -> bytes:
    return _rezip(make_wheel()[1], {f"{DIST_INFO}/METADATA": metadata})


def _sdist_with_pkg_info(pkg_info: bytes) -> bytes:
    return tar_gz_bytes({f"{TOP}/PKG-INFO": pkg_info, f"{TOP}/setup.py": b""})


def _encrypted_flag(data: bytes) -> bytes:
    """Set the 'encrypted' bit of the first central directory entry (offset 8 of PK\\1\\2)."""
    patched = bytearray(data)
    patched[data.index(b"PK\x01\x02") + 8] |= 0x1
    return bytes(patched)


def _gnu_sparse_sdist() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT) as archive:
        entry = tarfile.TarInfo(f"{TOP}/PKG-INFO")
        entry.type = tarfile.GNUTYPE_SPARSE
        archive.addfile(entry)
    return buffer.getvalue()


def _hardlinked_pkg_info() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        real = core_metadata("demo-pkg", "1.0.0").encode()
        entry = tarfile.TarInfo(f"{TOP}/REAL")
        entry.size = len(real)
        archive.addfile(entry, io.BytesIO(real))
        link = tarfile.TarInfo(f"{TOP}/PKG-INFO")
        link.type, link.linkname = tarfile.LNKTYPE, f"{TOP}/REAL"
        archive.addfile(link)
    return buffer.getvalue()


def _metadata(**headers: str) -> bytes:
    """METADATA text from header -> value pairs, in order (use '_' for '-')."""
    return "".join(f"{key.replace('_', '-')}: {value}\n" for key, value in headers.items()).encode()


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "normalized"),
    [
        ("Demo.Pkg", "demo-pkg"),
        ("demo_pkg", "demo-pkg"),
        ("Demo__-._Pkg", "demo-pkg"),
        ("requests", "requests"),
    ],
)
def test_normalize_name_follows_pep_503(name, normalized):
    """PEP 503 normalisation: runs of '-', '_', '.' become one '-', lower case."""
    assert normalize_name(name) == normalized


@pytest.mark.parametrize(
    ("name", "is_valid"),
    [
        ("demo-pkg", True),
        ("Demo.Pkg", True),
        ("a", True),
        ("A1_b", True),
        ("-demo", False),
        ("demo.", False),
        ("demo pkg", False),
        ("", False),
        ("d\u00e9mo", False),
        ("\u017fx", False),  # long s: matched by [A-Z] under IGNORECASE without re.ASCII
        ("\u212a", False),  # Kelvin sign, likewise
        ("demo\n", False),
    ],
)
def test_is_valid_project_name_accepts_only_ascii_core_metadata_names(name, is_valid):
    """The form's name rule: ^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$, ASCII, case-insensitive."""
    assert is_valid_project_name(name) is is_valid


# --- filenames (PEP 427, 527, 625) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        (WHEEL, ("demo-pkg", "1.0.0", "bdist_wheel", "py3")),
        ("demo_pkg-1.0-py2.py3-none-any.whl", ("demo-pkg", "1.0", "bdist_wheel", "py2.py3")),
        (
            "demo_pkg-1.0-1build-cp312-cp312-win_amd64.whl",
            ("demo-pkg", "1.0", "bdist_wheel", "cp312"),
        ),
        (
            "demo_pkg-1.0+cpu-cp311-cp311-linux_x86_64.whl",
            ("demo-pkg", "1.0+cpu", "bdist_wheel", "cp311"),
        ),
        ("Demo.Pkg-1.0-py3-none-any.whl", ("demo-pkg", "1.0", "bdist_wheel", "py3")),
        (SDIST, ("demo-pkg", "1.0.0", "sdist", "source")),
        (ZIP_SDIST, ("demo-pkg", "1.0.0", "sdist", "source")),
        ("Demo.Pkg-1.0.tar.gz", ("demo-pkg", "1.0", "sdist", "source")),
        ("demo-pkg-1.0.tar.gz", ("demo-pkg", "1.0", "sdist", "source")),
        ("demo_pkg-1.0.0.RC1.tar.gz", ("demo-pkg", "1.0.0rc1", "sdist", "source")),
        ("demo_pkg-1.0+cpu.tar.gz", ("demo-pkg", "1.0+cpu", "sdist", "source")),
    ],
)
def test_parse_filename_reads_name_version_filetype_and_pyversion(filename, expected):
    """Local versions, linux_x86_64 tags and legacy sdist names are accepted (PEP 427, 625)."""
    assert parse_filename(filename) == FilenameInfo(filename, *expected)


@pytest.mark.parametrize(
    ("filename", "message"),
    [
        # Control characters and slashes, checked before the extension.
        *[
            pytest.param(
                name,
                "Cannot upload a file with non-printable characters (ordinals 0-31) or the DEL "
                "character (ordinal 127) in the name.",
                id=repr(name),
            )
            for name in ("demo\x00-1.0.tar.gz", "demo\n-1.0.tar.gz", "demo\x7f-1.0.exe")
        ],
        ("../demo_pkg-1.0.tar.gz", "Cannot upload a file with '/' or '\\' in the name."),
        ("dir\\demo_pkg-1.0.exe", "Cannot upload a file with '/' or '\\' in the name."),
        # PEP 527 / PEP 715 extensions.
        *[
            pytest.param(f"demo_pkg-1.0{ext}", BAD_EXTENSION, id=ext)
            for ext in (".egg", ".exe", ".tar.bz2", ".msi", ".tgz", ".rpm", ".WHL", "")
        ],
        # PEP 427: packaging's InvalidWheelFilename message.
        (
            "demo_pkg-1.0.0.whl",
            "Invalid wheel filename (wrong number of parts): 'demo_pkg-1.0.0'",
        ),
        (
            "demo_pkg-one-py3-none-any.whl",
            "Invalid wheel filename (invalid version): 'demo_pkg-one-py3-none-any'",
        ),
        ("demo__pkg-1.0-py3-none-any.whl", "Invalid project name: 'demo__pkg-1.0-py3-none-any'"),
        (
            "demo_pkg-1.0-x-py3-none-any.whl",
            "Invalid build number: x in 'demo_pkg-1.0-x-py3-none-any'",
        ),
        (
            "d\u00e9mo-1.0-py3-none-any.whl",
            "Invalid wheel filename (invalid project name): 'd\u00e9mo-1.0-py3-none-any.whl'",
        ),
        # PEP 625: unparseable sdist names (legacy names themselves are fine).
        *[
            pytest.param(
                name,
                f"Invalid source distribution filename: '{name}'. "
                "Expected '<name>-<version>.tar.gz' with a PEP 440 version.",
                id=name,
            )
            for name in ("demo_pkg.tar.gz", "demo_pkg-one.tar.gz", "-1.0.tar.gz", "a b-1.0.tar.gz")
        ],
        (
            "demo_pkg-one.zip",
            "Invalid source distribution filename: 'demo_pkg-one.zip'. "
            "Expected '<name>-<version>.zip' with a PEP 440 version.",
        ),
    ],
)
def test_parse_filename_rejects_bad_names_with_their_reason(filename, message):
    """Characters, then extension (PEP 527), then the wheel (PEP 427) or sdist (PEP 625) rules."""
    with pytest.raises(InvalidDistribution) as caught:
        parse_filename(filename)
    assert str(caught.value) == message


def test_reasons_are_one_short_latin1_line_even_for_hostile_values():
    """The reason goes into an HTTP status line, so it must be one latin-1 line."""
    with pytest.raises(InvalidDistribution) as caught:
        parse_filename("\u4e2d" * 300 + "\u2028-1.0.tar.gz")
    reason = str(caught.value)
    reason.encode("latin-1")
    assert len(reason) <= 250
    assert reason.startswith("Invalid source distribution filename: '\\u4e2d\\u4e2d")
    assert "\n" not in reason
    assert str(InvalidDistribution("two\nlines\u2028here")) == "two\\nlines\\u2028here"


# --- check_filetype (PEP 527) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "filetype", "pyversion"),
    [
        (WHEEL, "bdist_wheel", "py3"),
        (WHEEL, None, "py3"),
        (WHEEL, "", "cp312"),
        (SDIST, "sdist", "source"),
        (SDIST, "sdist", None),
        (SDIST, "sdist", ""),
        (SDIST, None, None),
        (ZIP_SDIST, "sdist", "source"),
    ],
)
def test_check_filetype_accepts_matching_filetype_and_pyversion(filename, filetype, pyversion):
    """A wheel names its Python tag; an sdist says 'source' or nothing."""
    check_filetype(parse_filename(filename), filetype, pyversion)


@pytest.mark.parametrize(
    ("filename", "filetype", "pyversion", "message"),
    [
        (WHEEL, "bdist_egg", "py3", "Invalid value for filetype. Error: Use a known file type."),
        (SDIST, "bdist_wininst", None, "Invalid value for filetype. Error: Use a known file type."),
        (
            WHEEL,
            "bdist_wheel",
            None,
            "Python version is required for binary distribution uploads.",
        ),
        (WHEEL, "bdist_wheel", "", "Python version is required for binary distribution uploads."),
        (WHEEL, None, None, "Python version is required for binary distribution uploads."),
        (SDIST, "sdist", "py3", "Use 'source' as Python version for an sdist."),
        (
            WHEEL,
            "sdist",
            None,
            "Invalid file extension: Extension .whl is invalid for filetype sdist. "
            "See https://www.python.org/dev/peps/pep-0527 for more information.",
        ),
        (
            SDIST,
            "bdist_wheel",
            "py3",
            "Invalid file extension: Extension .tar.gz is invalid for filetype bdist_wheel. "
            "See https://www.python.org/dev/peps/pep-0527 for more information.",
        ),
        (
            ZIP_SDIST,
            "bdist_wheel",
            "py3",
            "Invalid file extension: Extension .zip is invalid for filetype bdist_wheel. "
            "See https://www.python.org/dev/peps/pep-0527 for more information.",
        ),
    ],
)
def test_check_filetype_rejects_mismatches_with_warehouse_messages(
    filename, filetype, pyversion, message
):
    """The form's rules come before the extension-versus-filetype rule (PEP 527), as warehouse."""
    with pytest.raises(InvalidDistribution) as caught:
        check_filetype(parse_filename(filename), filetype, pyversion)
    assert str(caught.value) == message


# --- read_metadata: happy paths ----------------------------------------------------------------


def test_read_metadata_returns_a_wheels_metadata_and_its_exact_bytes(tmp_path):
    """The raw bytes are what the PEP 658 sidecar serves, byte for byte."""
    extra = (
        "Author: Ada\nAuthor-email: ada@example.com\nLicense: MIT\nKeywords: demo, pkg\n"
        "Classifier: Programming Language :: Python :: 3\nProvides-Extra: fast\n"
        "Project-URL: Source, https://example.com/src\nHome-page: https://example.com\n"
        "X-Unknown-Field: tolerated\n"
    )
    filename, data = make_wheel(
        requires_dist=["requests>=2", 'uvloop; extra == "fast"'],
        requires_python=">=3.8",
        description="# Demo\n",
        description_content_type="text/markdown",
        extra_metadata=extra,
    )
    metadata = _read(tmp_path, filename, data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert metadata.raw == archive.read(f"{DIST_INFO}/METADATA")
    assert metadata == CoreMetadata(
        raw=metadata.raw,
        metadata_version="2.1",
        name="demo-pkg",
        version="1.0.0",
        summary="A demo package",
        description="# Demo\n",
        description_content_type="text/markdown",
        requires_python=">=3.8",
        requires_dist=["requests>=2", 'uvloop; extra == "fast"'],
        provides_extra=["fast"],
        classifiers=["Programming Language :: Python :: 3"],
        project_urls={"Source": "https://example.com/src", "Homepage": "https://example.com"},
        author="Ada",
        author_email="ada@example.com",
        license="MIT",
        keywords="demo, pkg",
    )


@pytest.mark.parametrize(
    ("build", "name", "version"),
    [
        pytest.param(lambda: make_sdist(), "demo-pkg", "1.0.0", id="tar.gz sdist"),
        pytest.param(lambda: make_sdist(fmt="zip"), "demo-pkg", "1.0.0", id="zip sdist"),
        pytest.param(
            lambda: make_sdist("Demo.Pkg", "1.0", stem="Demo.Pkg-1.0"),
            "Demo.Pkg",
            "1.0",
            id="legacy sdist name",
        ),
        pytest.param(
            lambda: make_wheel(
                version="1.0+cpu", python_tag="cp311", abi_tag="cp311", platform_tag="linux_x86_64"
            ),
            "demo-pkg",
            "1.0+cpu",
            id="local version wheel",
        ),
        pytest.param(
            lambda: make_sdist(version="1.0.0.RC1", stem="demo_pkg-1.0.0rc1"),
            "demo-pkg",
            "1.0.0.RC1",
            id="version normalized in filename only",
        ),
        pytest.param(
            lambda: make_wheel(metadata_version="2.4"), "demo-pkg", "1.0.0", id="metadata 2.4"
        ),
        pytest.param(
            lambda: make_sdist(metadata_version="1.0"), "demo-pkg", "1.0.0", id="metadata 1.0"
        ),
    ],
)
def test_read_metadata_accepts_real_distributions(tmp_path, build, name, version):
    """Display name and version come back as written in the core metadata."""
    filename, data = build()
    metadata = _read(tmp_path, filename, data)
    assert (metadata.name, metadata.version) == (name, version)


def test_read_metadata_accepts_a_differently_spelled_dist_info_directory(tmp_path):
    """Older tools wrote 'Demo.Pkg-1.0.0.dist-info'; pip installs those, so accept them."""
    _, data = make_wheel()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {
            name.replace(DIST_INFO, "Demo.Pkg-1.0.0.dist-info"): archive.read(name)
            for name in archive.namelist()
        }
    metadata = _read(tmp_path, WHEEL, zip_bytes(members))
    assert metadata.name == "demo-pkg"


def test_read_metadata_drops_unknown_placeholders_and_keeps_an_explicit_homepage(tmp_path):
    """Old setuptools wrote 'UNKNOWN' for absent fields (dropped)."""
    metadata = _read(
        tmp_path,
        WHEEL,
        _wheel_with_metadata(
            _metadata(
                Metadata_Version="1.1",
                Name="demo-pkg",
                Version="1.0.0",
                Summary="UNKNOWN",
                Home_page="https://old.example.com",
                Project_URL="Home page, https://new.example.com",
                Author="UNKNOWN",
                License="UNKNOWN",
                Description="UNKNOWN",
            )
        ),
    )
    assert metadata.summary is None
    assert metadata.author is None
    assert metadata.license is None
    assert metadata.description is None
    assert metadata.project_urls == {"Home page": "https://new.example.com"}


def test_read_metadata_prefers_the_body_when_description_is_also_a_header(tmp_path):
    """PEP 566 moved Description to the body; some tools write both."""
    text = _metadata(Metadata_Version="2.1", Name="demo-pkg", Version="1.0.0", Description="old")
    metadata = _read(tmp_path, WHEEL, _wheel_with_metadata(text + b"\nnew body\n"))
    assert metadata.description == "new body\n"


# --- read_metadata: bad archives and metadata -----------------------------------------------


BAD_ARCHIVES = [
    # Archive type.
    pytest.param(WHEEL, lambda: b"not a zip", NOT_A_ZIPFILE, id="wheel not a zip"),
    pytest.param(ZIP_SDIST, lambda: b"not a zip", NOT_A_ZIPFILE, id="zip sdist not a zip"),
    pytest.param(SDIST, lambda: b"not a tar", NOT_A_TARFILE, id="not gzip"),
    pytest.param(SDIST, lambda: gzip.compress(b"x" * 600), NOT_A_TARFILE, id="gzip not tar"),
    pytest.param(SDIST, lambda: gzip.compress(b""), NOT_A_TARFILE, id="empty gzip"),
    pytest.param(SDIST, lambda: make_wheel()[1], NOT_A_TARFILE, id="zip named tar.gz"),
    pytest.param(
        SDIST,
        lambda: gzip.decompress(make_sdist()[1]),
        NOT_A_TARFILE,
        id="uncompressed tar named tar.gz",
    ),
    pytest.param(
        SDIST,
        lambda: make_sdist()[1] + zip_bytes({"x": b"x"}),
        "Invalid distribution file. File is both a zip and a tar file",
        id="tar.gz and zip polyglot",
    ),
    pytest.param(
        WHEEL,
        lambda: gzip.decompress(make_sdist()[1]) + make_wheel()[1],
        "Invalid distribution file. File is both a zip and a tar file",
        id="tar and wheel polyglot",
    ),
    # Zip compression and encryption.
    *[
        pytest.param(
            filename,
            lambda compression=compression: zip_bytes(
                {f"{DIST_INFO}/METADATA": b"x", f"{TOP}/PKG-INFO": b"x"}, compression=compression
            ),
            "Invalid distribution file. File does not use a supported compression type",
            id=f"{filename} {label}",
        )
        for filename in (WHEEL, ZIP_SDIST)
        for compression, label in ((zipfile.ZIP_BZIP2, "bzip2"), (zipfile.ZIP_LZMA, "lzma"))
    ],
    pytest.param(
        WHEEL,
        lambda: _encrypted_flag(make_wheel()[1]),
        "Invalid distribution file. File is encrypted",
        id="encrypted member",
    ),
    # PEP 427: wheel contents.
    pytest.param(
        WHEEL,
        lambda: make_wheel(omit=["WHEEL"])[1],
        f"Invalid distribution file. WHEEL not found at {DIST_INFO}/WHEEL",
        id="wheel without WHEEL",
    ),
    pytest.param(
        WHEEL,
        lambda: make_wheel(omit=["RECORD"])[1],
        f"Wheel '{WHEEL}' does not contain the required RECORD file: {DIST_INFO}/RECORD",
        id="wheel without RECORD",
    ),
    pytest.param(
        WHEEL,
        lambda: make_wheel(omit=["METADATA"])[1],
        f"Wheel '{WHEEL}' does not contain the required METADATA file: {DIST_INFO}/METADATA",
        id="wheel without METADATA",
    ),
    pytest.param(
        WHEEL,
        lambda: make_wheel("other")[1],
        f"Invalid distribution file. WHEEL not found at {DIST_INFO}/WHEEL",
        id="wheel with another project's dist-info",
    ),
    pytest.param(
        WHEEL,
        lambda: _rezip(make_wheel()[1], {"extra-1.0.dist-info/WHEEL": b""}),
        f"Wheel '{WHEEL}' contains more than one .dist-info directory: "
        f"{DIST_INFO}, extra-1.0.dist-info",
        id="wheel with two dist-info directories",
    ),
    pytest.param(
        WHEEL,
        lambda: zip_bytes({f"{DIST_INFO}/WHEEL": b""}),
        f"Wheel '{WHEEL}' does not contain the required RECORD file: {DIST_INFO}/RECORD",
        id="wheel with WHEEL but nothing else",
    ),
    pytest.param(
        WHEEL,
        lambda: _rezip(make_wheel()[1], {"../evil.py": b""}),
        "Invalid distribution file. Unsafe member path '../evil.py'",
        id="wheel member outside the root",
    ),
    # Sdist layout.
    pytest.param(
        SDIST,
        lambda: tar_gz_bytes({f"{TOP}/PKG-INFO": b"", "other-1.0/PKG-INFO": b""}),
        TOP_LEVEL_COUNT,
        id="tar.gz with two top-level directories",
    ),
    pytest.param(
        SDIST,
        lambda: tar_gz_bytes({f"{TOP}/PKG-INFO": b"", "README": b""}),
        TOP_LEVEL_COUNT,
        id="tar.gz with a top-level file",
    ),
    pytest.param(SDIST, lambda: tar_gz_bytes({}), TOP_LEVEL_COUNT, id="empty tar.gz"),
    pytest.param(
        ZIP_SDIST,
        lambda: zip_bytes({f"{TOP}/PKG-INFO": b"", "other-1.0/PKG-INFO": b""}),
        TOP_LEVEL_COUNT,
        id="zip with two top-level directories",
    ),
    pytest.param(
        SDIST,
        lambda: tar_gz_bytes({f"{TOP}/setup.py": b""}),
        f"Invalid distribution file. PKG-INFO not found at {TOP}/PKG-INFO",
        id="tar.gz without PKG-INFO",
    ),
    pytest.param(
        SDIST,
        lambda: tar_gz_bytes({f"{TOP}/sub/PKG-INFO": b""}),
        f"Invalid distribution file. PKG-INFO not found at {TOP}/PKG-INFO",
        id="tar.gz with PKG-INFO only deeper down",
    ),
    pytest.param(
        ZIP_SDIST,
        lambda: zip_bytes({f"{TOP}/setup.py": b""}),
        f"Invalid distribution file. PKG-INFO not found at {TOP}/PKG-INFO",
        id="zip without PKG-INFO",
    ),
    pytest.param(
        SDIST,
        lambda: tar_gz_bytes({f"{TOP}/PKG-INFO": b"a", f"./{TOP}/PKG-INFO": b"b"}),
        f"Invalid distribution file. Duplicate entries for {TOP}/PKG-INFO",
        id="tar.gz with PKG-INFO twice",
    ),
    pytest.param(
        SDIST,
        lambda: tar_gz_bytes(
            {f"{TOP}/REAL": core_metadata("demo-pkg", "1.0.0").encode()},
            symlinks={f"{TOP}/PKG-INFO": "REAL"},
        ),
        f"Invalid distribution file. {TOP}/PKG-INFO is not a regular file",
        id="tar.gz whose PKG-INFO is a symlink to valid metadata",
    ),
    pytest.param(
        SDIST,
        lambda: tar_gz_bytes({}, symlinks={f"{TOP}/PKG-INFO": "/etc/passwd"}),
        f"Invalid distribution file. Link '{TOP}/PKG-INFO' points outside the sdist",
        id="tar.gz whose PKG-INFO is a symlink out of the archive",
    ),
    pytest.param(
        SDIST,
        lambda: tar_gz_bytes(
            {f"{TOP}/PKG-INFO": b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0.0\n"},
            symlinks={f"{TOP}/data/secret": "../../../etc/passwd"},
        ),
        f"Invalid distribution file. Link '{TOP}/data/secret' points outside the sdist",
        id="tar.gz with any member linking out of the sdist (handed on to whoever unpacks it)",
    ),
    pytest.param(
        SDIST,
        _hardlinked_pkg_info,
        f"Invalid distribution file. {TOP}/PKG-INFO is not a regular file",
        id="tar.gz whose PKG-INFO is a hard link",
    ),
    pytest.param(
        SDIST,
        _gnu_sparse_sdist,
        "Invalid distribution file. tar archive not accepted: Sparse members are not allowed.",
        id="tar.gz with a sparse member",
    ),
    pytest.param(
        SDIST,
        lambda: tar_gz_bytes({f"{TOP}/PKG-INFO": b"", f"{TOP}/../../etc/cron.d/x": b""}),
        f"Invalid distribution file. Unsafe member path '{TOP}/../../etc/cron.d/x'",
        id="tar.gz member outside the root",
    ),
    # Size cap on the metadata member.
    pytest.param(
        WHEEL,
        lambda: _wheel_with_metadata(b"Metadata-Version: 2.1\n" + b"#" * (10 * MIB)),
        f"Invalid distribution file. {DIST_INFO}/METADATA is larger than 10 MiB",
        id="oversized METADATA",
    ),
    pytest.param(
        SDIST,
        lambda: _sdist_with_pkg_info(b"Metadata-Version: 2.1\n" + b"#" * (10 * MIB)),
        f"Invalid distribution file. {TOP}/PKG-INFO is larger than 10 MiB",
        id="oversized PKG-INFO",
    ),
    # Core metadata, PEP 427 and PEP 625: what the metadata says.
    pytest.param(
        WHEEL,
        lambda: _wheel_with_metadata(b"Metadata-Version: 2.1\nName: demo-pkg\nSummary: caf\xe9\n"),
        f"Invalid distribution file. {DIST_INFO}/METADATA is not valid UTF-8",
        id="latin-1 METADATA",
    ),
    pytest.param(
        WHEEL,
        lambda: make_wheel(metadata_version="2.0")[1],
        f"'2.0' is not a valid metadata version. {SPEC}",
        id="Metadata-Version 2.0",
    ),
    pytest.param(
        SDIST,
        lambda: make_sdist(metadata_version="3.0")[1],
        f"'3.0' is not a valid metadata version. {SPEC}",
        id="Metadata-Version 3.0",
    ),
    pytest.param(
        WHEEL,
        lambda: _wheel_with_metadata(_metadata(Name="demo-pkg", Version="1.0.0")),
        f"Invalid distribution file. Metadata-Version is missing in {DIST_INFO}/METADATA. {SPEC}",
        id="no Metadata-Version",
    ),
    pytest.param(
        WHEEL,
        lambda: _wheel_with_metadata(_metadata(Metadata_Version="2.1", Version="1.0.0")),
        f"Invalid distribution file. Name is missing in {DIST_INFO}/METADATA. {SPEC}",
        id="no Name",
    ),
    pytest.param(
        WHEEL,
        lambda: _wheel_with_metadata(
            _metadata(Metadata_Version="2.1", Name="demo-pkg") + b"Name: other\nVersion: 1.0.0\n"
        ),
        f"Invalid distribution file. Name appears more than once in {DIST_INFO}/METADATA. {SPEC}",
        id="Name twice",
    ),
    pytest.param(
        SDIST,
        lambda: _sdist_with_pkg_info(_metadata(Metadata_Version="2.1", Name="demo-pkg")),
        f"Invalid distribution file. Version is missing in {TOP}/PKG-INFO. {SPEC}",
        id="no Version",
    ),
    pytest.param(
        WHEEL,
        lambda: make_wheel(dist_name="demo pkg")[1],
        "'demo pkg' is an invalid value for Name. Error: Start and end with a letter or numeral "
        f"containing only ASCII numeric and '.', '_' and '-'. {SPEC}",
        id="invalid Name",
    ),
    pytest.param(
        SDIST,
        lambda: _sdist_with_pkg_info(
            _metadata(Metadata_Version="2.1", Name="demo-pkg", Version="one")
        ),
        f"'one' is an invalid value for Version. Error: Use a PEP 440 version. {SPEC}",
        id="invalid Version",
    ),
    pytest.param(
        WHEEL,
        lambda: make_wheel(dist_name="Other.Pkg")[1],
        "Start filename for 'Other.Pkg' with 'other_pkg'.",
        id="wheel name mismatch",
    ),
    pytest.param(
        "Demo.Pkg-1.0.0.tar.gz",
        lambda: make_sdist(dist_name="Demo.Pkgs", stem="Demo.Pkg-1.0.0")[1],
        "Start filename for 'Demo.Pkgs' with 'demo_pkgs'.",
        id="sdist name mismatch",
    ),
    pytest.param(
        "demo_pkg-2.0.tar.gz",
        lambda: make_sdist(version="1.0")[1],
        "Version in filename should be '1.0' not '2.0'.",
        id="sdist version mismatch",
    ),
    pytest.param(
        "demo_pkg-1.0+cpu.zip",
        lambda: make_sdist(version="1.0", fmt="zip")[1],
        "Version in filename should be '1.0' not '1.0+cpu'.",
        id="zip sdist local version mismatch",
    ),
]


@pytest.mark.parametrize(("filename", "build", "message"), BAD_ARCHIVES)
def test_read_metadata_rejects_bad_archives_with_their_reason(
    tmp_path, filename: str, build: Callable[[], bytes], message: str
):
    """Archive checks, wheel contents (PEP 427), sdist layout (PEP 625) and core metadata rules."""
    with pytest.raises(InvalidDistribution) as caught:
        _read(tmp_path, filename, build())
    assert str(caught.value) == message


class _Zeros(io.RawIOBase):
    """An endless stream of zero bytes, so a bomb is built without holding it in memory."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        buffer[:] = bytes(len(buffer))
        return len(buffer)


def test_read_metadata_rejects_a_zip_bomb_quickly(tmp_path):
    """More than 64 MiB declared and a ratio over 50 -> rejected before inflating."""
    started = time.monotonic()
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open(f"{DIST_INFO}/padding", "w") as member,
    ):
        for _ in range(65):
            member.write(bytes(MIB))
    data = buffer.getvalue()
    assert len(data) < 2 * MIB
    with pytest.raises(InvalidDistribution) as caught:
        _read(tmp_path, WHEEL, data)
    assert str(caught.value) == "Invalid distribution file. File exceeds compression ratio of 50"
    assert time.monotonic() - started < 2


def test_read_metadata_rejects_a_tarball_bomb_before_inflating_it(tmp_path):
    """The zip-bomb ratio rule applied to gzip tarballs: the declared member size gives it away."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        entry = tarfile.TarInfo(f"{TOP}/padding")
        entry.size = 65 * MIB
        archive.addfile(entry, io.BufferedReader(_Zeros()))
    started = time.monotonic()
    with pytest.raises(InvalidDistribution) as caught:
        _read(tmp_path, SDIST, buffer.getvalue())
    assert str(caught.value) == "Invalid distribution file. File exceeds compression ratio of 50"
    assert time.monotonic() - started < 0.5


def test_read_metadata_stops_inflating_a_tarball_at_the_ratio_limit(tmp_path, monkeypatch):
    """A huge pax header is read, not skipped: the capped stream still refuses to inflate it."""
    monkeypatch.setattr(dist_metadata, "RATIO_MIN_BYTES", MIB)
    # only the stream may stop it
    monkeypatch.setattr(dist_metadata, "_check_ratio", lambda *sizes: None)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        entry = tarfile.TarInfo(f"{TOP}/PKG-INFO")
        entry.pax_headers = {"comment": "x" * (2 * MIB)}
        archive.addfile(entry, io.BytesIO(b""))
    with pytest.raises(InvalidDistribution) as caught:
        _read(tmp_path, SDIST, buffer.getvalue())
    assert str(caught.value) == "Invalid distribution file. File exceeds compression ratio of 50"


# --- digests -----------------------------------------------------------------------------


DATA = b"pyshelf" * 1000
SHA256 = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA, usedforsecurity=False).hexdigest()
BLAKE2 = hashlib.blake2b(DATA, digest_size=32).hexdigest()
MISMATCH = "The digest supplied does not match a digest calculated from the uploaded file."


def test_hash_stream_computes_all_three_digests_and_the_size():
    """Chunk boundaries do not matter; digests are lowercase hex."""
    hashes = hash_stream(io.BytesIO(DATA), chunk_bytes=7)
    assert (hashes.sha256, hashes.md5, hashes.blake2_256, hashes.size) == (
        SHA256,
        MD5,
        BLAKE2,
        len(DATA),
    )


def test_hashes_of_nothing_are_the_empty_digests():
    """A fresh Hashes has seen zero bytes."""
    hashes = Hashes()
    assert hashes.sha256 == hashlib.sha256(b"").hexdigest()
    assert hashes.size == 0


@pytest.mark.parametrize(
    "digests",
    [
        {"sha256": SHA256, "md5": MD5, "blake2_256": BLAKE2},
        {"sha256": SHA256, "md5": None, "blake2_256": None},
        {"sha256": None, "md5": None, "blake2_256": BLAKE2},
        {"sha256": "", "md5": "", "blake2_256": BLAKE2},
        {"sha256": None, "md5": MD5, "blake2_256": None},
        {"sha256": SHA256.upper(), "md5": None, "blake2_256": BLAKE2.upper()},
    ],
    ids=[
        "all three",
        "sha256 only",
        "blake2 only",
        "empty strings absent",
        "md5 only",
        "uppercase",
    ],
)
def test_check_digests_accepts_any_correct_digest(digests):
    """One digest is enough; hex compares case-insensitively; '' counts as absent (pdm)."""
    check_digests(hash_stream(io.BytesIO(DATA)), **digests)


@pytest.mark.parametrize(
    ("digests", "message"),
    [
        (
            {"sha256": None, "md5": None, "blake2_256": None},
            "Error: Include at least one message digest.",
        ),
        (
            {"sha256": "", "md5": "", "blake2_256": ""},
            "Error: Include at least one message digest.",
        ),
        ({"sha256": "0" * 64, "md5": None, "blake2_256": None}, MISMATCH),
        ({"sha256": SHA256, "md5": "0" * 32, "blake2_256": None}, MISMATCH),
        ({"sha256": SHA256, "md5": None, "blake2_256": BLAKE2[:-1] + "0"}, MISMATCH),
        ({"sha256": SHA256[:32], "md5": None, "blake2_256": None}, MISMATCH),
    ],
    ids=["none", "all empty", "wrong sha256", "wrong md5", "wrong blake2", "truncated sha256"],
)
def test_check_digests_rejects_missing_or_wrong_digests(digests, message):
    """Every supplied digest must match, and at least one must be supplied."""
    with pytest.raises(InvalidDistribution) as caught:
        check_digests(hash_stream(io.BytesIO(DATA)), **digests)
    assert str(caught.value) == message


# --- the builders make what real clients accept -------------------------------------------------


def test_builders_make_distributions_that_pip_installs_and_twine_checks(tmp_path):
    """pip installs the wheel and builds the sdist offline; twine check --strict passes."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # a machine-wide pip config must not leak in
    built = [
        make_wheel(description="# Demo\n", description_content_type="text/markdown"),
        make_sdist(description="# Demo\n", description_content_type="text/markdown"),
    ]
    paths = [write_dist(tmp_path, filename, data) for filename, data in built]
    for path in paths:
        assert read_metadata(path, parse_filename(path.name)).name == "demo-pkg"
        target = tmp_path / f"site-{path.name}"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--target", target, path],
            check=True,
            env=env,
            timeout=120,
        )
        probe = "import demo_pkg; print(demo_pkg.__version__)"
        version = subprocess.run(
            [sys.executable, "-c", probe],
            check=True,
            capture_output=True,
            text=True,
            env={**env, "PYTHONPATH": str(target)},
        ).stdout
        assert version == "1.0.0\n"
    subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *paths],
        check=True,
        env=env,
        timeout=120,
    )


def test_the_common_wheel_form_reads_as_packaging_reads_it(monkeypatch: Any) -> None:
    """Filenames made of ordinary and odd parts (empty tags, double underscores, non-ASCII and
    huge numbers, bad versions, extra dashes): wherever the one-regex reading takes a name, it
    gives what packaging's parse gives; elsewhere packaging decides, as before."""
    names = ["demo", "Demo.Pkg", "a", "a_b", "a__b", "_a", "a.", "é", "a1", "1a", "a..b"]
    versions = [
        "1.0",
        "1.0.post1",
        "2!1.0",
        "1.0+local.1",
        "v1",
        "01.0",
        "1.0_dev",
        "x",
        "1" * 5000,
    ]
    builds = ["", "-1", "-12abc", "-a1", "-" + "9" * 30, "-1-2", "-0"]
    pythons = ["py3", "py2.py3", "cp311", "3x", "py3.", "Py3", "py_3", "é3", ""]
    others = ["none-any", "cp311-manylinux_2_17_x86_64.manylinux2014_x86_64", "-any", "none-"]
    rng = random.Random(427)  # noqa: S311 - test data, not a secret
    cases = [
        f"{n}-{v}{b}-{p}-{o}.whl"
        for n, v, b, p, o in itertools.product(
            names, versions[:4], builds[:2], pythons[:3], others[:2]
        )
    ]
    cases += [
        f"{rng.choice(names)}-{rng.choice(versions)}{rng.choice(builds)}-{rng.choice(pythons)}"
        f"-{rng.choice(others)}.whl"
        for _ in range(3000)
    ]
    fast_ones = 0
    for filename in cases:
        fast = dists._common_wheel(filename)
        with monkeypatch.context() as patch:
            patch.setattr(dists, "_common_wheel", lambda _filename: None)
            try:
                slow: FilenameInfo | str = dists.parse_filename(filename)
            except InvalidDistribution as exc:
                slow = str(exc)
        if fast is not None:
            fast_ones += 1
            assert fast == slow, filename
    assert 500 < fast_ones < len(cases)  # both ways were taken
