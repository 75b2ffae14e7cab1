"""Target environments for prefetch: the wheel tags and marker values of a Python on a platform."""

from __future__ import annotations

import platform
import re
import sys
from dataclasses import dataclass, field

from packaging import tags
from packaging.markers import default_environment
from packaging.tags import Tag

from app.ops.prepare import OperationError

IMPLEMENTATIONS = ("cp",)  # CPython: its tags follow from the version (PyPy's need PyPy's own)
_VERSION_RE = re.compile(r"^(\d)\.?(\d{1,2})(?:\.(\d{1,3}))?$")  # 3.11, 311, 3.11.4 (as pip)
_MANYLINUX_RE = re.compile(r"^manylinux_(\d+)_(\d+)_(\w+)$")
_LEGACY_MANYLINUX = {"manylinux1": 5, "manylinux2010": 12, "manylinux2014": 17}  # PEP 600
_MUSLLINUX_RE = re.compile(r"^musllinux_(\d+)_(\d+)_(\w+)$")
_MACOS_RE = re.compile(r"^macosx_(\d+)_(\d+)_(\w+)$")
_LINUX_RE = re.compile(r"^linux_(\w+)$")
_WINDOWS_MACHINES = {"win32": "x86", "win_amd64": "AMD64", "win_arm64": "ARM64"}
_OLDEST_GLIBC_MINOR = {"x86_64": 5, "i686": 5}  # manylinux1; other machines start at 2.17


class TargetError(OperationError):
    """A --python-version, --platform or --implementation prefetch cannot turn into tags."""


@dataclass(frozen=True)
class Target:
    """One environment an install happens in: its name, Python version, tags and markers."""

    name: str
    python_version: str  # "3.11" or "3.11.4": what Requires-Python is checked against
    tags: tuple[Tag, ...]  # most preferred first, as pip ranks wheels
    environment: dict[str, str] = field(hash=False, compare=False)  # PEP 508 marker values
    ranks: dict[Tag, int] = field(init=False, hash=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        ranks = {tag: rank for rank, tag in reversed(list(enumerate(self.tags)))}
        object.__setattr__(self, "ranks", ranks)  # frozen: set once, here

    def tag_rank(self, wheel_tags: frozenset[Tag]) -> int | None:
        """The rank of the best of `wheel_tags` here (0 is best), or None when none fits."""
        found = [self.ranks[tag] for tag in wheel_tags if tag in self.ranks]
        return min(found) if found else None


def current_target() -> Target:
    """The running interpreter's environment (what pip targets without options)."""
    version = ".".join(str(part) for part in sys.version_info[:3])
    name = f"this interpreter ({platform.python_implementation()} {version}, {sys.platform})"
    return Target(
        name,
        version,
        tuple(tags.sys_tags()),
        {key: str(value) for key, value in default_environment().items()},
    )


def parse_targets(python_versions: str, platforms: str, implementation: str = "cp") -> list[Target]:
    """One target per Python version and platform of these comma-separated lists (pip download's
    --python-version, --platform, --implementation); an empty list means the running one's."""
    if implementation not in IMPLEMENTATIONS:
        raise TargetError(
            f"--implementation {implementation!r} is not supported: use one of {IMPLEMENTATIONS}"
        )
    versions = [v.strip() for v in python_versions.split(",") if v.strip()]
    names = [p.strip() for p in platforms.split(",") if p.strip()]
    here = current_target()
    if not versions and not names:
        return [here]
    if not versions:
        versions = [here.environment["python_version"]]
    if not names:
        names = [str(next(iter(here.tags)).platform)]
    return [_target(version, name) for version in versions for name in names]


def _target(version: str, platform_tag: str) -> Target:
    match = _VERSION_RE.match(version)
    if match is None:
        raise TargetError(f"--python-version {version!r}: expected a version such as 3.12")
    major, minor = int(match.group(1)), int(match.group(2))
    full = f"{major}.{minor}.{match.group(3)}" if match.group(3) else f"{major}.{minor}"
    platforms = platform_tags(platform_tag)
    interpreter = f"cp{major}{minor}"
    supported = list(
        tags.cpython_tags((major, minor), abis=[interpreter], platforms=platforms)
    ) + list(tags.compatible_tags((major, minor), interpreter, platforms))
    environment = {
        "implementation_name": "cpython",
        "implementation_version": full if match.group(3) else f"{full}.0",
        "platform_python_implementation": "CPython",
        "python_version": f"{major}.{minor}",
        "python_full_version": full if match.group(3) else f"{full}.0",
        "platform_release": "",  # unknowable for a remote machine; markers on them are rare
        "platform_version": "",
        **_platform_markers(platform_tag),
    }
    return Target(f"{interpreter}-{platform_tag}", full, tuple(supported), environment)


def platform_tags(platform_tag: str) -> list[str]:
    """The platform tags an install on `platform_tag` accepts, best first: older manylinux
    (PEP 600) and musllinux (PEP 656) glibc/musl versions and older macOS releases too."""
    name = platform_tag.lower().replace("-", "_").replace(".", "_")
    for legacy, minor in _LEGACY_MANYLINUX.items():
        if name.startswith(legacy + "_"):
            name = f"manylinux_2_{minor}_{name.removeprefix(legacy + '_')}"
    if match := _MANYLINUX_RE.match(name):
        glibc_major, glibc_minor, machine = int(match[1]), int(match[2]), match[3]
        if glibc_major != 2:
            raise TargetError(f"--platform {platform_tag}: only glibc 2.x manylinux tags exist")
        found = []
        for minor in range(glibc_minor, _OLDEST_GLIBC_MINOR.get(machine, 17) - 1, -1):
            found.append(f"manylinux_2_{minor}_{machine}")
            found += [
                f"{legacy}_{machine}"
                for legacy, legacy_minor in _LEGACY_MANYLINUX.items()
                if legacy_minor == minor
            ]
        return [*found, f"linux_{machine}"]
    if match := _MUSLLINUX_RE.match(name):
        major, minor, machine = int(match[1]), int(match[2]), match[3]
        older = [f"musllinux_{major}_{m}_{machine}" for m in range(minor, -1, -1)]
        return [*older, f"linux_{machine}"]
    if match := _MACOS_RE.match(name):
        return list(tags.mac_platforms((int(match[1]), int(match[2])), match[3]))
    if _LINUX_RE.match(name) or name in _WINDOWS_MACHINES:
        return [name]
    raise TargetError(
        f"--platform {platform_tag!r}: expected a wheel platform tag such as "
        "manylinux_2_28_x86_64, musllinux_1_2_aarch64, macosx_11_0_arm64 or win_amd64"
    )


def _platform_markers(platform_tag: str) -> dict[str, str]:
    """The PEP 508 marker values of a machine of this platform tag."""
    name = platform_tag.lower()
    if name in _WINDOWS_MACHINES:
        machine = _WINDOWS_MACHINES[name]
        return {"os_name": "nt", "sys_platform": "win32", "platform_system": "Windows",
                "platform_machine": machine}  # fmt: skip
    if name.startswith("macosx_"):
        machine = name.rsplit("_", 1)[1]
        machine = "arm64" if machine in ("universal2", "arm64") else "x86_64"
        return {"os_name": "posix", "sys_platform": "darwin", "platform_system": "Darwin",
                "platform_machine": machine}  # fmt: skip
    machine = platform_tags(platform_tag)[-1].removeprefix("linux_")
    return {"os_name": "posix", "sys_platform": "linux", "platform_system": "Linux",
            "platform_machine": machine}  # fmt: skip
