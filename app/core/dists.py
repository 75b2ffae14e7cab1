"""Distribution files: names, filenames, core metadata from wheels and sdists, and digests."""

from __future__ import annotations

import collections
import gzip
import hashlib
import os
import posixpath
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from packaging.metadata import parse_email
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

FILETYPES = ("sdist", "bdist_wheel")
METADATA_VERSIONS = ("1.0", "1.1", "1.2", "2.1", "2.2", "2.3", "2.4", "2.5", "2.6")  # core metadata
MAX_METADATA_BYTES = 10 * 1024 * 1024  # 10 MiB
MAX_COMPRESSION_RATIO = 50  # warehouse's zip-bomb rule...
RATIO_MIN_BYTES = 64 * 1024 * 1024  # ...applied only past 64 MiB uncompressed
MAX_REASON_CHARS = 250
MAX_VALUE_CHARS = 100  # a user-supplied value quoted inside a reason

CORE_METADATA_SPEC = "https://packaging.python.org/specifications/core-metadata"
PEP_527 = "https://www.python.org/dev/peps/pep-0527"
BAD_EXTENSION = (
    "Invalid file extension: Use .tar.gz, .whl or .zip extension. "
    f"See {PEP_527} and https://peps.python.org/pep-0715/ for more information"
)
NOT_A_ZIPFILE = "Invalid distribution file. File is not a zipfile"
NOT_A_TARFILE = "Invalid distribution file. File is not a tarfile"
ZIP_AND_TAR = "Invalid distribution file. File is both a zip and a tar file"
RATIO_EXCEEDED = (
    f"Invalid distribution file. File exceeds compression ratio of {MAX_COMPRESSION_RATIO}"
)
TOP_LEVEL_COUNT = "Invalid distribution file. Incorrect number of top-level directories in sdist"

# Headers whose legacy placeholder "UNKNOWN" means "not given" (warehouse's `sanitize`).
_UNKNOWN = "UNKNOWN"
_PROJECT_NAME_RE = re.compile(
    r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])\Z", re.IGNORECASE | re.ASCII
)
_EXTENSIONS = (".whl", ".tar.gz", ".zip")  # PEP 527, plus legacy .zip sdists


class InvalidDistribution(ValueError):
    """str(exc) is the client-facing reason: one line, latin-1 safe, <= ~200 chars, actionable."""

    def __init__(self, reason: str) -> None:
        super().__init__(_one_line(reason))


def _one_line(reason: str) -> str:
    """Escape what a status line cannot carry (RFC 9112 §4) and bound the length."""
    line = "".join(
        char if char.isprintable() and ord(char) < 256 else char.encode("unicode_escape").decode()
        for char in reason
    )
    if len(line) > MAX_REASON_CHARS:
        line = line[: MAX_REASON_CHARS - 3] + "..."
    return line


def _short(value: str) -> str:
    """Shorten a user-supplied value so the reason that quotes it stays one short line."""
    return value if len(value) <= MAX_VALUE_CHARS else value[: MAX_VALUE_CHARS - 3] + "..."


def _q(value: str) -> str:
    """Quote a user-supplied value for a reason, shortened."""
    return f"'{_short(value)}'"


