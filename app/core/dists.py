"""Distribution files: project names, filenames and digests (the core metadata inside them:
app/core/dist_metadata.py)."""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

FILETYPES = ("sdist", "bdist_wheel")
MAX_REASON_CHARS = 250
MAX_VALUE_CHARS = 100  # a user-supplied value quoted inside a reason

PEP_527 = "https://www.python.org/dev/peps/pep-0527"
BAD_EXTENSION = (
    "Invalid file extension: Use .tar.gz, .whl or .zip extension. "
    f"See {PEP_527} and https://peps.python.org/pep-0715/ for more information"
)
_PROJECT_NAME_RE = re.compile(
    r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])\Z", re.IGNORECASE | re.ASCII
)
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")  # ordinals 0-31 and DEL
_EXTENSIONS = (".whl", ".tar.gz", ".zip")  # PEP 527, plus legacy .zip sdists
# NAME-VERSION[-BUILD]-PYTHON-ABI-PLATFORM.whl (PEP 427) where each tag is valid as packaging
# checks it (an identifier for the interpreter, no empty part) and the build number is short.
_COMMON_WHEEL_RE = re.compile(
    r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._]*[A-Za-z0-9])?)-(?P<version>[^-]+)"
    r"(?:-[0-9]{1,18}(?:[^-0-9][^-]*)?)?"
    r"-(?P<python>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)-\w+(?:\.\w+)*-\w+(?:\.\w+)*\.whl",
    re.ASCII,
)


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


def shorten(value: str) -> str:
    """Shorten a user-supplied value so the reason that quotes it stays one short line."""
    return value if len(value) <= MAX_VALUE_CHARS else value[: MAX_VALUE_CHARS - 3] + "..."


def quoted(value: str) -> str:
    """Quote a user-supplied value for a reason, shortened."""
    return f"'{shorten(value)}'"


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


def _common_wheel(filename: str) -> FilenameInfo | None:
    """A wheel filename of the form nearly every wheel has (an ASCII name, a version, a short
    build number, tags of letters, digits and "_"), read by one regex and a cached version parse,
    as parse_wheel_filename would read it; None for any other (packaging then reads it). Its tag
    parsing is most of the time of a 10,000-file mirror page, though a tag of this form is
    always valid. tests/test_dists.py checks both agree."""
    match = _COMMON_WHEEL_RE.fullmatch(filename)
    if match is None or "__" in match["name"]:
        return None
    version = _normal_version(match["version"])
    if version is None:
        return None
    name = canonicalize_name(match["name"])
    return FilenameInfo(filename, name, version, "bdist_wheel", match["python"])


@functools.lru_cache(maxsize=4096)
def _normal_version(text: str) -> str | None:
    """str(Version(text)), or None when `text` is not a PEP 440 version."""
    try:
        return str(Version(text))
    except ValueError:  # InvalidVersion, or a release number past int()'s 4300-digit limit
        return None


def parse_filename(filename: str) -> FilenameInfo:
    """Check a distribution filename (PEP 427, PEP 527, PEP 625) and say what it names."""
    if _CONTROL_CHARS.search(filename):
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
        common = _common_wheel(filename)
        if common is not None:
            return common
        try:
            name, version, _build, _tags = parse_wheel_filename(filename)
        except InvalidWheelFilename as exc:
            raise InvalidDistribution(str(exc)) from None
        except ValueError:  # a release number past int()'s 4300-digit limit
            raise InvalidDistribution(f"Invalid wheel filename: {quoted(filename)}") from None
        # packaging accepts any \w in the name part; a project name is ASCII only.
        if not is_valid_project_name(filename.split("-", 1)[0]):
            raise InvalidDistribution(
                f"Invalid wheel filename (invalid project name): {quoted(filename)}"
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
            f"Invalid source distribution filename: {quoted(filename)}. "
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
