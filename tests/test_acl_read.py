"""Private read access: an index's `acl_read` on every surface that shows anything of it
(auth and transport, unknown names, dependency confusion).

The matrix tests share one app (module scope) with:

- alice/private  acl_read=[bob], bases=[root/pypi]: secretpkg 1.0 (a wheel) and its docs
- alice/team     acl_read=[:AUTHENTICATED:]: teampkg 1.0
- alice/open     public, bases=[alice/private, root/pypi]: openpkg 1.0
- root/pypi      mirrors a fake upstream that offers secretpkg 9.9 (an attacker's upload)
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from werkzeug.security import generate_password_hash

from app import create_app
from app.cli import accounts
from app.core.config import Settings
from app.data.db import Database
from app.data.models import Index, User
from app.http import api, auth
from app.http.web import admin
from app.ops.devpi_import import Importer
from app.ops.prepare import bootstrap, migrate
from app.services.indexes import Reader, may_read
from app.services.indexes_config import apply_operations, normalize_config
from tests.builders import make_wheel, zip_bytes
from tests.conftest import ADMIN_PASSWORD, basic_auth
from tests.fake_upstream import FakeUpstream
from tests.test_cli import env, prepared, run  # noqa: F401 - fixtures for the CLI test
from tests.test_migrations import alembic_config
from tests.test_upload import upload

PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "carol": "carol-password"}
ADMIN = {"Authorization": basic_auth("admin", ADMIN_PASSWORD)}
ALICE = {"Authorization": basic_auth("alice", PASSWORDS["alice"])}
BOB = {"Authorization": basic_auth("bob", PASSWORDS["bob"])}
CAROL = {"Authorization": basic_auth("carol", PASSWORDS["carol"])}
HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
JSON = {"Accept": "application/json"}
PIP = {
    "Accept": "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; "
    "q=0.1, text/html; q=0.01"
}
REALM = 'Basic realm="pyshelf"'
SECRET = make_wheel("secretpkg", "1.0", description="Parses the zanzibar invoice format.")
OPEN = make_wheel("openpkg", "1.0")
TEAM = make_wheel("teampkg", "1.0")
ATTACKER = make_wheel("secretpkg", "9.9", summary="attacker's")
DOCS = zip_bytes(
    {
        "html/index.html": b'<link rel="stylesheet" href="_static/style.css"><h1>Secret</h1>'
        b"<p>The quokka ledger of every supplier.</p>",
        "html/_static/style.css": b"h1 { color: red; }",
    }
)


def fast_hash(password: str) -> str:
    """1-round PBKDF2 instead of scrypt, so thousands of checked requests stay fast (tests)."""
    return generate_password_hash(password, "pbkdf2:sha256:1")


@dataclasses.dataclass
class World:
    """The shared app, its fake upstream and the credentials the tests use."""

    app: Any
    upstream: FakeUpstream
    tokens: dict[str, str]
    file_path: str  # /alice/private/+f/SHA/secretpkg-1.0-py3-none-any.whl

    def client(self) -> Any:
        """A fresh test client (no cookies)."""
        return self.app.test_client()


def token_header(secret: str, *, bearer: bool = False) -> dict[str, str]:
    """Authorization for an API token: Basic __token__ (RFC 7617) or Bearer."""
    if bearer:
        return {"Authorization": f"Bearer {secret}"}
    return {"Authorization": basic_auth("__token__", secret)}


def new_token(client: Any, user: str, index: str | None = None) -> str:
    """Create an API token for `user` (limited to `index`), as that user."""
    headers = {"Authorization": basic_auth(user, PASSWORDS[user])}
    body = {"index": index} if index else {}
    response = client.post(f"/{user}/+tokens", json=body, headers=headers)
    assert response.status_code == 201, response.status
    return response.get_json()["result"]["token"]


def doc_upload(client: Any, index: str, name: str, version: str, headers: dict[str, str]) -> Any:
    """devpi-client's `:action=doc_upload`."""
    form = {
        ":action": "doc_upload",
        "protocol_version": "1",
        "name": name,
        "version": version,
        "content": (io.BytesIO(DOCS), "docs.zip"),
    }
    return client.post(f"/{index}/", data=form, headers=headers)


