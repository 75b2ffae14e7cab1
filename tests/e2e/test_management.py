"""Users and indexes through the JSON API and `entrypoint.sh`, on a running server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.builders import make_wheel, write_dist
from tests.conftest import LiveServer, run_pip
from tests.e2e.helpers import api, cli, hosted_files, publish, sha256, twine_upload

pytestmark = pytest.mark.e2e

DANA = ("dana", "dana-password-1")


@pytest.fixture(scope="module")
def server(live_server: LiveServer) -> LiveServer:
    """The module's server, with dana: an ordinary user created through the JSON API."""
    status, body, reason = api(live_server, "PUT", "/dana", {"password": DANA[1]})
    assert (status, reason) == (201, "CREATED"), body
    return live_server


def test_superuser_creates_a_user_and_an_ordinary_user_may_not(server: LiveServer) -> None:
    """PUT /USER is for superusers: admin gets 201, dana gets 403, and no user appears."""
    status, body, reason = api(server, "PUT", "/erin", {"password": "erin-password-1"})
    assert (status, reason) == (201, "CREATED"), body
    assert body == {
        "type": "userconfig",
        "result": {"username": "erin", "email": None, "is_superuser": False, "indexes": {}},
    }

    status, body, reason = api(server, "PUT", "/frank", {"password": "frank-pass-1"}, auth=DANA)
    assert (status, reason) == (403, "Only superusers may create users.")
    status, _body, reason = api(server, "GET", "/frank", auth=None)
    assert (status, reason) == (404, "User frank does not exist.")


def test_creating_an_existing_user_is_a_409_that_keeps_the_old_password(
    server: LiveServer,
) -> None:
    """A second PUT of the same name changes nothing: dana's password still works."""
    status, _body, reason = api(server, "PUT", "/dana", {"password": "another-password"})

    assert (status, reason) == (409, "User dana already exists.")
    status, body, reason = api(server, "PATCH", "/dana", {}, auth=DANA)
    assert (status, reason) == (200, "OK"), body


def test_index_is_created_modified_and_deleted_through_the_json_api(server: LiveServer) -> None:
    """PUT, PATCH, GET and DELETE /admin/NAME, with the devpi-style envelope."""
    status, body, reason = api(server, "PUT", "/admin/lifecycle", {"bases": ["admin/dev"]})
    assert (status, reason) == (201, "CREATED"), body
    assert body["result"]["bases"] == ["admin/dev"]
    assert body["result"]["acl_upload"] == ["admin"]

    status, body, reason = api(
        server, "PATCH", "/admin/lifecycle", {"title": "Lifecycle", "acl_upload": ["admin", "dana"]}
    )
    assert (status, reason) == (200, "OK"), body
    status, body, _reason = api(server, "GET", "/admin/lifecycle", auth=None)
    assert status == 200
    assert body["result"]["title"] == "Lifecycle"
    assert body["result"]["acl_upload"] == ["admin", "dana"]
    assert body["result"]["bases"] == ["admin/dev"]

    status, body, reason = api(server, "PUT", "/admin/lifecycle", {})
    assert (status, reason) == (
        409,
        "Cannot create admin/lifecycle: index admin/lifecycle already exists.",
    )

    status, body, reason = api(server, "DELETE", "/admin/lifecycle")
    assert (status, reason) == (200, "OK"), body
    status, _body, reason = api(server, "GET", "/admin/lifecycle", auth=None)
    assert (status, reason) == (404, "Index admin/lifecycle does not exist.")
    status, _headers, _page, _reason = server.get("/admin/lifecycle/+simple/")
    assert status == 404


def test_ordinary_user_may_not_configure_someone_elses_index(server: LiveServer) -> None:
    """dana cannot change admin/dev (403), and admin/dev keeps its settings."""
    status, _body, reason = api(server, "PATCH", "/admin/dev", {"volatile": True}, auth=DANA)

    assert (status, reason) == (403, "Only admin or a superuser may configure admin/dev.")
    status, body, _reason = api(server, "GET", "/admin/dev", auth=None)
    assert body["result"]["volatile"] is False


