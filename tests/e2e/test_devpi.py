"""The real devpi-client against a live pyshelf, and a real devpi-server's export imported.

devpi-client and devpi-server live in .venv-devpi (requirements-devpi.txt; `make test` makes
it). Nothing leaves 127.0.0.1: pyshelf's mirror and devpi-server's root/pypi both point at a
FakeUpstream. `devpi upload --with-docs` runs Sphinx as `sphinx-build -E SOURCE BUILD`; a
stand-in script on PATH writes the HTML, the rest (build, zip, upload) is devpi-client's own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.builders import BACKEND_PY, PYPROJECT_TOML, core_metadata, make_sdist, make_wheel
from tests.conftest import ADMIN_PASSWORD, ROOT, LiveServer, clean_env, free_port, run_pip
from tests.e2e.helpers import cli
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.e2e

DEVPI_BIN = ROOT / ".venv-devpi" / "bin"
if not (DEVPI_BIN / "devpi").exists():
    pytest.skip(
        "devpi-client is not installed: make .venv-devpi/.installed", allow_module_level=True
    )

ALICE_PASSWORD = "alice-password-1"
DEVPI_ROOT_PASSWORD = "devpi-root-pw"
COMMAND_TIMEOUT_SECONDS = 120
DEVPI_START_SECONDS = 60
SPHINX_STAND_IN = """#!/bin/sh
# sphinx-build -E SOURCE BUILD, as devpi upload --with-docs calls it
mkdir -p "$3" && printf '<!DOCTYPE html><title>Hello docs</title><p>hello-devpi docs\\n' \\
  > "$3/index.html"
"""

StartServer = Callable[..., LiveServer]


class Devpi:
    """devpi-client with its own client directory and HOME, never interactive."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.bin_dir = home / "bin"
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        sphinx = self.bin_dir / "sphinx-build"
        sphinx.write_text(SPHINX_STAND_IN)
        sphinx.chmod(0o755)

    def env(self) -> dict[str, str]:
        env = clean_env(HOME=str(self.home), PATH=f"{self.bin_dir}:{DEVPI_BIN}:/usr/bin:/bin")
        for name in ("VIRTUAL_ENV", "DEVPI_INDEX", "DEVPI_USER", "PYTHONPATH"):
            env.pop(name, None)
        return env

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """`devpi ARGS` (with --clientdir); the caller checks the outcome."""
        return subprocess.run(
            [str(DEVPI_BIN / "devpi"), "--clientdir", str(self.home / "client"), *args],
            cwd=cwd or self.home,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )

    def __call__(self, *args: str, cwd: Path | None = None) -> str:
        """`devpi ARGS`, which must succeed; its output."""
        result = self.run(*args, cwd=cwd)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"devpi {' '.join(args)}:\n{output}"
        return output


def write_project(directory: Path, name: str, version: str) -> Path:
    """A source tree that `python -m build --no-isolation` builds offline, with Sphinx docs."""
    package = name.replace("-", "_")
    (directory / package).mkdir(parents=True)
    (directory / package / "__init__.py").write_text(f'__version__ = "{version}"\n')
    (directory / "PKG-INFO").write_text(core_metadata(name, version))
    (directory / "backend.py").write_text(BACKEND_PY)
    (directory / "pyproject.toml").write_text(PYPROJECT_TOML)
    (directory / "doc").mkdir()
    (directory / "doc" / "conf.py").write_text("project = 'hello-devpi'\n")
    return directory


def fetch(url: str) -> tuple[int, str]:
    """GET a URL: (status, body)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def installed(target: Path, index_url: str, *requirements: str) -> None:
    """pip-install requirements into `target` from `index_url` only; fail with pip's output."""
    result = run_pip("install", "--target", str(target), "--index-url", index_url, *requirements)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the devpi workflow against pyshelf -------------------------------------------------------