def build_world(client: Any) -> dict[str, str]:
    """Users, indexes, uploads and tokens of the module docstring; returns the tokens."""
    for user, password in PASSWORDS.items():
        assert client.put(f"/{user}", json={"password": password}, headers=ADMIN).status_code == 201
    for path, config in (
        ("alice/private", {"acl_read": ["bob"], "bases": ["root/pypi"]}),
        ("alice/team", {"acl_read": [":AUTHENTICATED:"]}),
        ("alice/open", {"bases": ["alice/private", "root/pypi"]}),
    ):
        response = client.put(f"/{path}", json=config, headers=ALICE)
        assert response.status_code == 201, response.status
    for index, (filename, data) in (
        ("alice/private", SECRET),
        ("alice/team", TEAM),
        ("alice/open", OPEN),
    ):
        response = upload(client, filename, data, headers=ALICE, path=f"/{index}/")
        assert response.status_code == 200, response.status
    assert doc_upload(client, "alice/private", "secretpkg", "1.0", ALICE).status_code == 200
    return {
        "bob": new_token(client, "bob"),
        "bob-private": new_token(client, "bob", "alice/private"),
        "bob-open": new_token(client, "bob", "alice/open"),
        "bob-team": new_token(client, "bob", "alice/team"),
        "carol-private": new_token(client, "carol", "alice/private"),
    }


def make_app(settings: Settings) -> Any:
    """A migrated, bootstrapped app for `settings`, CSRF off (tests post forms directly)."""
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings)
    database = Database(settings.database_url)
    with database.session() as session, open(os.devnull, "w") as devnull:
        bootstrap(session, settings, out=devnull)
    database.engine.dispose()
    app = create_app(settings)
    app.config.update(TESTING=True, WTF_CSRF_ENABLED=False)
    return app