def normalize_name(name: str) -> str:
    """Return the PEP 503 normalized form of a project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_valid_project_name(name: str) -> bool:
    """Tell whether `name` is a valid core-metadata Name (ASCII letters, digits, '.', '_', '-')."""
    # re.ASCII: with IGNORECASE alone, [A-Z] also matches U+017F (long s) and U+212A (Kelvin).
    return _PROJECT_NAME_RE.match(name) is not None


@dataclass(frozen=True)
class FilenameInfo:
    """What a distribution filename says about its file."""

    filename: str
    normalized_name: str
    version: str  # normalized: str(Version(...))
    filetype: str  # "bdist_wheel" or "sdist"
    pyversion: str  # wheel: python tag(s) as in the filename ("py2.py3"); sdist: "source"


def _extension(filename: str) -> str | None:
    return next((ext for ext in _EXTENSIONS if filename.endswith(ext)), None)


def parse_filename(filename: str) -> FilenameInfo:
    """Check a distribution filename (PEP 427, PEP 527, PEP 625) and say what it names."""
    if any(ord(char) < 32 or ord(char) == 127 for char in filename):
        raise InvalidDistribution(
            "Cannot upload a file with non-printable characters (ordinals 0-31) "
            "or the DEL character (ordinal 127) in the name."
        )
    if "/" in filename or "\\" in filename:
        raise InvalidDistribution("Cannot upload a file with '/' or '\\' in the name.")
    extension = _extension(filename)
    if extension is None:
        raise InvalidDistribution(BAD_EXTENSION)
    if extension == ".whl":
        try:
            name, version, _build, _tags = parse_wheel_filename(filename)
        except InvalidWheelFilename as exc:
            raise InvalidDistribution(str(exc)) from None
        except ValueError:  # a release number past int()'s 4300-digit limit
            raise InvalidDistribution(f"Invalid wheel filename: {_q(filename)}") from None
        # packaging accepts any \w in the name part; a project name is ASCII only.
        if not is_valid_project_name(filename.split("-", 1)[0]):
            raise InvalidDistribution(
                f"Invalid wheel filename (invalid project name): {_q(filename)}"
            )
        pyversion = filename[: -len(extension)].split("-")[-3]
        return FilenameInfo(filename, str(name), str(version), "bdist_wheel", pyversion)
    # Legacy names ("Demo.Pkg-1.0.tar.gz", ".zip") are accepted like devpi does, unlike PEP 625.
    name_part = filename[: -len(extension)].rpartition("-")[0]
    try:
        if not is_valid_project_name(name_part):
            raise InvalidSdistFilename(filename)
        name, version = parse_sdist_filename(filename)
    except ValueError:  # InvalidSdistFilename, or a release number past 4300 digits
        raise InvalidDistribution(
            f"Invalid source distribution filename: {_q(filename)}. "
            f"Expected '<name>-<version>{extension}' with a PEP 440 version."
        ) from None
    return FilenameInfo(filename, str(name), str(version), "sdist", "source")


def check_filetype(info: FilenameInfo, filetype: str | None, pyversion: str | None) -> None:
    """Check the upload form's filetype and pyversion against the filename (PEP 527)."""
    if filetype and filetype not in FILETYPES:
        raise InvalidDistribution("Invalid value for filetype. Error: Use a known file type.")
    declared = filetype or info.filetype
    if declared == "bdist_wheel" and not pyversion:
        raise InvalidDistribution("Python version is required for binary distribution uploads.")
    if declared == "sdist" and pyversion not in (None, "", "source"):
        raise InvalidDistribution("Use 'source' as Python version for an sdist.")
    if declared != info.filetype:
        raise InvalidDistribution(
            f"Invalid file extension: Extension {_extension(info.filename)} is invalid for "
            f"filetype {declared}. See {PEP_527} for more information."
        )


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
        raise InvalidDistribution(f"Invalid distribution file. Unsafe member path {_q(name)}")
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
                        f"Invalid distribution file. PKG-INFO not found at {_short(member)}"
                    )
            if names[member] > 1:
                raise InvalidDistribution(
                    f"Invalid distribution file. Duplicate entries for {_short(member)}"
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
        f"Invalid distribution file. {_short(member)} is larger than "
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
            f"Wheel {_q(info.filename)} contains more than one .dist-info directory: "
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
            f"Wheel {_q(info.filename)} does not contain the required {required} file: {member}"
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
            f"Invalid distribution file. {_q(member.name)} is a device or FIFO, not a file"
        )
    if not (member.issym() or member.islnk()):
        return
    target = member.linkname
    if member.issym():  # relative to the link's own folder; a hard link names a member
        target = posixpath.join(posixpath.dirname(member.name), target)
    normalized = posixpath.normpath(target)
    if member.linkname.startswith("/") or normalized.split("/")[0] != top:
        raise InvalidDistribution(
            f"Invalid distribution file. Link {_q(member.name)} points outside the sdist"
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
                f"Invalid distribution file. PKG-INFO not found at {_short(pkg_info)}"
            )
        if len(candidates) > 1:
            raise InvalidDistribution(
                f"Invalid distribution file. Duplicate entries for {_short(pkg_info)}"
            )
        member = candidates[0]
        if not member.isreg():
            raise InvalidDistribution(
                f"Invalid distribution file. {_short(pkg_info)} is not a regular file"
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
            f"Invalid distribution file. {_short(member)} is not valid UTF-8"
        ) from None
    fields, unparsed = parse_email(text)

    def single(key: str, label: str) -> str:
        value = fields.get(key)
        if not isinstance(value, str) or not value:
            reason = "appears more than once" if key in unparsed else "is missing"
            raise InvalidDistribution(
                f"Invalid distribution file. {label} {reason} in {_short(member)}. "
                f"See {CORE_METADATA_SPEC} for more information."
            )
        return value

    metadata_version = single("metadata_version", "Metadata-Version")
    if metadata_version not in METADATA_VERSIONS:
        raise InvalidDistribution(
            f"{_q(metadata_version)} is not a valid metadata version. "
            f"See {CORE_METADATA_SPEC} for more information."
        )
    name = single("name", "Name")
    if not is_valid_project_name(name):
        raise InvalidDistribution(
            f"{_q(name)} is an invalid value for Name. Error: Start and end with a letter or "
            "numeral containing only ASCII numeric and '.', '_' and '-'. "
            f"See {CORE_METADATA_SPEC} for more information."
        )
    version = single("version", "Version")
    try:
        parsed_version = Version(version)
    except ValueError:  # InvalidVersion, or past int()'s 4300-digit limit
        raise InvalidDistribution(
            f"{_q(version)} is an invalid value for Version. Error: Use a PEP 440 version. "
            f"See {CORE_METADATA_SPEC} for more information."
        ) from None
    if normalize_name(name) != info.normalized_name:
        raise InvalidDistribution(
            f"Start filename for {_q(name)} with {_q(normalize_name(name).replace('-', '_'))}."
        )
    if str(parsed_version) != info.version:
        raise InvalidDistribution(
            f"Version in filename should be {_q(str(parsed_version))} not {_q(info.version)}."
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


class Hashes:
    """Incremental sha256, md5 and blake2b-256 (digest_size=32) over a stream."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False)  # only compared with what clients send
        self._blake2_256 = hashlib.blake2b(digest_size=32)
        self.size = 0

    def update(self, chunk: bytes) -> None:
        """Feed the next chunk of the file."""
        self._sha256.update(chunk)
        self._md5.update(chunk)
        self._blake2_256.update(chunk)
        self.size += len(chunk)

    @property
    def sha256(self) -> str:
        """The sha256 of the bytes seen so far, lowercase hex."""
        return self._sha256.hexdigest()

    @property
    def md5(self) -> str:
        """The md5 of the bytes seen so far, lowercase hex."""
        return self._md5.hexdigest()

    @property
    def blake2_256(self) -> str:
        """The blake2b-256 of the bytes seen so far, lowercase hex."""
        return self._blake2_256.hexdigest()


def check_digests(
    hashes: Hashes,
    *,
    sha256: str | None,
    md5: str | None,
    blake2_256: str | None,
    is_required: bool = True,
) -> None:
    """Check every digest the client supplied against the computed ones; with
    `is_required`, at least one must be there."""
    given = {"sha256": sha256, "md5": md5, "blake2_256": blake2_256}
    supplied = {kind: digest for kind, digest in given.items() if digest}
    if not supplied and is_required:
        raise InvalidDistribution("Error: Include at least one message digest.")
    for kind, digest in supplied.items():
        if digest.lower() != getattr(hashes, kind):
            raise InvalidDistribution(
                "The digest supplied does not match a digest calculated from the uploaded file."
            )
