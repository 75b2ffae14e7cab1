"""PEP 792 project status on a live server (issue #18 section 3): who may set it (attacked
anonymously, by another account and with a token limited to the index), the markers in both
page formats, quarantine hiding every file from every surface, and a mirror passing its
upstream's status through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.builders import make_wheel
from tests.conftest import ADMIN_PASSWORD, LiveServer, basic_auth
from tests.e2e.helpers import (
    MIME_HTML,
    MIME_JSON,
    anchors,
    api,
    publish,
    raw_upload,
    simple_json,
)
from tests.web.helpers import CSRF_RE

pytestmark = pytest.mark.e2e

ALICE = ("alice", "alice-password")  # owns alice/dev
UPLOADER = ("upl", "upl-password")  # in alice/dev's acl_upload
BOB = ("bob", "bob-password")  # a stranger
PROJECT = "quar-pkg"
WHEEL = make_wheel(PROJECT, "1.0", requires_dist=())
REASON = "malware found in 1.0"
HTML = {"Accept": "text/html"}


def _browser(server: LiveServer, who: tuple[str, str]) -> requests.Session:
    """A logged-in browser session (the login form with its CSRF token)."""
    browser = requests.Session()
    browser.trust_env = False  # no proxy for loopback
    page = browser.get(server.url + "/+login", headers=HTML, timeout=30)
    token = CSRF_RE.search(page.text).group(1)
    answer = browser.post(
        server.url + "/+login",
        data={"username": who[0], "password": who[1], "csrf_token": token},
        headers=HTML,
        allow_redirects=False,
        timeout=30,
    )
    assert answer.status_code in (302, 303), answer.text
    return browser


def _web_set(server: LiveServer, browser: requests.Session, status: str) -> requests.Response:
    """Post the project page's status form as a browser would."""
    page = browser.get(f"{server.url}/alice/dev/{PROJECT}/", headers=HTML, timeout=30)
    match = CSRF_RE.search(page.text)
    token = match.group(1) if match else ""
    return browser.post(
        f"{server.url}/alice/dev/{PROJECT}/+status",
        data={"status": status, "reason": "set from the web", "csrf_token": token},
        headers=HTML,
        allow_redirects=False,
        timeout=30,
    )