def acl_settings(data_dir: Path, upstream: FakeUpstream) -> Settings:
    """Unit-test settings whose root/pypi mirrors `upstream`."""
    return Settings(
        data_dir=data_dir,
        admin_password=ADMIN_PASSWORD,
        mirror_url=upstream.url,
        upstream_connect_timeout_seconds=2,
        upstream_read_timeout_seconds=5,
        upstream_retries=0,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One app with the module docstring's indexes, shared by the read-only matrix tests."""
    with FakeUpstream() as upstream, pytest.MonkeyPatch.context() as patch:
        for module in (auth, api, accounts, admin):
            patch.setattr(module, "hash_password", fast_hash)
        upstream.add_file("secretpkg", *ATTACKER)
        app = make_app(acl_settings(tmp_path_factory.mktemp("acl") / "data", upstream))
        client = app.test_client()
        tokens = build_world(client)
        page = client.get("/alice/private/+simple/secretpkg/", headers={**PIP, **ALICE})
        (entry,) = page.get_json()["files"]
        yield World(app, upstream, tokens, entry["url"])


@pytest.fixture
def fresh(tmp_path: Path, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> World:
    """The same world, built anew for a test that changes it."""
    for module in (auth, api, accounts, admin):
        monkeypatch.setattr(module, "hash_password", fast_hash)
    app = make_app(acl_settings(tmp_path / "data", fake_upstream))
    tokens = build_world(app.test_client())
    page = app.test_client().get("/alice/private/+simple/secretpkg/", headers={**PIP, **ALICE})
    return World(app, fake_upstream, tokens, page.get_json()["files"][0]["url"])


# --- every surface of a restricted index ------------------------------------------------------

SURFACES = [
    pytest.param("GET", "/alice/private/+simple/", PIP, 200, id="simple-list"),
    pytest.param("GET", "/alice/private/+simple/secretpkg/", PIP, 200, id="simple-project-json"),
    pytest.param("GET", "/alice/private/+simple/secretpkg/", {}, 200, id="simple-project-html"),
    pytest.param("GET", "{file}", {}, 200, id="file"),
    pytest.param("HEAD", "{file}", {}, 200, id="file-head"),
    pytest.param("GET", "{file}.metadata", {}, 200, id="file-metadata"),
    pytest.param("GET", "/alice/private/secretpkg/1.0/+doc/index.html", {}, 200, id="docs"),
    pytest.param(
        "GET", "/alice/private/secretpkg/1.0/+doc/index.html", HTML, 200, id="docs-browser"
    ),
    pytest.param("GET", "/alice/private/", HTML, 200, id="web-index"),
    pytest.param("GET", "/alice/private/secretpkg/", HTML, 200, id="web-project"),
    pytest.param("GET", "/alice/private/secretpkg/1.0/", HTML, 200, id="web-version"),
    pytest.param("GET", "/alice/private/", JSON, 200, id="api-index"),
    pytest.param("GET", "/alice/private/secretpkg/", JSON, 200, id="devpi-project-json"),
    pytest.param("GET", "/alice/private/secretpkg/1.0/", JSON, 200, id="devpi-version-json"),
    pytest.param("POST", "/alice/private/+simple/secretpkg/refresh", JSON, 200, id="refresh-post"),
    pytest.param("POST", "/alice/private/secretpkg/+refresh", {}, 303, id="web-refresh-post"),
]
ALLOWED = ["bob", "alice", "admin", "bob-token-scoped", "bob-bearer", "bob-devpi-login"]
CHALLENGED = ["anonymous", "unknown-token"]
FORBIDDEN = ["carol", "carol-token-scoped", "bob-token-for-another-index"]


def caller_headers(world: World, caller: str) -> dict[str, str]:
    """The credentials of one kind of caller."""
    if caller == "bob-devpi-login":
        login = world.client().post("/+login", json={"user": "bob", "password": PASSWORDS["bob"]})
        secret = login.get_json()["result"]["password"]
        return {"X-Devpi-Auth": base64.b64encode(f"bob:{secret}".encode()).decode()}
    return {
        "anonymous": {},
        "unknown-token": token_header("pyshelf-not-a-real-token"),
        "bob": BOB,
        "alice": ALICE,
        "admin": ADMIN,
        "carol": CAROL,
        "bob-token-scoped": token_header(world.tokens["bob-private"]),
        "bob-bearer": token_header(world.tokens["bob"], bearer=True),
        "carol-token-scoped": token_header(world.tokens["carol-private"]),
        "bob-token-for-another-index": token_header(world.tokens["bob-team"]),
    }[caller]


@pytest.mark.parametrize("caller", ALLOWED + CHALLENGED + FORBIDDEN)
@pytest.mark.parametrize(("method", "url", "headers", "ok_status"), SURFACES)
def test_every_surface_of_a_restricted_index_challenges_forbids_or_serves(
    world: World,
    method: str,
    url: str,
    headers: dict[str, str],
    ok_status: int,
    caller: str,
) -> None:
    """Anonymous or bad credentials → 401 + WWW-Authenticate, so pip asks its keyring, except
    that a browser asking for a web page goes to the login page; authenticated but not in
    acl_read → 403; the owner, superusers, readers and their tokens (Basic
    __token__, Bearer) → the page, privately cacheable."""
    url = url.format(file=world.file_path)
    response = world.client().open(
        url, method=method, headers={**headers, **caller_headers(world, caller)}
    )

    if caller == "anonymous" and headers is HTML:
        assert response.status == "303 Log in to read index alice/private."
        assert response.headers["Location"] == f"/+login?next={quote(url, safe='/')}"
        assert "WWW-Authenticate" not in response.headers  # no browser password dialog
    elif caller in CHALLENGED:
        assert response.status_code == 401, response.status
        assert response.headers["WWW-Authenticate"] == REALM
        assert response.headers["Cache-Control"] == "no-store"  # RFC 9111 §5.2.2.5
        expected = (
            "401 Authentication required: index alice/private is not public; log in or pass "
            "credentials."
            if caller == "anonymous"
            else "401 Invalid credentials: wrong username, password or token."
        )
        assert response.status == expected
    elif caller in FORBIDDEN:
        assert response.status_code == 403, response.status
        assert "WWW-Authenticate" not in response.headers
        assert SECRET[1] not in response.data
    else:
        assert response.status_code == ok_status, response.status
        cache_control = response.headers.get("Cache-Control", "private")
        assert "public" not in cache_control
        if "no-store" not in cache_control:
            assert cache_control.startswith("private")
            assert "Authorization" in response.headers.get("Vary", "")


def test_forbidden_users_are_told_who_they_are_and_which_index(world: World) -> None:
    """403 names the user and the index; a scoped token of another index names its scope."""
    as_carol = world.client().get("/alice/private/+simple/", headers=CAROL)
    wrong_scope = world.client().get(
        "/alice/private/+simple/", headers=token_header(world.tokens["bob-team"])
    )

    assert as_carol.status == "403 The user 'carol' may not read index 'alice/private'."
    assert wrong_scope.status == (
        "403 This token is limited to index alice/team (reading it, uploading and yanking "
        "there); it cannot be used for GET /alice/private/+simple/."
    )


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({}, 401, id="anonymous"),
        pytest.param(CAROL, 200, id="any-user"),
        pytest.param(BOB, 200, id="another-user"),
    ],
)
def test_authenticated_means_any_logged_in_user(
    world: World, headers: dict[str, str], status: int
) -> None:
    """acl_read=:AUTHENTICATED: lets every user read, nobody anonymous."""
    response = world.client().get("/alice/team/+simple/teampkg/", headers={**PIP, **headers})

    assert response.status_code == status


