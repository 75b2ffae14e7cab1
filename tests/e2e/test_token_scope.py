"""Tokens limited to one index, attacked on a live server: they read (and refresh) their
index and its bases, upload (files and docs) and yank on their index, and nothing else: no
settings, ACLs, users, tokens or deletions anywhere, and what they read never grows (issue #15
item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from tests.builders import make_wheel, zip_bytes
from tests.conftest import LiveServer, basic_auth
from tests.e2e.helpers import api, multipart, publish, raw_upload
from tests.web.helpers import CSRF_RE

pytestmark = pytest.mark.e2e

ALICE = ("alice", "alice-password")
WHEEL = make_wheel("scoped-pkg", "1.0")
TMP_WHEEL = make_wheel("tmp-pkg", "1.0")
SCOPE_REASON = "This token is limited to index"


@pytest.fixture(scope="module")
def world(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """alice with alice/public, alice/private (only she reads it) and a volatile alice/tmp, a
    file on each stage, and tokens: alice's for alice/public and alice/tmp, admin's for
    admin/dev."""
    server = live_server
    status, body, _ = api(server, "PUT", "/alice", {"password": ALICE[1]})
    assert status == 201, body
    for name, config in (
        ("public", {"bases": []}),
        ("private", {"bases": [], "acl_read": ["alice"]}),
        ("tmp", {"bases": [], "volatile": True}),
    ):
        status, body, _ = api(server, "PUT", f"/alice/{name}", config, auth=ALICE)
        assert status == 201, body
    dist = tmp_path_factory.mktemp("dist")
    publish(server, "alice/private", dist / "p", WHEEL, user=ALICE[0], password=ALICE[1])
    publish(server, "alice/tmp", dist / "t", TMP_WHEEL, user=ALICE[0], password=ALICE[1])
    tokens = {}
    for who, auth, scope in (
        ("public", ALICE, "alice/public"),
        ("tmp", ALICE, "alice/tmp"),
        ("admin", None, "admin/dev"),
    ):
        kwargs = {"auth": auth} if auth else {}
        status, body, _ = api(
            server, "POST", f"/{auth[0] if auth else 'admin'}/+tokens", {"index": scope}, **kwargs
        )
        assert status == 201, body
        tokens[who] = body["result"]["token"]
    return tokens


def _as(token: str) -> tuple[str, str]:
    return ("__token__", token)


def _form(
    server: LiveServer, path: str, token: str, fields: dict[str, str] | None = None
) -> tuple[int, str]:
    """POST a web form with the token in the Authorization header and a valid CSRF token (of
    an anonymous session: every web form needs one), so only the token's scope decides."""
    with requests.Session() as browser:
        page = browser.get(server.url + "/+login", timeout=30)
        csrf = CSRF_RE.search(page.text).group(1)
        response = browser.post(
            server.url + path,
            data={**(fields or {}), "csrf_token": csrf},
            headers={"Authorization": basic_auth(*_as(token))},
            allow_redirects=False,
            timeout=30,
        )
    return response.status_code, response.reason


# (token, method, path, JSON body): every way to change settings, ACLs, users, tokens,
# delete, or refresh outside its scope, through the JSON API and devpi's routes.
API_ATTACKS = [
    pytest.param("public", "PATCH", "/alice/public", {"bases": ["alice/private"]}, id="bases"),
    pytest.param("public", "PATCH", "/alice/public", ["bases+=alice/private"], id="bases-op"),
    pytest.param(
        "public", "PATCH", "/alice/public", {"acl_upload": ["alice", "mallory"]}, id="acl-upload"
    ),
    pytest.param("public", "PATCH", "/alice/public", {"acl_read": [":ANONYMOUS:"]}, id="acl-read"),
    pytest.param("public", "PATCH", "/alice/public", {"volatile": True}, id="volatile"),
    pytest.param("tmp", "DELETE", "/alice/tmp", None, id="delete-own-index"),
    pytest.param("public", "DELETE", "/alice/tmp", None, id="delete-other-index"),
    pytest.param("public", "PUT", "/alice/new", {"bases": ["alice/private"]}, id="create-index"),
    pytest.param("public", "PATCH", "/alice", {"password": "taken-over-1"}, id="password"),
    pytest.param("public", "POST", "/alice/+tokens", {"description": "wide"}, id="new-token"),
    pytest.param("public", "DELETE", "/alice", None, id="delete-self"),
    pytest.param(
        "admin",
        "PUT",
        "/mallory",
        {"password": "mallory-pw-1", "superuser": True},
        id="create-user",
    ),
    pytest.param("admin", "PATCH", "/alice", {"superuser": True}, id="grant-superuser"),
    pytest.param("admin", "DELETE", "/alice", None, id="delete-user"),
    pytest.param(
        "admin", "PATCH", "/admin/dev", {"acl_upload": ["admin", "mallory"]}, id="admin-acl"
    ),
    pytest.param("tmp", "DELETE", "/alice/tmp/tmp-pkg", None, id="devpi-delete-project"),
    pytest.param("tmp", "DELETE", "/alice/tmp/tmp-pkg/1.0", None, id="devpi-delete-version"),
    pytest.param("public", "POST", "/alice/tmp/+simple/tmp-pkg/refresh", None, id="refresh"),
]