@pytest.fixture(scope="module")
def cycle_pair(server: LiveServer) -> LiveServer:
    """admin/cyc-a (no bases) and admin/cyc-b with bases admin/cyc-a."""
    for name, bases in (("cyc-a", []), ("cyc-b", ["admin/cyc-a"])):
        status, body, reason = api(server, "PUT", f"/admin/{name}", {"bases": bases})
        assert (status, reason) == (201, "CREATED"), body
    return server


def test_bases_cycle_is_refused_by_the_json_api(cycle_pair: LiveServer) -> None:
    """PATCH cyc-a bases=[cyc-b] would loop: 400 naming the cycle, nothing changes."""
    status, _body, reason = api(cycle_pair, "PATCH", "/admin/cyc-a", {"bases": ["admin/cyc-b"]})

    assert (status, reason) == (
        400,
        "Cannot change admin/cyc-a: bases would make a cycle: admin/cyc-a reaches itself.",
    )
    assert api(cycle_pair, "GET", "/admin/cyc-a", auth=None)[1]["result"]["bases"] == []


def test_bases_cycle_is_refused_by_the_cli(cycle_pair: LiveServer) -> None:
    """`entrypoint.sh index modify` refuses the same cycle with exit 1 and one line."""
    result = cli(cycle_pair.data_dir, "index", "modify", "admin/cyc-a", "bases=admin/cyc-b")

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "pyshelf: bases would make a cycle: admin/cyc-a reaches itself"
    )
    assert api(cycle_pair, "GET", "/admin/cyc-a", auth=None)[1]["result"]["bases"] == []


def test_self_base_is_a_cycle_too(cycle_pair: LiveServer) -> None:
    """An index cannot be its own base."""
    status, _body, reason = api(cycle_pair, "PATCH", "/admin/cyc-b", {"bases": ["admin/cyc-b"]})

    assert status == 400
    assert "cycle" in reason


def test_user_created_with_the_cli_uploads_to_their_own_new_index(
    server: LiveServer, tmp_path: Path
) -> None:
    """`entrypoint.sh user create` → that user makes carol/dev, twine-uploads, pip installs."""
    result = cli(server.data_dir, "user", "create", "carol", "--password", "carol-password-1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "user carol: create done"
    carol = ("carol", "carol-password-1")

    status, body, reason = api(server, "PUT", "/carol/dev", {"bases": []}, auth=carol)
    assert (status, reason) == (201, "CREATED"), body
    assert body["result"]["acl_upload"] == ["carol"]
    wheel = make_wheel("carols-tool", "0.3")
    publish(server, "carol/dev", tmp_path / "dist", wheel, user=carol[0], password=carol[1])

    assert hosted_files(server, "carol/dev", "carols-tool") == {wheel[0]: sha256(wheel[1])}
    result = run_pip(
        "download",
        "--no-deps",
        "-d",
        str(tmp_path / "pip"),
        "-i",
        f"{server.url}/carol/dev/+simple/",
        "carols-tool",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "pip" / wheel[0]).read_bytes() == wheel[1]

    refused = twine_upload(
        server, "admin/dev", [write_dist(tmp_path, *wheel)], user=carol[0], password=carol[1]
    )
    assert refused.returncode != 0
    assert "403" in refused.stdout + refused.stderr


def test_cli_creates_an_index_the_server_serves_at_once(server: LiveServer) -> None:
    """`entrypoint.sh index create` writes to the live database; the JSON API sees it."""
    result = cli(
        server.data_dir, "index", "create", "admin/from-cli", "bases=admin/dev", "title=CLI"
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["admin/from-cli"]["bases"] == ["admin/dev"]

    status, body, _reason = api(server, "GET", "/admin/from-cli", auth=None)
    assert status == 200
    assert body["result"]["title"] == "CLI"
    assert body["result"]["bases"] == ["admin/dev"]