def test_unknown_project_on_a_restricted_index_is_401_first_then_404(world: World) -> None:
    """Strangers learn nothing about names (401 before lookup); readers get 404."""
    anonymous = world.client().get("/alice/private/+simple/nothing-here/")
    reader = world.client().get("/alice/private/+simple/nothing-here/", headers=BOB)

    assert anonymous.status_code == 401
    assert reader.status == "404 Project nothing-here is not on index alice/private."


def test_wrong_password_on_a_restricted_read_is_a_401_challenge(fresh: World) -> None:
    """pip retries a 401 with its keyring or a prompt, a 403 never (RFC 9110 §15.5.2)."""
    wrong = {"Authorization": basic_auth("bob", "not-the-password")}

    response = fresh.client().get("/alice/private/+simple/", headers=wrong)

    assert response.status == "401 Invalid credentials: wrong username, password or token."
    assert response.headers["WWW-Authenticate"] == REALM


def test_public_reads_never_look_at_credentials(world: World) -> None:
    """A public index still answers bogus credentials as before (no password check, no cost);
    writes with them are still refused."""
    bogus = token_header("pyshelf-not-a-real-token")

    read = world.client().get("/admin/dev/+simple/", headers=bogus)
    write = upload(world.client(), *OPEN, headers=bogus)

    assert read.status_code == 200
    assert write.status == "403 Invalid credentials: wrong username, password or token."


def test_devpi_api_config_stays_open_to_find_the_login(world: World) -> None:
    """devpi-client asks `+api` before it logs in: it names URLs, not packages."""
    response = world.client().get("/alice/private/+api")

    assert response.status_code == 200
    assert response.get_json()["result"]["login"].endswith("/+login")


# --- caching ----------------------------------------------------------------------------------


def test_restricted_files_are_privately_cached_public_ones_publicly(world: World) -> None:
    """Shared caches never keep a restricted file (immutable stays for public ones)."""
    private = world.client().get(world.file_path, headers=BOB)
    public_url = (
        world.client().get("/alice/open/+simple/openpkg/", headers=PIP).get_json()["files"][0]
    )
    public = world.client().get(public_url["url"])

    assert private.headers["Cache-Control"] == "private, max-age=365000000, immutable"
    assert "Authorization" in private.headers["Vary"]
    assert public.headers["Cache-Control"] == "public, max-age=365000000, immutable"
    assert "Authorization" not in public.headers.get("Vary", "")


def test_pages_of_a_public_index_with_a_private_base_vary_by_reader(world: World) -> None:
    """What alice/open shows depends on who asks: never a shared cache entry."""
    response = world.client().get("/alice/open/+simple/", headers=PIP)

    assert response.headers["Cache-Control"] == "private, no-cache"
    assert "Authorization" in response.headers["Vary"]
    assert "Accept" in response.headers["Vary"]  # RFC 9110 §12.5.5 still holds


# --- inheritance and dependency confusion -----------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "projects"),
    [
        pytest.param({}, ["openpkg"], id="anonymous"),
        pytest.param(CAROL, ["openpkg"], id="stranger"),
        pytest.param(BOB, ["openpkg", "secretpkg"], id="reader"),
        pytest.param(ALICE, ["openpkg", "secretpkg"], id="owner"),
    ],
)
def test_a_public_stage_shows_nothing_of_a_private_base_to_strangers(
    world: World, headers: dict[str, str], projects: list[str]
) -> None:
    """alice/open inherits alice/private: only its readers see the private projects."""
    response = world.client().get("/alice/open/+simple/", headers={**PIP, **headers})

    assert response.status_code == 200
    names = [p["name"] for p in response.get_json()["projects"]]
    assert [n for n in names if n in ("openpkg", "secretpkg")] == projects


def test_a_private_name_hides_the_mirror_from_strangers_too(world: World) -> None:
    """Strangers get 404 for secretpkg on alice/open, never upstream's 9.9 and upstream is not
    asked (the rule counts every stage, readable or not); the reader gets 1.0 only."""
    world.upstream.reset_counts()

    stranger = world.client().get("/alice/open/+simple/secretpkg/", headers={**PIP, **CAROL})
    anonymous = world.client().get("/alice/open/+simple/secretpkg/", headers=PIP)
    reader = world.client().get("/alice/open/+simple/secretpkg/", headers={**PIP, **BOB})
    web = world.client().get("/alice/open/secretpkg/", headers={**JSON, **CAROL})

    assert stranger.status == "404 Project secretpkg is not on index alice/open."
    assert anonymous.status_code == 404
    assert web.status_code == 404
    assert reader.status_code == 200
    assert reader.get_json()["versions"] == ["1.0"]
    assert [f["filename"] for f in reader.get_json()["files"]] == [SECRET[0]]
    assert world.upstream.count("/simple/secretpkg") == 0


