"""Core metadata read from a wheel's or an sdist's archive (METADATA or PKG-INFO) with the
checks an upload gets: size, zip-bomb and member-path limits, name and version."""

from __future__ import annotations

import collections
import gzip
import os
import posixpath
import tarfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from packaging.metadata import parse_email
from packaging.version import Version

from app.core.dists import (
    FilenameInfo,
    InvalidDistribution,
    is_valid_project_name,
    normalize_name,
    quoted,
    shorten,
)

METADATA_VERSIONS = ("1.0", "1.1", "1.2", "2.1", "2.2", "2.3", "2.4", "2.5", "2.6")  # core metadata
MAX_METADATA_BYTES = 10 * 1024 * 1024  # 10 MiB
MAX_COMPRESSION_RATIO = 50  # warehouse's zip-bomb rule...
RATIO_MIN_BYTES = 64 * 1024 * 1024  # ...applied only past 64 MiB uncompressed

CORE_METADATA_SPEC = "https://packaging.python.org/specifications/core-metadata"
NOT_A_ZIPFILE = "Invalid distribution file. File is not a zipfile"
NOT_A_TARFILE = "Invalid distribution file. File is not a tarfile"
ZIP_AND_TAR = "Invalid distribution file. File is both a zip and a tar file"
RATIO_EXCEEDED = (
    f"Invalid distribution file. File exceeds compression ratio of {MAX_COMPRESSION_RATIO}"
)
TOP_LEVEL_COUNT = "Invalid distribution file. Incorrect number of top-level directories in sdist"

# Headers whose legacy placeholder "UNKNOWN" means "not given" (warehouse's `sanitize`).
_UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class CoreMetadata:
    """The core metadata of a distribution, with the exact bytes it was read from."""

    raw: bytes = field(repr=False)  # METADATA / PKG-INFO as stored: the PEP 658 sidecar
    metadata_version: str
    name: str
    version: str
    summary: str | None
    description: str | None = field(repr=False)
    description_content_type: str | None
    requires_python: str | None
    requires_dist: list[str]
    provides_extra: list[str]
    classifiers: list[str]
    project_urls: dict[str, str]
    author: str | None
    author_email: str | None
    license: str | None
    keywords: str | None


def read_metadata(path: str | os.PathLike[str], info: FilenameInfo) -> CoreMetadata:
    """Validate the archive at `path` (extracting nothing) and return its core metadata."""
    if info.filename.endswith(".tar.gz"):
        member, raw = _read_tar_sdist(path)
    else:
        member, raw = _read_zip(path, info)
    return _parse_metadata(raw, member, info)


def parse_metadata(raw: bytes, info: FilenameInfo) -> CoreMetadata:
    """Parse stored METADATA / PKG-INFO bytes of the distribution `info` names, as read_metadata."""
    member = "METADATA" if info.filetype == "bdist_wheel" else "PKG-INFO"
    return _parse_metadata(raw, member, info)


def _check_ratio(uncompressed_bytes: int, compressed_bytes: int) -> None:
    # Warehouse's zip-bomb rule; applied to tarballs too, as gzip inflates just as well.
    if (
        uncompressed_bytes > RATIO_MIN_BYTES
        and uncompressed_bytes > MAX_COMPRESSION_RATIO * compressed_bytes
    ):
        raise InvalidDistribution(RATIO_EXCEEDED)


def _member_parts(name: str) -> list[str]:
    """Split an archive member name into path parts; reject names that climb out of the root."""
    while name.startswith("./"):
        name = name[2:]
    parts = [part for part in name.rstrip("/").split("/") if part != "."]
    if name.startswith("/") or ".." in parts:
        raise InvalidDistribution(f"Invalid distribution file. Unsafe member path {quoted(name)}")
    return parts


