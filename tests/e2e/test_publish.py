"""twine publishes to a stage and pip installs from it: passwords, tokens, volatile indexes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders import make_sdist, make_wheel
from tests.conftest import LiveServer, clean_env, run_pip
from tests.e2e.helpers import (
    api,
    cli,
    hosted_files,
    publish,
    sha256,
    twine_upload,
)

pytestmark = pytest.mark.e2e


def _import_versions(target: Path, *modules: str) -> str:
    """Import `modules` from a `pip install --target` directory; their versions, space-separated."""
    code = (
        f"import importlib; print(*(importlib.import_module(m).__version__ for m in {modules!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(PYTHONPATH=str(target)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_twine_uploads_a_wheel_and_an_sdist_that_pip_installs_with_its_dependency(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """The README workflow end to end: twine to /admin/dev/, pip from its +simple/."""
    app_wheel = make_wheel("pub-app", "1.0", requires_dist=["pub-dep>=1.0"])
    app_sdist = make_sdist("pub-app", "1.0", requires_dist=["pub-dep>=1.0"])
    dep_sdist = make_sdist("pub-dep", "1.2")  # sdist only: pip builds it with the in-tree backend
    publish(live_server, "admin/dev", tmp_path / "dist", app_wheel, app_sdist, dep_sdist)

    assert hosted_files(live_server, "admin/dev", "pub-app") == {
        app_wheel[0]: sha256(app_wheel[1]),
        app_sdist[0]: sha256(app_sdist[1]),
    }
    target = tmp_path / "target"
    index_url = f"{live_server.url}/admin/dev/+simple/"
    result = run_pip("install", "--target", str(target), "-i", index_url, "pub-app")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _import_versions(target, "pub_app", "pub_dep") == "1.0 1.2"
    assert (target / "pub_app-1.0.dist-info" / "METADATA").is_file()  # the wheel, not the sdist


def test_twine_uploads_to_the_index_url_without_a_trailing_slash(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """POST /admin/dev (no slash) is accepted, never redirected: twine aborts on 3xx."""
    wheel = make_wheel("slashless", "0.1")
    path = tmp_path / wheel[0]
    path.write_bytes(wheel[1])

    result = twine_upload(live_server, "admin/dev", [path], slash=False)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "RedirectDetected" not in result.stdout + result.stderr
    assert hosted_files(live_server, "admin/dev", "slashless") == {wheel[0]: sha256(wheel[1])}


def _token_from_api(server: LiveServer) -> str:
    status, body, reason = api(server, "POST", "/admin/+tokens", {"description": "e2e"})
    assert (status, reason) == (201, "CREATED"), body
    assert body["result"]["username"] == "__token__"
    return body["result"]["token"]


def _token_from_cli(server: LiveServer) -> str:
    result = cli(server.data_dir, "token", "create", "admin", "--description", "e2e")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert len(lines) == 1, result.stdout  # the secret, and nothing else on stdout
    return lines[0]


@pytest.mark.parametrize(
    ("source", "make_token"),
    [("api", _token_from_api), ("cli", _token_from_cli)],
    ids=["json-api", "entrypoint-cli"],
)
def test_twine_uploads_with_an_api_token_as_the_password_of_token_user(
    live_server: LiveServer, tmp_path: Path, source: str, make_token: object
) -> None:
    """A token from POST /admin/+tokens or `entrypoint.sh token create` works as __token__."""
    token = make_token(live_server)  # type: ignore[operator]
    assert token.startswith("pyshelf-")
    wheel = make_wheel(f"tokened-{source}", "1.0")

    publish(live_server, "admin/dev", tmp_path, wheel, user="__token__", password=token)

    assert hosted_files(live_server, "admin/dev", f"tokened-{source}") == {
        wheel[0]: sha256(wheel[1])
    }


def _create_volatile_with_cli(server: LiveServer) -> None:
    result = cli(server.data_dir, "index", "create", "admin/vol-cli", "volatile=true", "bases=")
    assert result.returncode == 0, result.stderr
    assert '"volatile": true' in result.stdout


def _create_volatile_with_api(server: LiveServer) -> None:
    status, body, reason = api(server, "PUT", "/admin/vol-api", {"volatile": True})
    assert (status, reason) == (201, "CREATED"), body
    assert body["result"]["volatile"] is True
    assert body["result"]["bases"] == []


@pytest.mark.parametrize(
    ("index", "create"),
    [("admin/vol-cli", _create_volatile_with_cli), ("admin/vol-api", _create_volatile_with_api)],
    ids=["entrypoint-cli", "json-api"],
)
def test_volatile_index_replaces_a_file_reuploaded_with_different_bytes(
    live_server: LiveServer, tmp_path: Path, index: str, create: object
) -> None:
    """On a volatile index the new bytes win: new sha256 on the page, and pip gets them."""
    create(live_server)  # type: ignore[operator]
    old = make_wheel("vol-pkg", "1.0", summary="first build")
    new = make_wheel("vol-pkg", "1.0", summary="second build")
    assert old[0] == new[0]
    assert old[1] != new[1]

    publish(live_server, index, tmp_path / "old", old)
    assert hosted_files(live_server, index, "vol-pkg") == {old[0]: sha256(old[1])}
    publish(live_server, index, tmp_path / "new", new)
    assert hosted_files(live_server, index, "vol-pkg") == {new[0]: sha256(new[1])}

    download = tmp_path / "download"
    result = run_pip(
        "download",
        "--no-deps",
        "-d",
        str(download),
        "-i",
        f"{live_server.url}/{index}/+simple/",
        "vol-pkg==1.0",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert sha256((download / new[0]).read_bytes()) == sha256(new[1])