def test_a_private_base_file_is_served_only_at_its_own_index(world: World) -> None:
    """A `+f` URL of another index never serves the private blob with that hash."""
    elsewhere = world.file_path.replace("/alice/private/", "/alice/open/")
    on_mirror = world.file_path.replace("/alice/private/", "/root/pypi/")

    for headers in ({}, BOB, ALICE):
        assert world.client().get(elsewhere, headers=headers).status_code == 404
        assert world.client().get(on_mirror, headers=headers).status_code == 404


def test_docs_metadata_and_bases_of_a_private_base_are_hidden_from_strangers(
    world: World,
) -> None:
    """Through alice/open, secretpkg's docs exist for bob only; the JSON config names
    alice/private as a base to its readers and to those who may configure alice/open."""
    docs_url = "/alice/open/secretpkg/1.0/+doc/index.html"

    assert world.client().get(docs_url, headers=CAROL).status_code == 404
    assert world.client().get(docs_url, headers=BOB).status_code == 200
    for headers, bases in (
        ({}, ["root/pypi"]),
        (CAROL, ["root/pypi"]),
        (BOB, ["alice/private", "root/pypi"]),
        (ALICE, ["alice/private", "root/pypi"]),
    ):
        config = world.client().get("/alice/open/", headers={**JSON, **headers}).get_json()
        assert config["result"]["bases"] == bases
    page = world.client().get("/alice/open/", headers=HTML).get_data(as_text=True)
    assert "alice/private" not in page


def test_a_token_limited_to_an_index_reads_it_and_its_bases_only(world: World) -> None:
    """bob's token for alice/open reads alice/open with the private files it links to, and
    alice/private's own URLs (a base); not alice/team, and it uploads nowhere else."""
    scoped = token_header(world.tokens["bob-open"])

    page = world.client().get("/alice/open/+simple/secretpkg/", headers={**PIP, **scoped})
    file_url = page.get_json()["files"][0]["url"]
    download = world.client().get(file_url, headers=scoped)
    base_page = world.client().get("/alice/private/+simple/", headers=scoped)
    other = world.client().get("/alice/team/+simple/", headers=scoped)

    assert page.status_code == 200
    assert file_url == world.file_path
    assert download.status_code == 200
    assert download.data == SECRET[1]
    assert base_page.status_code == 200
    assert other.status_code == 403


def test_a_scoped_token_still_writes_only_to_its_own_index(fresh: World) -> None:
    """Reading the bases is not writing to them."""
    alice_open = new_token(fresh.client(), "alice", "alice/open")

    response = upload(
        fresh.client(),
        *make_wheel("secretpkg", "2.0"),
        headers=token_header(alice_open),
        path="/alice/private/",
    )

    assert response.status == (
        "403 This token is limited to index alice/open (reading it, uploading and yanking "
        "there); it cannot be used for POST /alice/private/."
    )


def test_nobody_may_inherit_from_an_index_they_may_not_read(fresh: World) -> None:
    """Inheriting is reading: carol cannot base a stage on alice/private (bob may)."""
    as_carol = fresh.client().put("/carol/spy", json={"bases": ["alice/private"]}, headers=CAROL)
    as_bob = fresh.client().put("/bob/fork", json={"bases": ["alice/private"]}, headers=BOB)
    patched = fresh.client().patch("/carol/spy", json={"bases": ["alice/private"]}, headers=CAROL)

    assert as_carol.status == (
        "400 Cannot create carol/spy: you may not read alice/private, so you cannot inherit "
        "from it."
    )
    assert as_bob.status_code == 201
    assert patched.status_code == 404  # carol/spy was never created


# --- listings: home page, user pages, search, JSON --------------------------------------------


@pytest.mark.parametrize(
    ("headers", "shown", "hint"),
    [
        pytest.param({}, ["alice/open"], True, id="anonymous"),
        pytest.param(CAROL, ["alice/open", "alice/team"], False, id="stranger"),
        pytest.param(BOB, ["alice/open", "alice/private", "alice/team"], False, id="reader"),
        pytest.param(ADMIN, ["alice/open", "alice/private", "alice/team"], False, id="admin"),
    ],
)
def test_home_and_user_pages_list_only_readable_indexes(
    world: World, headers: dict[str, str], shown: list[str], hint: bool
) -> None:
    """Indexes the visitor may not read are not listed; anonymous visitors are told so."""
    home = world.client().get("/", headers={**HTML, **headers}).get_data(as_text=True)
    user = world.client().get("/alice", headers={**HTML, **headers}).get_data(as_text=True)
    listed = world.client().get("/alice", headers={**JSON, **headers}).get_json()
    everyone = world.client().get("/", headers={**JSON, **headers}).get_json()

    for page in (home, user):
        for path in ("alice/open", "alice/private", "alice/team"):
            assert (f'href="/{path}/"' in page) == (path in shown), path
    assert ("log in to see the ones you may read" in home) == hint
    expected = sorted(p.split("/")[1] for p in shown)
    assert sorted(listed["result"]["indexes"]) == expected
    assert sorted(everyone["result"]["alice"]["indexes"]) == expected