def _read_zip(path: str | os.PathLike[str], info: FilenameInfo) -> tuple[str, bytes]:
    """Read the metadata member of a wheel or a .zip sdist."""
    if not zipfile.is_zipfile(path):
        raise InvalidDistribution(NOT_A_ZIPFILE)
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
            _check_ratio(sum(entry.file_size for entry in entries), os.stat(path).st_size)
            for entry in entries:
                if entry.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise InvalidDistribution(
                        "Invalid distribution file. File does not use a supported compression type"
                    )
                if entry.flag_bits & 0x1:
                    raise InvalidDistribution("Invalid distribution file. File is encrypted")
                _member_parts(entry.filename)
            if _is_tarfile(path):
                raise InvalidDistribution(ZIP_AND_TAR)
            names = collections.Counter(entry.filename for entry in entries)
            if info.filetype == "bdist_wheel":
                member = _wheel_metadata_member(names, info)
            else:
                top = _single_top_level(names)
                member = f"{top}/PKG-INFO"
                if member not in names:
                    raise InvalidDistribution(
                        f"Invalid distribution file. PKG-INFO not found at {shorten(member)}"
                    )
            if names[member] > 1:
                raise InvalidDistribution(
                    f"Invalid distribution file. Duplicate entries for {shorten(member)}"
                )
            entry = archive.getinfo(member)
            if entry.file_size > MAX_METADATA_BYTES:
                raise _too_large(member)
            with archive.open(entry) as stream:
                raw = stream.read(MAX_METADATA_BYTES + 1)
    # NotImplementedError: a member that needs a newer zip version ("zip file version 8.4")
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        zlib.error,
        EOFError,
        OSError,
        NotImplementedError,
    ) as exc:
        raise InvalidDistribution(
            f"Invalid distribution file. Cannot read the zip: {exc}"
        ) from None
    if len(raw) > MAX_METADATA_BYTES:
        raise _too_large(member)
    return member, raw


def _is_tarfile(path: str | os.PathLike[str]) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, EOFError, zlib.error, tarfile.TarError):
        return False


def _too_large(member: str) -> InvalidDistribution:
    return InvalidDistribution(
        f"Invalid distribution file. {shorten(member)} is larger than "
        f"{MAX_METADATA_BYTES // (1024 * 1024)} MiB"
    )


def _wheel_metadata_member(names: collections.Counter[str], info: FilenameInfo) -> str:
    """Find the wheel's .dist-info directory, check WHEEL and RECORD, and name its METADATA."""
    name_part, version_part = info.filename.split("-")[:2]
    expected = f"{name_part}-{version_part}.dist-info"
    dist_infos = sorted(
        {name.split("/", 1)[0] for name in names if name.split("/", 1)[0].endswith(".dist-info")}
    )
    if len(dist_infos) > 1:
        raise InvalidDistribution(
            f"Wheel {quoted(info.filename)} contains more than one .dist-info directory: "
            + ", ".join(dist_infos)
        )
    # Real-world tools vary in how they spell the directory ("Demo.Pkg-1.0.dist-info"); accept
    # any spelling of the same project and version, as pip does.
    dist_info = next((d for d in dist_infos if _names_dist(d, info)), expected)
    for required in ("WHEEL", "RECORD", "METADATA"):
        member = f"{dist_info}/{required}"
        if member in names:
            continue
        if required == "WHEEL":
            raise InvalidDistribution(f"Invalid distribution file. WHEEL not found at {member}")
        raise InvalidDistribution(
            f"Wheel {quoted(info.filename)} does not contain the required {required} file: {member}"
        )
    return f"{dist_info}/METADATA"


def _names_dist(dist_info: str, info: FilenameInfo) -> bool:
    """Tell whether a "<name>-<version>.dist-info" directory belongs to the file's project."""
    stem = dist_info.removesuffix(".dist-info")
    for index, char in enumerate(stem):
        if char != "-":
            continue
        try:
            version = Version(stem[index + 1 :])
        except ValueError:  # InvalidVersion, or past int()'s 4300-digit limit
            continue
        if normalize_name(stem[:index]) == info.normalized_name and str(version) == info.version:
            return True
    return False


def _single_top_level(member_names: Iterable[str]) -> str:
    """Return the one top-level directory of an sdist's member names."""
    tops = {parts[0] for parts in map(_member_parts, member_names) if parts}
    if len(tops) != 1:
        raise InvalidDistribution(TOP_LEVEL_COUNT)
    return tops.pop()


