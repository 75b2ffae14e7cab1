"""A dependency tree on the fake upstream for the prefetch tests: two levels and more, extras,
markers that differ between Pythons and platforms, files with and without PEP 658 sidecars."""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.builders import make_sdist, make_wheel
from tests.fake_upstream import FakeUpstream
from tests.operations import wheel_metadata

REQUIREMENTS = """\
# what the site needs
-r base.txt
top[web] >=1 \\
    ; python_version >= "3.8"  # an extra, a range, a marker over a continuation
--index-url http://pkgs.example/simple/
"""


@dataclass
class Tree:
    """The files published, by filename, and those a resolution for the targets needs."""

    files: dict[str, bytes] = field(default_factory=dict)
    sidecars: set[str] = field(default_factory=set)  # filenames published with a sidecar

    def add(
        self, upstream: FakeUpstream, built: tuple[str, bytes], *, sidecar: bool, **kw: object
    ) -> str:
        filename, data = built
        metadata = wheel_metadata(data) if sidecar else None
        upstream.add_file(filename.split("-")[0], filename, data, metadata=metadata, **kw)  # type: ignore[arg-type]
        self.files[filename] = data
        if sidecar:
            self.sidecars.add(filename)
        return filename


def publish_tree(upstream: FakeUpstream, native: str) -> Tree:
    """Publish the tree; `native` is the platform tag of the compiled wheels (this machine's).

    top 1.0 (sidecar) -> mid>=1, winonly on Windows, newpy on Python 3.12+, fancy for [web];
    mid 1.1 (native wheels, no sidecars: a plain upstream's) -> leaf>=2;
    leaf 2.0 (an sdist, Metadata 2.2) and 2.1 (a wheel for Python 3.12+) -> tiny.
    """
    tree = Tree()
    top = ["mid>=1", "winonly; sys_platform == 'win32'", "fancy; extra == 'web'",
           "newpy; python_version >= '3.12'"]  # fmt: skip
    web = "Provides-Extra: web"
    tree.add(
        upstream, make_wheel("top", "1.0", requires_dist=top, extra_metadata=web), sidecar=True
    )
    top_2 = make_wheel("top", "2.0", requires_dist=top, extra_metadata=web)
    tree.add(upstream, top_2, sidecar=True, yanked="bad")
    tree.add(upstream, make_wheel("mid", "1.0", requires_dist=["leaf"]), sidecar=False)
    for python in ("cp311", "cp312"):
        for platform in (native, "win_amd64"):
            built = make_wheel("mid", "1.1", requires_dist=["leaf>=2"], python_tag=python,
                               abi_tag=python, platform_tag=platform)  # fmt: skip
            tree.add(upstream, built, sidecar=False)
    mac = make_wheel("mid", "1.1", requires_dist=["leaf>=2"], python_tag="cp312",
                     abi_tag="cp312", platform_tag="macosx_11_0_arm64")  # fmt: skip
    tree.add(upstream, mac, sidecar=False)
    tree.add(upstream, make_sdist("mid", "1.1", requires_dist=["leaf>=2"]), sidecar=False)
    tree.add(upstream, make_wheel("leaf", "1.0"), sidecar=False)
    leaf_sdist = make_sdist("leaf", "2.0", requires_dist=["tiny"], metadata_version="2.2")
    tree.add(upstream, leaf_sdist, sidecar=False)
    leaf_wheel = make_wheel("leaf", "2.1", requires_dist=["tiny"], requires_python=">=3.12")
    tree.add(upstream, leaf_wheel, sidecar=True, requires_python=">=3.12")
    tree.add(upstream, make_wheel("tiny", "1.0"), sidecar=False)
    tree.add(upstream, make_wheel("fancy", "1.0"), sidecar=True)
    tree.add(upstream, make_wheel("newpy", "1.0"), sidecar=True)
    winonly = make_wheel("winonly", "1.0", python_tag="py3", platform_tag="win_amd64")
    tree.add(upstream, winonly, sidecar=True)
    return tree


def needed(native: str, *, pythons: tuple[str, ...] = ("3.11", "3.12")) -> set[str]:
    """The filenames a resolution of REQUIREMENTS for `pythons` on `native` and win_amd64 needs."""
    names = {"top-1.0-py3-none-any.whl", "fancy-1.0-py3-none-any.whl", "tiny-1.0-py3-none-any.whl",
             "winonly-1.0-py3-none-win_amd64.whl"}  # fmt: skip
    for python in pythons:
        tag = "cp" + python.replace(".", "")
        names |= {f"mid-1.1-{tag}-{tag}-{native}.whl", f"mid-1.1-{tag}-{tag}-win_amd64.whl"}
        if python == "3.11":
            names.add("leaf-2.0.tar.gz")
        else:
            names |= {"leaf-2.1-py3-none-any.whl", "newpy-1.0-py3-none-any.whl"}
    return names