@pytest.mark.parametrize(
    ("headers", "found"),
    [
        pytest.param({}, False, id="anonymous"),
        pytest.param(CAROL, False, id="stranger"),
        pytest.param(BOB, True, id="reader"),
    ],
)
def test_search_finds_projects_only_on_readable_indexes(
    world: World, headers: dict[str, str], found: bool
) -> None:
    """Search filters out restricted indexes' projects in SQL, before LIMIT."""
    page = world.client().get("/+search?q=secretpkg", headers={**HTML, **headers})

    assert page.status_code == 200
    assert ('href="/alice/private/secretpkg/"' in page.get_data(as_text=True)) == found


@pytest.mark.parametrize(
    ("credentials", "status", "found"),
    [
        pytest.param(None, 200, False, id="anonymous"),
        pytest.param("carol", 200, False, id="stranger"),
        pytest.param("carol-private", 403, False, id="stranger-token-for-the-index"),
        pytest.param("bob-open", 403, False, id="reader-token-for-another-index"),
        pytest.param("bob", 200, True, id="reader"),
        pytest.param("bob-token", 200, True, id="reader-token"),
    ],
)
@pytest.mark.parametrize("query", ["zanzibar", '"quokka ledger"', "docs:supplier"])
def test_search_shows_descriptions_and_docs_text_only_to_readers(
    world: World, credentials: str | None, status: int, found: bool, query: str
) -> None:
    """A private index's description words and docs pages are left out in SQL for whoever
    may not read it: anonymous or another account; a token limited to an index searches
    nothing (403), whichever index."""
    headers: dict[str, str] = {}
    if credentials in ("carol", "bob"):
        headers = {"carol": CAROL, "bob": BOB}[credentials]
    elif credentials is not None:
        headers = token_header(world.tokens[credentials.removesuffix("-token")])

    answer = world.client().get("/+search", query_string={"q": query}, headers={**JSON, **headers})
    page = world.client().get("/+search", query_string={"q": query}, headers={**HTML, **headers})

    assert (answer.status_code, page.status_code) == (status, status)
    assert ("secretpkg" in answer.get_data(as_text=True)) == found
    assert ("/alice/private/secretpkg/" in page.get_data(as_text=True)) == found
    if status == 200:
        hits = [(h["index"], h["name"]) for h in answer.get_json()["hits"]]
        assert hits == ([("alice/private", "secretpkg")] if found else [])


# --- web UI: sessions, settings, docs in a browser --------------------------------------------


def login(client: Any, user: str) -> None:
    """Log in through the web form (CSRF is off in these apps)."""
    response = client.post(
        "/+login", data={"username": user, "password": PASSWORDS[user]}, headers=HTML
    )
    assert response.status_code in (302, 303), response.status


def test_a_logged_in_browser_reads_what_its_user_may(world: World) -> None:
    """The session cookie counts like credentials: bob's browser reads, carol's gets 403."""
    bob, carol = world.client(), world.client()
    login(bob, "bob")
    login(carol, "carol")

    assert bob.get("/alice/private/secretpkg/", headers=HTML).status_code == 200
    assert carol.get("/alice/private/secretpkg/", headers=HTML).status_code == 403


def test_docs_in_a_browser_go_through_a_grant_so_their_assets_load(world: World) -> None:
    """The sandboxed docs' own requests carry no cookie (app/http/web/docs.py): a logged-in browser
    gets a grant URL under which the relative links (the stylesheet) load without one."""
    browser = world.client()
    login(browser, "bob")

    start = browser.get("/alice/private/secretpkg/1.0/+doc/", headers=HTML)
    grant_url = start.headers["Location"]
    page = browser.get(grant_url, headers=HTML)
    asset = world.client().get(grant_url + "_static/style.css")  # no cookie, as the sandbox
    forged = world.client().get(grant_url.replace("/+grant/", "/+grant/x") + "_static/style.css")
    other_version = world.client().get(grant_url.replace("/1.0/", "/2.0/") + "_static/style.css")

    assert start.status_code == 302
    assert "/alice/private/secretpkg/1.0/+doc/+grant/" in grant_url
    assert page.status_code == 200
    assert b"<h1>Secret</h1>" in page.data
    assert asset.status_code == 200
    assert asset.data == b"h1 { color: red; }"
    assert asset.headers["Cache-Control"] == "private, no-cache"
    assert forged.status_code == 302  # back to +doc/..., where a cookie-less request gets 401
    assert world.client().get(forged.headers["Location"]).status_code == 401
    assert other_version.status_code == 302