class _CappedStream:
    """A decompressed stream that stops inflating at `limit_bytes` (zip-bomb rule, for tarballs)."""

    def __init__(self, stream: gzip.GzipFile, limit_bytes: int) -> None:
        self._stream = stream
        self._limit_bytes = limit_bytes

    def read(self, size: int | None = -1) -> bytes:
        position = self._stream.tell()
        room = self._limit_bytes - position + 1
        data = self._stream.read(room if size is None or size < 0 else min(size, room))
        if position + len(data) > self._limit_bytes:
            raise InvalidDistribution(RATIO_EXCEEDED)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        target = offset + (self._stream.tell() if whence == os.SEEK_CUR else 0)
        if whence == os.SEEK_END or target > self._limit_bytes:
            raise InvalidDistribution(RATIO_EXCEEDED)
        return self._stream.seek(target)

    def tell(self) -> int:
        return self._stream.tell()


def _read_tar_sdist(path: str | os.PathLike[str]) -> tuple[str, bytes]:
    """Read <top>/PKG-INFO of a gzip tarball; links and devices are never followed or opened."""
    compressed_bytes = os.stat(path).st_size
    limit_bytes = max(RATIO_MIN_BYTES, MAX_COMPRESSION_RATIO * compressed_bytes)
    with gzip.GzipFile(path, "rb") as gz:
        try:
            # typeshed asks a fileobj for write() and close() in every mode; reading uses neither
            capped = _CappedStream(gz, limit_bytes)
            with tarfile.open(fileobj=capped, mode="r:") as archive:  # type: ignore[call-overload]
                member, raw = _read_pkg_info(archive, compressed_bytes)
        except (tarfile.TarError, zlib.error, EOFError, OSError):
            raise InvalidDistribution(NOT_A_TARFILE) from None
    if zipfile.is_zipfile(path):
        raise InvalidDistribution(ZIP_AND_TAR)
    return member, raw


def _check_link(member: tarfile.TarInfo, top: str) -> None:
    """Links must stay inside the sdist, and devices or FIFOs have no place in one: whoever
    unpacks the file later (pip, a build backend) must not be pointed at /etc/passwd."""
    if member.ischr() or member.isblk() or member.isfifo():
        raise InvalidDistribution(
            f"Invalid distribution file. {quoted(member.name)} is a device or FIFO, not a file"
        )
    if not (member.issym() or member.islnk()):
        return
    target = member.linkname
    if member.issym():  # relative to the link's own folder; a hard link names a member
        target = posixpath.join(posixpath.dirname(member.name), target)
    normalized = posixpath.normpath(target)
    if member.linkname.startswith("/") or normalized.split("/")[0] != top:
        raise InvalidDistribution(
            f"Invalid distribution file. Link {quoted(member.name)} points outside the sdist"
        )


def _read_pkg_info(archive: tarfile.TarFile, compressed_bytes: int) -> tuple[str, bytes]:
    """Check an sdist tarball's members and read its one <top>/PKG-INFO."""
    top: str | None = None
    candidates: list[tarfile.TarInfo] = []
    try:
        while (member := archive.next()) is not None:
            # Forget members as we go: a tarball of millions of entries must not pin memory.
            # (`members` is undocumented, so typeshed leaves it out.)
            archive.members.clear()  # type: ignore[attr-defined]
            _check_ratio(member.offset_data + member.size, compressed_bytes)
            if member.issparse():
                raise InvalidDistribution(
                    "Invalid distribution file. tar archive not accepted: "
                    "Sparse members are not allowed."
                )
            parts = _member_parts(member.name)
            if not parts:
                continue
            if top is None:
                top = parts[0]
            elif parts[0] != top:
                raise InvalidDistribution(TOP_LEVEL_COUNT)
            _check_link(member, top)
            if parts[1:] == ["PKG-INFO"]:
                candidates.append(member)
        if top is None:
            raise InvalidDistribution(TOP_LEVEL_COUNT)
        pkg_info = f"{top}/PKG-INFO"
        if not candidates:
            raise InvalidDistribution(
                f"Invalid distribution file. PKG-INFO not found at {shorten(pkg_info)}"
            )
        if len(candidates) > 1:
            raise InvalidDistribution(
                f"Invalid distribution file. Duplicate entries for {shorten(pkg_info)}"
            )
        member = candidates[0]
        if not member.isreg():
            raise InvalidDistribution(
                f"Invalid distribution file. {shorten(pkg_info)} is not a regular file"
            )
        if member.size > MAX_METADATA_BYTES:
            raise _too_large(pkg_info)
        stream = archive.extractfile(member)
        raw = stream.read(MAX_METADATA_BYTES + 1) if stream else b""
    except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        raise InvalidDistribution(
            f"Invalid distribution file. Cannot read the tarball: {exc}"
        ) from None
    return pkg_info, raw