def test_devpi_client_workflow_against_pyshelf(
    server_factory: StartServer, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """use, login, user -c, index -c, upload --with-docs, list, pip, refresh, index, remove."""
    fake_upstream.add_file("upstream-pkg", *make_wheel("upstream-pkg", "1.0"))
    server = server_factory(MIRROR_URL=fake_upstream.url)
    devpi = Devpi(tmp_path / "home")

    assert "using server: " + server.url + "/" in devpi("use", server.url)
    assert "logged in 'admin'" in devpi("login", "admin", "--password", ADMIN_PASSWORD)
    devpi("user", "-c", "alice", f"password={ALICE_PASSWORD}", "email=alice@example.org")
    assert "logged in 'alice'" in devpi("login", "alice", "--password", ALICE_PASSWORD)
    created = devpi("index", "-c", "dev", "bases=root/pypi")
    assert "bases=root/pypi" in created
    assert "volatile=False" in created
    assert "current devpi index: " + server.url + "/alice/dev" in devpi("use", "alice/dev")
    assert "alice/dev       bases=root/pypi" in devpi("use", "-l")

    project = write_project(tmp_path / "hello", "hello-devpi", "1.0")
    uploaded = devpi("upload", "--no-vcs", "--wheel", "--no-isolation", "--with-docs", cwd=project)
    assert "file_upload of hello_devpi-1.0-py3-none-any.whl" in uploaded
    assert "doc_upload of hello-devpi-1.0.doc.zip" in uploaded
    sdist = tmp_path / "dist" / make_sdist("hello-devpi", "1.1")[0]
    sdist.parent.mkdir()
    sdist.write_bytes(make_sdist("hello-devpi", "1.1")[1])
    assert "file_upload of hello_devpi-1.1.tar.gz" in devpi("upload", str(sdist))

    assert devpi("list").split() == ["hello-devpi"]
    listed = devpi("list", "hello-devpi")
    assert f"{server.url}/alice/dev/+f/" in listed
    assert "hello_devpi-1.0-py3-none-any.whl" in listed
    assert "hello_devpi-1.1.tar.gz" in listed
    status, page = fetch(f"{server.url}/alice/dev/hello-devpi/1.0/+doc/")
    assert (status, "hello-devpi docs" in page) == (200, True)
    installed(tmp_path / "site", f"{server.url}/alice/dev/+simple/", "hello-devpi==1.0")
    installed(tmp_path / "site2", f"{server.url}/alice/dev/+simple/", "upstream-pkg")

    # A new upstream release shows only after a refresh (the page is cached for 30 minutes).
    fake_upstream.add_file("upstream-pkg", *make_wheel("upstream-pkg", "2.0"))
    assert "upstream_pkg-2.0" not in devpi("list", "upstream-pkg")
    assert "Refreshed upstream-pkg" in devpi("refresh", "upstream-pkg")
    assert "upstream_pkg-2.0-py3-none-any.whl" in devpi("list", "upstream-pkg")

    refused = devpi.run("remove", "-y", "hello-devpi==1.0")
    assert refused.returncode == 1
    assert "403 Index alice/dev is not volatile" in refused.stdout + refused.stderr
    assert "volatile=True" in devpi("index", "alice/dev", "volatile=True", "acl_upload+=admin")
    assert "acl_upload=alice,admin" in devpi("index", "alice/dev")
    assert "deleting release 1.0 of hello-devpi" in devpi("remove", "-y", "hello-devpi==1.0")
    listed = devpi("list", "hello-devpi")
    assert "hello_devpi-1.1.tar.gz" in listed
    assert "hello_devpi-1.0" not in listed
    assert fetch(f"{server.url}/alice/dev/hello-devpi/1.0/+doc/")[0] == 404

    config = json.loads(devpi("getjson", "/alice/dev"))
    assert config["type"] == "indexconfig"
    assert config["result"]["volatile"] is True
    assert config["result"]["projects"] == ["hello-devpi"]

    devpi("logoff")
    anonymous = devpi.run("upload", str(sdist))
    assert anonymous.returncode == 1
    assert "401" in anonymous.stdout + anonymous.stderr


def test_devpi_client_sets_the_supply_chain_guard(
    server_factory: StartServer, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """`devpi index NAME key=value` sets the cooldown, an exemption and a block rule."""
    server = server_factory(MIRROR_URL=fake_upstream.url)
    devpi = Devpi(tmp_path / "home")
    devpi("use", server.url)
    devpi("login", "admin", "--password", ADMIN_PASSWORD)

    shown = devpi("index", "root/pypi", "mirror_min_age=3d", "mirror_min_age_exempt+=urgent==1.2")
    assert "mirror_min_age=3d" in shown
    assert "mirror_min_age_exempt=urgent==1.2" in shown
    shown = devpi("index", "admin/dev", "blocked+=evil>=2,<2.1: compromised")
    assert "blocked=evil>=2,<2.1: compromised" in shown
    config = json.loads(devpi("getjson", "/admin/dev"))["result"]
    assert config["blocked"] == ["evil>=2,<2.1: compromised"]
    assert config["guard_log"][0].startswith("blocked evil>=2,<2.1 by admin at ")


# --- a devpi-server export imported ---------------------------------------------------------


@pytest.fixture(scope="module")
def devpi_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real devpi-server (mirror at a FakeUpstream) filled by devpi-client, then exported."""
    base = tmp_path_factory.mktemp("devpi-server")
    serverdir = base / "server"
    devpi = Devpi(base / "home")
    env = devpi.env()
    init = subprocess.run(
        [
            str(DEVPI_BIN / "devpi-init"),
            "--serverdir",
            str(serverdir),
            "--no-root-pypi",
            "--root-passwd",
            DEVPI_ROOT_PASSWORD,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    port = free_port()
    log = (base / "devpi-server.log").open("wb")
    process = subprocess.Popen(
        [
            str(DEVPI_BIN / "devpi-server"),
            "--serverdir",
            str(serverdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + DEVPI_START_SECONDS
        while fetch_status(url + "/+api") != 200:
            assert process.poll() is None, (base / "devpi-server.log").read_text()
            assert time.monotonic() < deadline, "devpi-server did not start"
            time.sleep(0.2)
        with FakeUpstream() as upstream:
            upstream.add_file("upstream-pkg", *make_wheel("upstream-pkg", "1.0"))
            fill_devpi_server(devpi, url, upstream, base)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    export = base / "export"
    result = subprocess.run(
        [str(DEVPI_BIN / "devpi-export"), "--serverdir", str(serverdir), str(export)],
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return export


def fetch_status(url: str) -> int:
    """The status of a GET, 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def fill_devpi_server(devpi: Devpi, url: str, upstream: FakeUpstream, base: Path) -> None:
    """root/pypi mirrors the fake; alice/dev holds hello-devpi (wheel, docs) and other-pkg;
    root/prod builds on alice/dev."""
    devpi("use", url)
    devpi("login", "root", "--password", DEVPI_ROOT_PASSWORD)
    devpi("index", "-c", "root/pypi", "type=mirror", f"mirror_url={upstream.url}")
    devpi("user", "-c", "alice", f"password={ALICE_PASSWORD}", "email=alice@example.org")
    devpi("index", "-c", "root/prod", "bases=root/pypi")
    devpi("login", "alice", "--password", ALICE_PASSWORD)
    devpi("index", "-c", "alice/dev", "bases=root/pypi", "volatile=False")
    devpi("use", "alice/dev")
    dist = base / "dist"
    dist.mkdir()
    for filename, data in (make_wheel("hello-devpi", "1.0"), make_sdist("other-pkg", "2.0")):
        (dist / filename).write_bytes(data)
    with zipfile.ZipFile(dist / "hello-devpi-1.0.doc.zip", "w") as archive:  # NAME-VER.doc.zip
        archive.writestr("index.html", "<!DOCTYPE html><title>Hello docs</title>")
    devpi("upload", "--from-dir", str(dist))
    devpi("login", "root", "--password", DEVPI_ROOT_PASSWORD)
    devpi("index", "root/prod", "bases=alice/dev")
    # devpi-server reads this project through its mirror: root/pypi is the fake upstream.
    assert "upstream_pkg-1.0" in devpi("list", "--index", "root/pypi", "upstream-pkg")


def test_devpi_export_imports_into_pyshelf_and_installs(
    devpi_export: Path, server_factory: StartServer, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """devpi-export DIR on the old server, import-devpi DIR on the new one, then pip and devpi."""
    data_dir = tmp_path / "data"

    # Into a new data dir the import is the first start: it takes the server's environment.
    result = cli(data_dir, "import-devpi", str(devpi_export), MIRROR_URL=fake_upstream.url)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "users: 2 (alice, root)" in result.stdout
    assert "indexes: 3" in result.stdout
    assert "release files: 2" in result.stdout
    assert "documentation sets: 1" in result.stdout
    server = server_factory(data_dir=data_dir, MIRROR_URL=fake_upstream.url)
    fake_upstream.add_file("upstream-pkg", *make_wheel("upstream-pkg", "1.0"))
    installed(tmp_path / "site", f"{server.url}/root/prod/+simple/", "hello-devpi", "other-pkg")
    installed(tmp_path / "site2", f"{server.url}/alice/dev/+simple/", "upstream-pkg")
    status, page = fetch(f"{server.url}/alice/dev/hello-devpi/1.0/+doc/")
    assert (status, "Hello docs" in page) == (200, True)

    devpi = Devpi(tmp_path / "home")
    devpi("use", f"{server.url}/alice/dev")
    assert "logged in 'alice'" in devpi("login", "alice", "--password", ALICE_PASSWORD)
    assert "logged in 'root'" in devpi("login", "root", "--password", DEVPI_ROOT_PASSWORD)
    assert devpi("list").split() == ["hello-devpi", "other-pkg"]


def test_import_refuses_a_second_run(devpi_export: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert cli(data_dir, "import-devpi", str(devpi_export)).returncode == 0

    again = cli(data_dir, "import-devpi", str(devpi_export))

    assert again.returncode == 1
    assert "already holds 2 projects and 1 doc sets" in again.stderr


# --- devpi push: staging to production --------------------------------------------------------


def test_devpi_push_promotes_a_release_from_staging_to_production(
    server_factory: StartServer, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """push NAME==VER alice/prod: files and docs land in prod (pip installs them, the upstream's
    project of that name is hidden from then on); again: a no-op; other bytes: 409; a
    stranger, or a push to another server: refused."""
    # The upstream has a higher hello-devpi: prod must never hand it out once it holds the name.
    fake_upstream.add_file("hello-devpi", *make_wheel("hello-devpi", "9.9", summary="upstream's"))
    server = server_factory(MIRROR_URL=fake_upstream.url)
    devpi = Devpi(tmp_path / "home")
    devpi("use", server.url)
    devpi("login", "admin", "--password", ADMIN_PASSWORD)
    devpi("user", "-c", "alice", f"password={ALICE_PASSWORD}")
    devpi("user", "-c", "bob", "password=bob-password-1")
    devpi("login", "alice", "--password", ALICE_PASSWORD)
    devpi("index", "-c", "dev", "bases=root/pypi")
    devpi("index", "-c", "prod", "bases=root/pypi")  # volatile=False: releases stay
    devpi("index", "-c", "other", "bases=root/pypi")
    devpi("use", "alice/dev")
    project = write_project(tmp_path / "hello", "hello-devpi", "1.0")
    devpi("upload", "--no-vcs", "--wheel", "--no-isolation", "--with-docs", cwd=project)

    pushed = devpi("push", "hello-devpi==1.0", "alice/prod")

    assert "store_releasefile alice/prod/+f/" in pushed
    assert "hello_devpi-1.0-py3-none-any.whl" in pushed
    assert "store_doczip hello-devpi 1.0 -> alice/prod" in pushed
    site = tmp_path / "site"
    installed(site, f"{server.url}/alice/prod/+simple/", "hello-devpi")
    assert [p.name for p in site.glob("*.dist-info")] == ["hello_devpi-1.0.dist-info"]
    status, page = fetch(f"{server.url}/alice/prod/hello-devpi/1.0/+doc/")
    assert (status, "hello-devpi docs" in page) == (200, True)
    page_request = urllib.request.Request(
        f"{server.url}/alice/prod/hello-devpi/1.0/", headers={"Accept": "text/html"}
    )
    with urllib.request.urlopen(page_request, timeout=30) as response:
        page = response.read().decode()
    assert 'copied from <a href="/alice/dev/hello-devpi/1.0/">alice/dev</a>' in page
    assert "by alice: <span" in page
    assert "promote hello-devpi 1.0 from alice/dev to alice/prod by alice" in server.log()

    again = devpi("push", "hello-devpi==1.0", "alice/prod")
    assert "unchanged_releasefile alice/prod/+f/" in again
    assert "store_releasefile" not in again

    # Other bytes under the same filename, from another stage: prod keeps what it has.
    other = tmp_path / "other-dist"
    other.mkdir()
    filename, data = make_wheel("hello-devpi", "1.0", summary="other bytes")
    (other / filename).write_bytes(data)
    devpi("upload", "--index", "alice/other", str(other / filename))
    conflict = devpi.run("push", "--index", "alice/other", "hello-devpi==1.0", "alice/prod")
    output = conflict.stdout + conflict.stderr
    assert conflict.returncode == 1, output
    assert "409 File already exists on alice/prod ('hello_devpi-1.0-py3-none-any.whl'" in output
    assert "promote a new version instead" in output

    (devpi.home / ".pypirc").write_text(
        "[distutils]\nindex-servers = elsewhere\n\n[elsewhere]\n"
        "repository = http://127.0.0.1:9/legacy/\nusername = alice\npassword = secret-pw\n"
    )
    external = devpi.run("push", "hello-devpi==1.0", "pypi:elsewhere")
    output = external.stdout + external.stderr
    assert external.returncode == 1, output
    assert "400 pyshelf does not push to other servers" in output
    assert "twine upload --repository-url" in output
    assert "secret-pw" not in server.log()

    devpi("login", "bob", "--password", "bob-password-1")
    stranger = devpi.run("push", "--index", "alice/dev", "hello-devpi==1.0", "alice/prod")
    output = stranger.stdout + stranger.stderr
    assert stranger.returncode == 1, output
    assert "403 The user 'bob' isn't allowed to upload to index 'alice/prod'" in output
    site = tmp_path / "site2"
    installed(site, f"{server.url}/alice/prod/+simple/", "hello-devpi")
    assert [p.name for p in site.glob("*.dist-info")] == ["hello_devpi-1.0.dist-info"]
    assert fake_upstream.count("/simple/hello-devpi") == 0