def test_a_grant_stops_working_when_its_user_loses_read_access(fresh: World) -> None:
    """Each request under a grant checks acl_read again."""
    browser = fresh.client()
    login(browser, "bob")
    grant_url = browser.get("/alice/private/secretpkg/1.0/+doc/").headers["Location"]
    before = fresh.client().get(grant_url)

    fresh.client().patch("/alice/private", json={"acl_read": []}, headers=ALICE)
    after = fresh.client().get(grant_url)

    assert before.status_code == 200
    assert after.status_code == 302


def test_the_index_page_says_who_may_read_and_how_to_pass_credentials(world: World) -> None:
    """Settings in words, and pip's URL with a token for an index that is not public."""
    private = world.client().get("/alice/private/", headers={**HTML, **BOB}).get_data(as_text=True)
    team = world.client().get("/alice/team/", headers={**HTML, **BOB}).get_data(as_text=True)
    public = world.client().get("/alice/open/", headers=HTML).get_data(as_text=True)

    assert "bob, the owner and superusers." in private
    assert "://__token__:TOKEN@localhost/alice/private/+simple/" in private
    assert "Any logged-in user." in team
    assert "Everyone, logged in or not." in public
    assert "__token__:TOKEN@" not in public


def test_the_edit_form_sets_acl_read(fresh: World) -> None:
    """The owner's edit form has the field; a form without it changes nothing."""
    browser = fresh.client()
    login(browser, "alice")
    form = browser.get("/alice/private/+edit", headers=HTML).get_data(as_text=True)

    saved = browser.post(
        "/alice/private/+edit",
        data={"title": "", "description": "", "bases": "root/pypi", "acl_read": "bob, carol"},
    )
    kept = browser.post("/alice/open/+edit", data={"title": "Open", "bases": "root/pypi"})

    assert 'name="acl_read" value="bob"' in form
    assert saved.status_code == 303
    assert fresh.client().get("/alice/private/+simple/", headers=CAROL).status_code == 200
    assert kept.status_code == 303
    assert fresh.client().get("/alice/open/", headers=JSON).get_json()["result"]["acl_read"] == [
        ":ANONYMOUS:"
    ]


def test_a_reader_may_make_a_read_only_token_for_a_restricted_index(fresh: World) -> None:
    """The account page offers indexes the user may only read, when they are not public."""
    browser = fresh.client()
    login(browser, "bob")

    page = browser.get("/+account", headers=HTML).get_data(as_text=True)
    created = browser.post("/+account/tokens", data={"index": "alice/private"}, headers=HTML)

    assert '<option value="alice/private">alice/private only</option>' in page
    assert "alice/open only" not in page  # public: reading it needs no token
    assert created.status_code == 201


# --- the setting itself -----------------------------------------------------------------------


def test_new_indexes_are_readable_by_everyone(world: World) -> None:
    """The default is devpi's: acl_read = [":ANONYMOUS:"]."""
    config = world.client().get("/admin/dev/", headers=JSON).get_json()["result"]

    assert config["acl_read"] == [":ANONYMOUS:"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("bob, carol", ["bob", "carol"], id="comma-separated"),
        pytest.param([":authenticated:", "bob"], [":AUTHENTICATED:", "bob"], id="any-case"),
        pytest.param("bob,bob", ["bob"], id="each-once"),
        pytest.param("", [], id="owner-and-superusers-only"),
    ],
)
def test_acl_read_values(value: Any, expected: list[str]) -> None:
    """User names and the two special values, in capitals, each once."""
    assert normalize_config({"acl_read": value}) == {"acl_read": expected}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(
            {"acl_read": [":EVERYONE:"]},
            "400 Cannot change alice/private: acl_read entry ':EVERYONE:' is neither a user "
            "name nor one of :ANONYMOUS:, :AUTHENTICATED:.",
            id="unknown-special",
        ),
        pytest.param(
            {"acl_read": "bob carol"},
            "400 Cannot change alice/private: acl_read entry 'bob carol' is neither a user "
            "name nor one of :ANONYMOUS:, :AUTHENTICATED:.",
            id="space-separated",
        ),
    ],
)
def test_bad_acl_read_values_are_refused_with_the_reason(
    world: World, body: dict[str, Any], status: str
) -> None:
    """400 names the bad entry and what is allowed."""
    assert world.client().patch("/alice/private", json=body, headers=ALICE).status == status