def _parse_metadata(raw: bytes, member: str, info: FilenameInfo) -> CoreMetadata:
    """Parse METADATA / PKG-INFO leniently and check it against the filename (PEP 427, 625)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidDistribution(
            f"Invalid distribution file. {shorten(member)} is not valid UTF-8"
        ) from None
    fields, unparsed = parse_email(text)

    def single(key: str, label: str) -> str:
        value = fields.get(key)
        if not isinstance(value, str) or not value:
            reason = "appears more than once" if key in unparsed else "is missing"
            raise InvalidDistribution(
                f"Invalid distribution file. {label} {reason} in {shorten(member)}. "
                f"See {CORE_METADATA_SPEC} for more information."
            )
        return value

    metadata_version = single("metadata_version", "Metadata-Version")
    if metadata_version not in METADATA_VERSIONS:
        raise InvalidDistribution(
            f"{quoted(metadata_version)} is not a valid metadata version. "
            f"See {CORE_METADATA_SPEC} for more information."
        )
    name = single("name", "Name")
    if not is_valid_project_name(name):
        raise InvalidDistribution(
            f"{quoted(name)} is an invalid value for Name. Error: Start and end with a letter or "
            "numeral containing only ASCII numeric and '.', '_' and '-'. "
            f"See {CORE_METADATA_SPEC} for more information."
        )
    version = single("version", "Version")
    try:
        parsed_version = Version(version)
    except ValueError:  # InvalidVersion, or past int()'s 4300-digit limit
        raise InvalidDistribution(
            f"{quoted(version)} is an invalid value for Version. Error: Use a PEP 440 version. "
            f"See {CORE_METADATA_SPEC} for more information."
        ) from None
    if normalize_name(name) != info.normalized_name:
        raise InvalidDistribution(
            f"Start filename for {quoted(name)} with "
            f"{quoted(normalize_name(name).replace('-', '_'))}."
        )
    if str(parsed_version) != info.version:
        raise InvalidDistribution(
            f"Version in filename should be {quoted(str(parsed_version))} "
            f"not {quoted(info.version)}."
        )

    def text_field(key: str) -> str | None:
        value = fields.get(key)
        return value if isinstance(value, str) and value and value != _UNKNOWN else None

    description = text_field("description")
    if description is None and unparsed.get("description"):
        # Description given both as a header and as the body (PEP 566): the body wins.
        description = unparsed["description"][-1]
    project_urls = dict(fields.get("project_urls") or {})
    home_page = text_field("home_page")
    if home_page and not any(_url_label_key(label) == "homepage" for label in project_urls):
        project_urls["Homepage"] = home_page
    keywords = fields.get("keywords")
    return CoreMetadata(
        raw=raw,
        metadata_version=metadata_version,
        name=name,
        version=version,
        summary=text_field("summary"),
        description=description,
        description_content_type=text_field("description_content_type"),
        requires_python=text_field("requires_python"),
        requires_dist=list(fields.get("requires_dist") or []),
        provides_extra=list(fields.get("provides_extra") or []),
        classifiers=list(fields.get("classifiers") or []),
        project_urls=project_urls,
        author=text_field("author"),
        author_email=text_field("author_email"),
        license=text_field("license"),
        # packaging splits Keywords on commas; rejoin them the way the upload form sends them.
        keywords=", ".join(keywords) if keywords and keywords != [_UNKNOWN] else None,
    )


def _url_label_key(label: str) -> str:
    """Normalize a Project-URL label the way PEP 753 compares them ("Home page" == "homepage")."""
    return "".join(char for char in label.lower() if char.isalnum())
