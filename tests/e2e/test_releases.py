"""Release rules on a live server (issue #16 item 3, app/services/releases.py): deleting an index
through the JSON API, the web form and the CLI leaves the same state; yanking and deleting are
attacked by another account, anonymously and with a token limited to another index, through the
JSON API, the web forms and devpi-client's DELETE."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import requests
from sqlalchemy import func, insert, select

from app.core.config import Settings
from app.data.db import Database
from app.data.models import (
    CachedPage,
    File,
    Index,
    MirrorBlob,
    MirrorHolding,
    Project,
    SearchDocument,
    Token,
    User,
    utcnow,
)
from tests.builders import make_wheel
from tests.conftest import LiveServer, basic_auth, clean_env
from tests.e2e.helpers import ADMIN, MIME_JSON, api, cli, raw_upload, settles_to, simple_json
from tests.web.helpers import CSRF_RE

pytestmark = pytest.mark.e2e

MALLORY = ("mallory", "mallory-password")  # an account with no rights on the index
HTML = {"Accept": "text/html"}
SURFACES = ("api", "web", "cli")


def _database(server: LiveServer) -> Database:
    url = clean_env(DATA_DIR=str(server.data_dir)).get("DATABASE_URL", "")
    return Database(Settings(data_dir=server.data_dir, database_url=url).database_url)


def _count(server: LiveServer, query: Any) -> int:
    database = _database(server)
    try:
        with database.session() as session:
            return int(session.scalar(query) or 0)
    finally:
        database.engine.dispose()


def _browser(server: LiveServer, who: tuple[str, str]) -> requests.Session:
    """A logged-in browser session (the login form with its CSRF token)."""
    browser = requests.Session()
    browser.trust_env = False  # no proxy for loopback
    page = browser.get(server.url + "/+login", headers=HTML, timeout=30)
    answer = browser.post(
        server.url + "/+login",
        data={"username": who[0], "password": who[1], "csrf_token": CSRF_RE.search(page.text)[1]},
        headers=HTML,
        allow_redirects=False,
        timeout=30,
    )
    assert answer.status_code in (302, 303), answer.text
    return browser


def _post_form(
    server: LiveServer, browser: requests.Session, path: str, **form: str
) -> requests.Response:
    """Post a form with the session's CSRF token (read from the login page)."""
    # The login form, read without Basic credentials (it would not be shown to a logged-in user).
    page = browser.get(server.url + "/+login", headers={**HTML, "Authorization": None}, timeout=30)
    match = CSRF_RE.search(page.text)
    return browser.post(
        server.url + path,
        data={**form, "csrf_token": match[1] if match else ""},
        headers=HTML,
        allow_redirects=False,
        timeout=30,
    )


def _delete_index(server: LiveServer, surface: str, path: str) -> None:
    """Delete `path` as the admin through one surface; assert it said yes."""
    if surface == "api":
        status, body, _ = api(server, "DELETE", f"/{path}")
        assert status == 200, body
    elif surface == "web":
        with _browser(server, ADMIN) as browser:
            edit = browser.get(f"{server.url}/{path}/+edit", headers=HTML, timeout=30)
            answer = browser.post(
                f"{server.url}/{path}/+delete",
                data={"csrf_token": CSRF_RE.search(edit.text)[1]},
                headers=HTML,
                allow_redirects=False,
                timeout=30,
            )
        assert answer.status_code == 303, answer.text
    else:
        done = cli(server.data_dir, "index", "delete", "--yes", path, **server.env)
        assert done.returncode == 0, done.stderr


# --- deleting an index: one function behind every surface ------------------------------------