@pytest.mark.parametrize(("who", "method", "path", "body"), API_ATTACKS)
def test_a_scoped_token_changes_nothing_through_the_api(
    live_server: LiveServer, world: dict[str, str], who: str, method: str, path: str, body: object
) -> None:
    """Each attempt is a 403 that names the token's limit, and nothing changed."""
    status, answer, reason = api(live_server, method, path, body, auth=_as(world[who]))  # type: ignore[arg-type]

    assert status == 403, answer
    assert SCOPE_REASON in reason
    _status, config, _ = api(live_server, "GET", "/alice/public", auth=ALICE)
    assert config["result"]["bases"] == []
    assert config["result"]["acl_upload"] == ["alice"]
    assert api(live_server, "GET", "/alice/tmp", auth=ALICE)[0] == 200
    assert api(live_server, "GET", "/mallory")[0] == 404
    assert api(live_server, "GET", "/alice/tmp/+simple/tmp-pkg/")[0] == 200


@pytest.mark.parametrize(
    ("who", "path", "fields"),
    [
        pytest.param("public", "/alice/public/+edit", {"bases": "alice/private"}, id="edit"),
        pytest.param("tmp", "/alice/tmp/+delete", {}, id="delete-index"),
        pytest.param("tmp", "/alice/tmp/tmp-pkg/1.0/+delete", {}, id="delete-release"),
        pytest.param("public", "/alice/tmp/tmp-pkg/+refresh", {}, id="refresh"),
        pytest.param("public", "/+indexes/new", {"name": "x", "bases": "alice/private"}, id="new"),
        pytest.param(
            "admin", "/+admin/users", {"username": "eve", "password": "eve-pw-123"}, id="user"
        ),
    ],
)
def test_a_scoped_token_changes_nothing_through_web_forms(
    live_server: LiveServer, world: dict[str, str], who: str, path: str, fields: dict[str, str]
) -> None:
    """The web forms take an Authorization header too (with their CSRF token): refused."""
    status, reason = _form(live_server, path, world[who], fields)

    assert status == 403
    assert SCOPE_REASON in reason
    assert api(live_server, "GET", "/alice/tmp/+simple/tmp-pkg/")[0] == 200
    assert api(live_server, "GET", "/eve")[0] == 404


def test_what_a_scoped_token_reads_never_grows(
    live_server: LiveServer, world: dict[str, str]
) -> None:
    """Even when the owner adds alice/private to alice/public's bases, the token made for
    alice/public before does not read alice/private (a new token does)."""
    token = _as(world["public"])
    assert api(live_server, "GET", "/alice/private/+simple/", auth=token)[0] == 403
    status, body, _ = api(
        live_server, "PATCH", "/alice/public", {"bases": ["alice/private"]}, auth=ALICE
    )
    assert status == 200, body
    try:
        status, _body, reason = api(live_server, "GET", "/alice/private/+simple/", auth=token)
        assert (status, SCOPE_REASON in reason) == (403, True)
        status, _h, page, _r = live_server.get(
            "/alice/public/+simple/scoped-pkg/",
            headers={"Authorization": basic_auth(*token), "Accept": "application/json"},
        )
        assert status == 404 or WHEEL[0].encode() not in page
        status, body, _ = api(
            live_server, "POST", "/alice/+tokens", {"index": "alice/public"}, auth=ALICE
        )
        fresh = _as(body["result"]["token"])
        assert api(live_server, "GET", "/alice/private/+simple/", auth=fresh)[0] == 200
    finally:
        api(live_server, "PATCH", "/alice/public", {"bases": []}, auth=ALICE)


def test_a_scoped_token_uploads_docs_and_yanks_on_its_index(
    live_server: LiveServer, world: dict[str, str], tmp_path: Path
) -> None:
    """What it is for: twine upload, devpi's doc upload and a yank (API and web form)."""
    token = world["public"]
    wheel = make_wheel("scoped-pkg", "2.0")
    publish(live_server, "alice/public", tmp_path, wheel, user="__token__", password=token)
    docs = zip_bytes({"index.html": b"<h1>docs</h1>"})
    body, content_type = multipart(
        [(":action", "doc_upload"), ("name", "scoped-pkg"), ("version", "2.0")], "d.zip", docs
    )
    status, _h, answer, reason = live_server.get(
        "/alice/public/",
        headers={"Authorization": basic_auth(*_as(token)), "Content-Type": content_type},
        method="POST",
        data=body,
    )
    assert (status, reason) == (200, "OK"), answer

    status, answer, reason = api(
        live_server,
        "PATCH",
        "/alice/public/scoped-pkg/2.0",
        {"yanked": True, "reason": "broken"},
        auth=_as(token),
    )
    assert (status, reason) == (200, "OK"), answer
    status, reason = _form(
        live_server, "/alice/public/scoped-pkg/2.0/+yank", token, {"action": "unyank"}
    )
    assert status == 303, reason
    page = json.loads(
        live_server.get(
            "/alice/public/+simple/scoped-pkg/",
            headers={"Accept": "application/vnd.pypi.simple.v1+json"},
        )[2]
    )
    assert [f.get("yanked", False) for f in page["files"]] == [False]


def test_a_scoped_token_uploads_to_no_other_index(
    live_server: LiveServer, world: dict[str, str]
) -> None:
    """alice may upload to alice/tmp, but not with her token for alice/public."""
    status, _h, _b, reason = raw_upload(
        live_server, "alice/tmp", *make_wheel("tmp-pkg", "3.0"), auth=_as(world["public"])
    )

    assert status == 403
    assert SCOPE_REASON in reason