@pytest.fixture(scope="module")
def world(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """alice/dev (uploader `upl`) with quar-pkg 1.0, alice/derived building on it, bob, and a
    token of alice's limited to alice/dev; returns the file URL and the token."""
    server = live_server
    for user, password in (ALICE, UPLOADER, BOB):
        status, body, _ = api(server, "PUT", f"/{user}", {"password": password})
        assert status == 201, body
    config = {"bases": [], "acl_upload": ["alice", "upl"]}
    assert api(server, "PUT", "/alice/dev", config, auth=ALICE)[0] == 201
    assert api(server, "PUT", "/alice/derived", {"bases": ["alice/dev"]}, auth=ALICE)[0] == 201
    publish(
        server,
        "alice/dev",
        tmp_path_factory.mktemp("dist"),
        WHEEL,
        user=ALICE[0],
        password=ALICE[1],
    )
    status, body, _ = api(server, "POST", "/alice/+tokens", {"index": "alice/dev"}, auth=ALICE)
    assert status == 201, body
    entry = simple_json(server, "alice/dev", PROJECT)["files"][0]
    return {"file": entry["url"].removeprefix(server.url), "token": body["result"]["token"]}


def _status(server: LiveServer) -> dict[str, Any]:
    status, body, _ = api(server, "GET", f"/alice/dev/{PROJECT}/+status", auth=None)
    assert status == 200, body
    return body["result"]


def _set(server: LiveServer, status: str, auth: tuple[str, str] | None = ALICE) -> Any:
    body = {"status": status, "reason": REASON}
    return api(server, "PUT", f"/alice/dev/{PROJECT}/+status", body, auth=auth)


def test_anonymous_strangers_and_scoped_tokens_cannot_set_status(
    live_server: LiveServer, world: dict[str, Any]
) -> None:
    """PUT .../+status and the web form refuse everyone but the owner, uploaders and
    superusers; nothing changes and the file is still served."""
    server = live_server

    anonymous = _set(server, "quarantined", auth=None)
    stranger = _set(server, "quarantined", auth=BOB)
    scoped = _set(server, "quarantined", auth=("__token__", world["token"]))
    with _browser(server, BOB) as browser:
        web = _web_set(server, browser, "quarantined")

    assert anonymous[0] == 401
    assert stranger[0] == 403
    assert stranger[2] == "The user 'bob' may not set project status on alice/dev."
    assert scoped[0] == 403
    assert scoped[2].startswith("This token is limited to index alice/dev")
    assert web.status_code == 403
    assert _status(server)["status"] == "active"
    assert len(simple_json(server, "alice/dev", PROJECT)["files"]) == 1
    assert server.get(world["file"])[0] == 200


def test_bad_status_values_are_refused_with_a_reason(
    live_server: LiveServer, world: dict[str, Any]
) -> None:
    """An unknown status is a 400 naming the four PEP 792 values; nothing is stored."""
    status, _body, reason = _set(live_server, "evil")

    assert status == 400
    assert reason == (
        "Invalid project status: status must be one of active, archived, quarantined, "
        "deprecated (PEP 792), not 'evil'."
    )
    assert _status(live_server)["status"] == "active"


def test_quarantine_hides_every_file_from_every_surface(
    live_server: LiveServer, world: dict[str, Any]
) -> None:
    """Quarantined: simple JSON and HTML list no files and carry the PEP 792 markers, the
    file and .metadata URLs answer 404 with the reason (directly and for a stage building on
    it), the JSON API and web pages show no files to others, uploads are refused, and the owner
    still sees the files in the web UI; /+metrics and the request log count the decisions."""
    server = live_server
    status, body, _ = _set(server, "quarantined")
    assert status == 200, body
    assert body["result"]["set_by"] == "alice"
    try:
        page = simple_json(server, "alice/dev", PROJECT)
        assert page["files"] == []
        assert page["versions"] == []
        assert page["project-status"] == {"status": "quarantined", "reason": REASON}
        assert page["meta"]["api-version"] == "1.4"
        derived = simple_json(server, "alice/derived", PROJECT)
        assert derived["files"] == []
        assert derived["project-status"]["status"] == "quarantined"

        for index in ("alice/dev", "alice/derived"):
            _, _, html_page, _ = server.get(
                f"/{index}/+simple/{PROJECT}/", headers={"Accept": MIME_HTML}
            )
            assert anchors(html_page) == []
            assert b'<meta name="pypi:project-status" content="quarantined">' in html_page
            reason_tag = f'<meta name="pypi:project-status-reason" content="{REASON}">'
            assert reason_tag.encode() in html_page

        expected = f"Project {PROJECT} is quarantined on alice/dev (PEP 792): {REASON}"
        for path in (world["file"], world["file"] + ".metadata"):
            for method in ("GET", "HEAD"):
                code, _, _, reason = server.get(path, method=method)
                assert (code, reason) == (404, expected), path
            owner = server.get(path, headers={"Authorization": basic_auth(*ALICE)})
            assert owner[0] == 404  # PEP 792: not offered for download, to anyone

        anonymous_api = api(server, "GET", f"/alice/dev/{PROJECT}/", auth=None)
        assert anonymous_api[0] == 200
        assert anonymous_api[1]["result"] == {}
        stranger_api = api(server, "GET", f"/alice/dev/{PROJECT}/", auth=BOB)
        assert stranger_api[1]["result"] == {}
        owner_api = api(server, "GET", f"/alice/dev/{PROJECT}/", auth=ALICE)
        assert list(owner_api[1]["result"]) == ["1.0"]

        filename = WHEEL[0]
        anonymous_web = server.get(f"/alice/dev/{PROJECT}/", headers=HTML)[2].decode()
        assert "quarantined" in anonymous_web
        assert filename not in anonymous_web
        assert filename not in server.get(f"/alice/derived/{PROJECT}/", headers=HTML)[2].decode()
        with _browser(server, ALICE) as browser:
            owner_web = browser.get(f"{server.url}/alice/dev/{PROJECT}/", headers=HTML).text
        assert filename in owner_web
        assert 'id="status-form"' in owner_web

        again = raw_upload(server, "alice/dev", *make_wheel(PROJECT, "1.1"), auth=ALICE)
        assert again[0] == 400
        assert again[3].startswith(f"Project {PROJECT} is quarantined on alice/dev")

        admin = {"Authorization": basic_auth("admin", ADMIN_PASSWORD)}
        metrics = server.get("/+metrics", headers=admin)[2].decode()
        assert 'pyshelf_guard_decisions_total{kind="quarantined",where="file"}' in metrics
        assert "guard=quarantined" in server.log()
    finally:
        assert _set(server, "active")[0] == 200
    assert server.get(world["file"])[0] == 200
    assert len(simple_json(server, "alice/dev", PROJECT)["files"]) == 1


def test_uploaders_set_status_in_the_web_ui_and_it_shows_on_pages(
    live_server: LiveServer, world: dict[str, Any]
) -> None:
    """A user in acl_upload deprecates the project with the web form; both page formats carry
    the marker and files stay served (deprecated is active for the index, PEP 792)."""
    server = live_server
    with _browser(server, UPLOADER) as browser:
        answer = _web_set(server, browser, "deprecated")
    try:
        assert answer.status_code == 303
        result = _status(server)
        assert (result["status"], result["set_by"]) == ("deprecated", "upl")
        page = simple_json(server, "alice/dev", PROJECT)
        assert page["project-status"] == {"status": "deprecated", "reason": "set from the web"}
        assert len(page["files"]) == 1
        html_page = server.get(f"/alice/dev/+simple/{PROJECT}/")[2]
        assert b'<meta name="pypi:project-status" content="deprecated">' in html_page
        assert server.get(world["file"])[0] == 200
    finally:
        assert _set(server, "active")[0] == 200


def test_a_mirror_passes_the_upstream_status_through(
    server_factory: Any, fake_upstream: Any, tmp_path: Path
) -> None:
    """The upstream's PEP 792 markers (JSON and HTML upstreams) appear in both formats of the
    mirror's pages; an upstream quarantine hides the files the mirror had cached."""
    filename, data = make_wheel("up-pkg", "1.0")
    fake_upstream.add_file("up-pkg", filename, data)
    fake_upstream.set_status("up-pkg", "archived", "moved to new-pkg")
    server = server_factory(MIRROR_URL=fake_upstream.url, UPSTREAM_RETRIES="0")
    admin = {"Authorization": basic_auth("admin", ADMIN_PASSWORD)}

    page = simple_json(server, "root/pypi", "up-pkg")
    assert page["project-status"] == {"status": "archived", "reason": "moved to new-pkg"}
    file_path = page["files"][0]["url"].removeprefix(server.url)
    assert server.get(file_path)[0] == 200  # cached now

    fake_upstream.html_only = True
    fake_upstream.set_status("up-pkg", "quarantined", "malware")
    refresh = "/root/pypi/+simple/up-pkg/refresh"
    assert server.get(refresh, headers=admin, method="POST", data=b"")[0] == 302
    html_page = server.get("/root/pypi/+simple/up-pkg/", headers={"Accept": MIME_HTML})[2]
    assert b'<meta name="pypi:project-status" content="quarantined">' in html_page
    assert b'<meta name="pypi:project-status-reason" content="malware">' in html_page
    assert anchors(html_page) == []
    code, _, _, reason = server.get(file_path)
    assert (code, reason) == (404, "Project up-pkg is quarantined on root/pypi (PEP 792): malware")
    as_json = json.loads(server.get("/root/pypi/+simple/up-pkg/", headers={"Accept": MIME_JSON})[2])
    assert as_json["files"] == []
    assert as_json["project-status"]["status"] == "quarantined"


def test_a_quarantined_release_cannot_be_promoted_elsewhere(
    live_server: LiveServer, world: dict[str, Any]
) -> None:
    """Promoting the quarantined release to another stage (where it would be served) is
    refused with the reason; the target gets nothing."""
    server = live_server
    assert api(server, "PUT", "/alice/other", {"bases": []}, auth=ALICE)[0] == 201
    assert _set(server, "quarantined")[0] == 200
    try:
        body = {"name": PROJECT, "version": "1.0", "target": "alice/other"}
        status, _body, reason = api(server, "POST", "/alice/dev/+promote", body, auth=ALICE)
    finally:
        assert _set(server, "active")[0] == 200

    assert status == 400
    assert reason == (
        f"{PROJECT} is quarantined on alice/dev (PEP 792): set it back to active there before "
        "promoting it."
    )
    assert server.get(f"/alice/other/+simple/{PROJECT}/")[0] == 404