@pytest.mark.parametrize("surface", SURFACES)
def test_deleting_a_stage_leaves_the_same_state_through_each_surface(
    live_server: LiveServer, surface: str
) -> None:
    """Its scoped tokens, files, search documents and cached pages all go, whoever deletes."""
    server = live_server
    path = f"admin/gone{secrets.token_hex(3)}"
    project = f"gone-{secrets.token_hex(3)}"
    assert api(server, "PUT", f"/{path}", {"volatile": True})[0] == 201
    filename, data = make_wheel(project, "1.0", requires_dist=())
    assert raw_upload(server, path, filename, data)[0] == 200
    status, body, _ = api(server, "POST", "/admin/+tokens", {"index": path})
    assert status == 201, body
    token = body["result"]["token"]
    scoped = {"Authorization": basic_auth("__token__", token), "Accept": MIME_JSON}
    assert server.get(f"/{path}/+simple/{project}/", headers=scoped)[0] == 200
    assert simple_json(server, path, project)["files"]  # the page is built and cached
    index_id = _count(server, select(Index.id).where(Index.name == path.split("/")[1]))
    assert _count(server, select(func.count()).where(CachedPage.index_path == path)) > 0
    # The worker indexes the upload once it has no requests (app/services/indexer.py).
    settles_to(
        lambda: _count(server, select(func.count()).where(SearchDocument.index_id == index_id)) > 0,
        True,
    )

    _delete_index(server, surface, path)

    assert server.get(f"/{path}/+simple/{project}/", headers={"Accept": MIME_JSON})[0] == 404
    _status, _headers, _body, reason = server.get("/+api", headers=scoped)
    assert reason.startswith("Invalid credentials")  # the token went with its index
    remaining = {
        "tokens": select(func.count()).where(Token.index_id == index_id),
        "projects": select(func.count()).where(Project.index_id == index_id),
        "files": select(func.count())
        .select_from(File)
        .join(Project)
        .where(Project.index_id == index_id),
        "pages": select(func.count()).where(CachedPage.index_path == path),
        "search": select(func.count()).where(SearchDocument.index_id == index_id),
    }
    assert {what: _count(server, query) for what, query in remaining.items()} == dict.fromkeys(
        remaining, 0
    )


@pytest.mark.parametrize("surface", SURFACES)
def test_deleting_a_mirror_keeps_a_blob_another_mirror_holds_counted(
    live_server: LiveServer, surface: str
) -> None:
    """The cache cap counts a blob once, under the first mirror that cached it: deleting that
    mirror hands the row to another holder instead of losing it (the cap would never evict the
    other mirror's copy); a blob only the deleted mirror held goes from the books with it."""
    server = live_server
    doomed, heir = (f"admin/m{secrets.token_hex(3)}" for _ in range(2))
    for path in (doomed, heir):
        config = {"type": "mirror", "mirror_url": "http://127.0.0.1:9/simple/"}
        status, body, _ = api(server, "PUT", f"/{path}", config)
        assert status == 201, body
    shared, alone = secrets.token_hex(32), secrets.token_hex(32)
    database = _database(server)
    try:
        with database.session() as session:
            ids = {
                i.path: i.id
                for i in session.scalars(
                    select(Index).where(Index.name.in_([p.split("/")[1] for p in (doomed, heir)]))
                )
            }
            now = utcnow()
            for key in (shared, alone):
                session.execute(
                    insert(MirrorBlob).values(
                        sha256=key,
                        index_id=ids[doomed],
                        size=1000,
                        cached_at=now,
                        last_access_at=now,
                    )
                )
                session.execute(insert(MirrorHolding).values(index_id=ids[doomed], sha256=key))
            session.execute(insert(MirrorHolding).values(index_id=ids[heir], sha256=shared))
            session.commit()
    finally:
        database.engine.dispose()

    _delete_index(server, surface, doomed)

    assert (
        _count(server, select(MirrorBlob.index_id).where(MirrorBlob.sha256 == shared)) == ids[heir]
    )
    assert _count(server, select(func.count()).where(MirrorBlob.sha256 == alone)) == 0
    assert _count(server, select(func.count()).where(MirrorHolding.index_id == ids[doomed])) == 0