def test_only_the_owner_or_a_superuser_changes_acl_read(world: World) -> None:
    """A reader may read, not configure."""
    response = world.client().patch("/alice/private", json={"acl_read": []}, headers=BOB)

    assert response.status == "403 Only alice or a superuser may configure alice/private."


def test_devpi_operations_on_acl_read(fresh: World) -> None:
    """`devpi index alice/private acl_read+=carol`, and `acl_read-=` back to the default."""
    added = fresh.client().patch("/alice/private", json=["acl_read+=carol"], headers=ALICE)
    reset = fresh.client().patch("/alice/private", json=["acl_read-="], headers=ALICE)

    assert added.get_json()["result"]["acl_read"] == ["bob", "carol"]
    assert reset.get_json()["result"]["acl_read"] == [":ANONYMOUS:"]
    assert apply_operations({"acl_read": [":ANONYMOUS:"]}, ["acl_read-=:anonymous:"]) == {
        "acl_read": []
    }


@pytest.mark.usefixtures("prepared")
def test_the_cli_sets_acl_read_as_key_value(capsys: pytest.CaptureFixture[str]) -> None:
    """`entrypoint.sh index create admin/secret acl_read=bob,:AUTHENTICATED:`."""
    code, out, _ = run(capsys, "index", "create", "admin/secret", "acl_read=bob,:AUTHENTICATED:")

    assert code == 0
    assert json.loads(out)["admin/secret"]["acl_read"] == ["bob", ":AUTHENTICATED:"]


def test_may_read_is_the_one_rule() -> None:
    """Owner and superusers always; then :ANONYMOUS:, :AUTHENTICATED: or the name; a scope."""
    owner = User(id=1, username="alice", password_hash="", is_superuser=False)
    root = User(id=2, username="root", password_hash="", is_superuser=True)
    bob = User(id=3, username="bob", password_hash="", is_superuser=False)
    index = Index(id=1, owner=owner, owner_id=1, name="private", acl_read=[])

    assert may_read(index, Reader(owner))
    assert may_read(index, Reader(root))
    assert not may_read(index, Reader(bob))
    assert not may_read(index, Reader(None))
    index.acl_read = [":AUTHENTICATED:"]
    assert may_read(index, Reader(bob))
    assert not may_read(index, Reader(None))
    assert not may_read(index, Reader(bob, frozenset({"alice/other"})))
    assert may_read(index, Reader(bob, frozenset({"alice/private"})))
    index.acl_read = None  # unset: the default, everyone
    assert may_read(index, Reader(None))


def test_a_devpi_export_keeps_its_read_acl() -> None:
    """devpi keeps read ACLs in a plugin (`acl_pkg_read`); the import must not make the index
    public."""
    importer = Importer(None, None, None, Path())  # type: ignore[arg-type]

    settings = importer._settings_of("alice/dev", {"type": "stage", "acl_pkg_read": ["alice"]})

    assert settings["acl_read"] == ["alice"]
    assert "acl_pkg_read" not in importer.report.ignored_settings


@pytest.mark.empty_database
def test_the_migration_keeps_existing_indexes_public(tmp_path: Path) -> None:
    """Upgrading a 0003 database gives every existing index acl_read = [":ANONYMOUS:"]."""
    settings = Settings(data_dir=tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    config = alembic_config(settings)
    command.upgrade(config, "0003")
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (id, username, password_hash, is_superuser, created_at) "
                "VALUES (1, 'alice', '!', false, '2026-01-01 00:00:00')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO indexes (id, owner_id, name, type, bases, volatile, acl_upload, "
                "mirror_whitelist, title, description, created_at) VALUES (1, 1, 'dev', "
                "'stage', '[]', false, '[]', '[]', '', '', '2026-01-01 00:00:00')"
            )
        )

    command.upgrade(config, "head")

    with engine.connect() as connection:
        stored = connection.scalar(text("SELECT acl_read FROM indexes WHERE id = 1"))
    engine.dispose()
    # SQLite hands back the JSON text; psycopg parses PostgreSQL's json type.
    assert (json.loads(stored) if isinstance(stored, str) else stored) == [":ANONYMOUS:"]
