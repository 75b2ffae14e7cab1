"""`pyshelf prefetch` next to a running server resolves a requirements file for several target
environments and caches every file they need: real pip then installs the set, hashes required,
with the upstream gone."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from packaging.tags import sys_tags

from tests.blobs import data_dir_blob
from tests.conftest import LiveServer, run_pip
from tests.e2e.helpers import cli, sha256
from tests.fake_upstream import FakeUpstream
from tests.operations import publish_upstream
from tests.resolve_tree import REQUIREMENTS, needed, publish_tree

pytestmark = pytest.mark.e2e

StartServer = Callable[..., LiveServer]
FAST_UPSTREAM = {"UPSTREAM_CONNECT_TIMEOUT": "2", "UPSTREAM_READ_TIMEOUT": "3",
                 "UPSTREAM_RETRIES": "0"}  # fmt: skip
NATIVE = next(iter(sys_tags())).platform  # this machine's best platform tag
INSTALLED_HERE = {"top": "1.0", "mid": "1.1", "tiny": "1.0", "fancy": "1.0"} | (
    {"leaf": "2.0"} if sys.version_info[:2] == (3, 11) else {"leaf": "2.1", "newpy": "1.0"}
)  # what pip installs from the tree on this interpreter (3.11 or 3.12)


@pytest.mark.skipif(
    sys.version_info[:2] not in ((3, 11), (3, 12)), reason="the tree's wheels are cp311/cp312"
)
def test_prefetch_caches_a_complete_install_for_each_target_and_pip_installs_it_offline(
    server_factory: StartServer, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Two Pythons on two platforms; a missing dependency fails the command naming it; then,
    with the upstream stopped, pip installs the tree from the mirror, with and without
    --require-hashes."""
    tree = publish_tree(fake_upstream, NATIVE)
    publish_upstream(fake_upstream, "needsghost", requires_dist=["ghost>=1"])
    server = server_factory(MIRROR_URL=fake_upstream.url, **FAST_UPSTREAM)
    tiny = sha256(tree.files["tiny-1.0-py3-none-any.whl"])
    (tmp_path / "base.txt").write_text(f"tiny==1.0 --hash=sha256:{tiny}\n")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(REQUIREMENTS)
    targets = ("--python-version", "3.11,3.12", "--platform", f"{NATIVE},win_amd64")

    missing = cli(server.data_dir, "prefetch", "needsghost", *targets)

    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "missing: ghost: ghost (required by needsghost 1.0.0)" in missing.stdout
    assert "could not be fetched" in missing.stderr
    fake_upstream.reset_counts()

    result = cli(server.data_dir, "prefetch", "-r", str(requirements), *targets)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"cp311-{NATIVE}: fancy 1.0, leaf 2.0, mid 1.1, tiny 1.0, top 1.0" in result.stdout
    assert "cp312-win_amd64: fancy 1.0, leaf 2.1, mid 1.1, newpy 1.0, tiny 1.0, top 1.0, " \
        "winonly 1.0" in result.stdout  # fmt: skip
    wanted = needed(NATIVE)
    asked = {p.rsplit("/", 1)[1] for p in fake_upstream.requests if p.startswith("/files/")}
    assert {name for name in asked if not name.endswith(".metadata")} == wanted
    for name in wanted:
        assert data_dir_blob(server.data_dir, sha256(tree.files[name])).exists(), name

    fake_upstream.stop()
    index_url = f"{server.url}/root/pypi/+simple/"
    plain = tmp_path / "pip-requirements.txt"
    plain.write_text("top[web]>=1\ntiny\n")  # ranges, extras: pip resolves from the mirror
    installed = run_pip("install", "--target", str(tmp_path / "plain"), "--index-url", index_url,
                        "-r", str(plain))  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert_installed(tmp_path / "plain")

    hashed = tmp_path / "hashed.txt"
    hashed.write_text("".join(pin(tree.files, name, version) for name, version in
                              INSTALLED_HERE.items()))  # fmt: skip
    checked = run_pip("install", "--require-hashes", "--target", str(tmp_path / "hashed"),
                      "--index-url", index_url, "-r", str(hashed))  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert_installed(tmp_path / "hashed")


def pin(files: dict[str, bytes], name: str, version: str) -> str:
    """`name[web]==version --hash=...` for every published file of that version."""
    stems = (f"{name}-{version}-", f"{name}-{version}.tar.gz")
    hashes = [f"--hash=sha256:{sha256(data)}" for filename, data in files.items()
              if filename.startswith(stems)]  # fmt: skip
    extras = "[web]" if name == "top" else ""
    return f"{name}{extras}=={version} {' '.join(hashes)}\n"


def assert_installed(target: Path) -> None:
    """The tree as this interpreter needs it: no Windows-only project, Python-dependent ones
    as the markers and Requires-Python say."""
    stems = [path.name.removesuffix(".dist-info") for path in target.glob("*.dist-info")]
    found = dict(stem.split("-", 1) for stem in stems)
    assert found == INSTALLED_HERE