def test_deleting_a_user_hands_over_the_blobs_of_their_mirrors(live_server: LiveServer) -> None:
    """Deleting a user deletes their indexes as deleting each index does: a blob their mirror
    recorded and another user's mirror also holds stays counted, under that mirror."""
    server = live_server
    owner = f"u{secrets.token_hex(3)}"
    assert api(server, "PUT", f"/{owner}", {"password": "owner-password"})[0] == 201
    config = {"type": "mirror", "mirror_url": "http://127.0.0.1:9/simple/"}
    heir = f"admin/m{secrets.token_hex(3)}"
    for path in (f"{owner}/mirror", heir):
        status, body, _ = api(server, "PUT", f"/{path}", config)
        assert status == 201, body
    shared = secrets.token_hex(32)
    database = _database(server)
    try:
        with database.session() as session:
            doomed_id = session.scalar(select(Index.id).join(User).where(User.username == owner))
            heir_id = session.scalar(select(Index.id).where(Index.name == heir.split("/")[1]))
            now = utcnow()
            session.execute(
                insert(MirrorBlob).values(
                    sha256=shared, index_id=doomed_id, size=1000, cached_at=now, last_access_at=now
                )
            )
            for index_id in (doomed_id, heir_id):
                session.execute(insert(MirrorHolding).values(index_id=index_id, sha256=shared))
            session.commit()
    finally:
        database.engine.dispose()

    status, body, _ = api(server, "DELETE", f"/{owner}")

    assert status == 200, body
    assert _count(server, select(MirrorBlob.index_id).where(MirrorBlob.sha256 == shared)) == heir_id


# --- who may yank and delete -----------------------------------------------------------------


@pytest.fixture(scope="module")
def locked(live_server: LiveServer) -> dict[str, Any]:
    """admin/locked (volatile, admin only) with lock-pkg 1.0; mallory; an admin token limited to
    admin/elsewhere."""
    server = live_server
    assert api(server, "PUT", f"/{MALLORY[0]}", {"password": MALLORY[1]})[0] == 201
    for path in ("admin/locked", "admin/elsewhere"):
        assert api(server, "PUT", f"/{path}", {"volatile": True})[0] == 201
    filename, data = make_wheel("lock-pkg", "1.0", requires_dist=())
    assert raw_upload(server, "admin/locked", filename, data)[0] == 200
    status, body, _ = api(server, "POST", "/admin/+tokens", {"index": "admin/elsewhere"})
    assert status == 201, body
    return {"filename": filename, "token": body["result"]["token"]}


def _intact(server: LiveServer) -> None:
    (entry,) = simple_json(server, "admin/locked", "lock-pkg")["files"]
    assert entry.get("yanked", False) is False


ATTACKERS = ("anonymous", "mallory", "scoped token")


def _auth(who: str, locked: dict[str, Any]) -> dict[str, str]:
    if who == "mallory":
        return {"Authorization": basic_auth(*MALLORY)}
    if who == "scoped token":
        return {"Authorization": basic_auth("__token__", locked["token"])}
    return {}


@pytest.mark.parametrize("who", ATTACKERS)
def test_strangers_may_not_yank_or_delete_through_the_api_or_devpi_client(
    live_server: LiveServer, locked: dict[str, Any], who: str
) -> None:
    """PATCH yank and devpi-client's DELETEs (version and +f file URL) answer 401/403."""
    server = live_server
    headers = {**_auth(who, locked), "Accept": "application/json"}
    expected = 401 if who == "anonymous" else 403
    yank = server.get(
        "/admin/locked/lock-pkg/1.0",
        headers={**headers, "Content-Type": "application/json"},
        method="PATCH",
        data=b'{"yanked": true}',
    )
    version = server.get("/admin/locked/lock-pkg/1.0", headers=headers, method="DELETE")
    project = server.get("/admin/locked/lock-pkg?force", headers=headers, method="DELETE")

    assert (yank[0], version[0], project[0]) == (expected, expected, expected)
    _intact(server)


@pytest.mark.parametrize("who", ATTACKERS)
def test_strangers_may_not_yank_or_delete_through_the_web_forms(
    live_server: LiveServer, locked: dict[str, Any], who: str
) -> None:
    """The +yank and +delete forms: anonymous goes to the login page, the others get a 403."""
    server = live_server
    if who == "mallory":
        browser = _browser(server, MALLORY)
    else:
        browser = requests.Session()
        browser.trust_env = False
        browser.headers.update(_auth(who, locked))
    base = "/admin/locked/lock-pkg/1.0"
    with browser:
        yank = _post_form(server, browser, f"{base}/+yank", action="yank", reason="mine now")
        delete = _post_form(server, browser, f"{base}/+delete", filename=locked["filename"])

    expected = 302 if who == "anonymous" else 403  # 302: to the login page
    assert (yank.status_code, delete.status_code) == (expected, expected)
    _intact(server)
