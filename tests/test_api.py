"""The JSON management API: users, tokens, indexes and yanks (PEP 592)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from app.data.models import Token
from tests.builders import make_sdist, make_wheel
from tests.conftest import ADMIN_PASSWORD, basic_auth
from tests.test_upload import fast_password_hashes, upload  # noqa: F401 - autouse fixture

BOB_PASSWORD = "bob-password"
BOB = {"Authorization": basic_auth("bob", BOB_PASSWORD)}


@pytest.fixture
def bob(client: Any, admin_auth: dict[str, str]) -> dict[str, str]:
    """A plain user bob; returns his auth headers."""
    response = client.put("/bob", json={"password": BOB_PASSWORD}, headers=admin_auth)
    assert response.status_code == 201
    return BOB


def assert_no_secret(response: Any, *secrets: str) -> None:
    """No password, hash or token leaks into a response."""
    body = response.get_data(as_text=True)
    for secret in (*secrets, "password", "scrypt", "pbkdf2"):
        assert secret not in body


# --- users -----------------------------------------------------------------------------------


def test_superuser_creates_a_user_and_the_password_is_never_shown(
    client: Any, admin_auth: dict[str, str]
) -> None:
    """PUT /USER makes a user (201); the response has no password or hash."""
    response = client.put(
        "/bob", json={"password": BOB_PASSWORD, "email": "bob@example.org"}, headers=admin_auth
    )

    assert response.status == "201 CREATED"
    assert response.get_json() == {
        "type": "userconfig",
        "result": {
            "username": "bob",
            "email": "bob@example.org",
            "is_superuser": False,
            "indexes": {},
        },
    }
    assert_no_secret(response, BOB_PASSWORD)
    shown = client.get("/bob")
    assert shown.status == "200 OK"
    assert_no_secret(shown, BOB_PASSWORD)


def test_creating_an_existing_user_is_409(
    client: Any, admin_auth: dict[str, str], bob: dict
) -> None:
    """Duplicates are conflicts, not server errors."""
    response = client.put("/bob", json={"password": "another-password"}, headers=admin_auth)

    assert response.status == "409 User bob already exists."


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        pytest.param(
            "/bob",
            {"password": "short"},
            "400 A password of at least 8 characters is required.",
            id="short-password",
        ),
        pytest.param(
            "/bob",
            {},
            "400 A password of at least 8 characters is required.",
            id="no-password",
        ),
        pytest.param(
            "/bob",
            {"password": "long-enough", "email": ["bob@example.org"]},
            "400 The email must be a string of at most 255 characters, or null.",
            id="email-not-a-string",
        ),
        pytest.param(
            "/bad%20name",
            {"password": "long-enough"},
            "400 Invalid username 'bad name': use letters, digits, '.', '_' or '-'.",
            id="bad-username",
        ),
    ],
)
def test_creating_a_user_rejects_bad_input(
    client: Any, admin_auth: dict[str, str], path: str, body: dict, status: str
) -> None:
    """Bad user input is a 400 with the reason (never a 500)."""
    response = client.put(path, json=body, headers=admin_auth)

    assert response.status == status
    assert client.get("/bob").status_code == 404


def test_only_superusers_create_users(client: Any, bob: dict[str, str]) -> None:
    """A plain user is authenticated but not allowed: 403 (RFC 9110 §15.5.2)."""
    response = client.put("/carol", json={"password": "long-enough"}, headers=bob)

    assert response.status == "403 Only superusers may create users."


def test_creating_a_user_without_credentials_is_401_with_a_challenge(client: Any) -> None:
    """No credentials: 401 + WWW-Authenticate, never a redirect (RFC 9110 §15.5.2)."""
    response = client.put("/carol", json={"password": "long-enough"})

    assert response.status == "401 Authentication required: log in or pass credentials."
    assert response.headers["WWW-Authenticate"] == 'Basic realm="pyshelf"'


def test_user_changes_own_password_and_the_old_one_stops_working(
    client: Any, bob: dict[str, str]
) -> None:
    """PATCH /USER by the user; wrong credentials are then 403."""
    response = client.patch("/bob", json={"password": "new-password"}, headers=bob)

    assert response.status == "200 OK"
    assert_no_secret(response, "new-password")
    assert client.patch("/bob", json={}, headers=bob).status == (
        "403 Invalid credentials: wrong username, password or token."
    )
    new = {"Authorization": basic_auth("bob", "new-password")}
    assert client.patch("/bob", json={"email": "b@example.org"}, headers=new).status_code == 200


def test_user_cannot_make_themselves_superuser_and_nothing_else_changes(
    client: Any, bob: dict[str, str]
) -> None:
    """A refused PATCH applies none of its changes (the password stays)."""
    response = client.patch(
        "/bob", json={"password": "new-password", "superuser": True}, headers=bob
    )

    assert response.status == "403 Only superusers may grant or revoke superuser rights."
    assert client.get("/bob", headers=bob).get_json()["result"]["is_superuser"] is False
    assert client.patch("/bob", json={"email": "b@example.org"}, headers=bob).status_code == 200


def test_user_cannot_change_another_user(client: Any, bob: dict[str, str]) -> None:
    """Only the user or a superuser may change a user."""
    response = client.patch("/admin", json={"password": "hijacked-password"}, headers=bob)

    assert response.status == "403 Only admin or a superuser may change admin."


def test_superuser_grants_superuser_rights(
    client: Any, admin_auth: dict[str, str], bob: dict[str, str]
) -> None:
    """Superusers may grant the flag."""
    response = client.patch("/bob", json={"superuser": True}, headers=admin_auth)

    assert response.status == "200 OK"
    assert response.get_json()["result"]["is_superuser"] is True


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"colour": "blue"}, "400 Unknown user setting(s): colour."),
        ({"password": "short"}, "400 A password of at least 8 characters is required."),
        (
            {"email": {"address": "b@example.org"}},
            "400 The email must be a string of at most 255 characters, or null.",
        ),
        (["not", "an", "object"], "400 The request body must be a JSON object."),
    ],
)
def test_modifying_a_user_rejects_bad_input(
    client: Any, bob: dict[str, str], body: Any, status: str
) -> None:
    """Bad settings are a 400 with the reason."""
    assert client.patch("/bob", json=body, headers=bob).status == status


def test_superuser_deletes_a_user_who_then_cannot_log_in(
    client: Any, admin_auth: dict[str, str], bob: dict[str, str]
) -> None:
    """DELETE /USER removes the user (and their credentials stop working)."""
    response = client.delete("/bob", headers=admin_auth)

    assert response.status == "200 OK"
    assert client.get("/bob").status == "404 User bob does not exist."
    assert client.patch("/bob", json={}, headers=bob).status_code == 403


def test_deleting_users_is_for_superusers_and_never_yourself(
    client: Any, admin_auth: dict[str, str], bob: dict[str, str]
) -> None:
    """A plain user may not delete; a superuser may not delete themself."""
    assert client.delete("/bob", headers=bob).status == "403 Only superusers may delete users."
    assert client.delete("/admin", headers=admin_auth).status == ("403 You cannot delete yourself.")
    assert client.delete("/nobody", headers=admin_auth).status == "404 User nobody does not exist."


def test_deleting_a_user_whose_index_is_another_index_base_is_409(
    client: Any, admin_auth: dict[str, str], bob: dict[str, str]
) -> None:
    """Deleting bob would delete bob/base under admin/dev's feet, as DELETE /bob/base would."""
    assert client.put("/bob/base", json={}, headers=bob).status_code == 201
    patched = client.patch(
        "/admin/dev", json={"bases": ["bob/base", "root/pypi"]}, headers=admin_auth
    )
    assert patched.status_code == 200

    response = client.delete("/bob", headers=admin_auth)

    assert response.status == "409 bob/base is a base of admin/dev; change those first."
    assert client.get("/bob/base").status_code == 200


# --- tokens ----------------------------------------------------------------------------------


def test_token_is_shown_once_and_works_as_a_password(
    app: Any, client: Any, bob: dict[str, str]
) -> None:
    """POST /USER/+tokens returns the secret once; only its hash is stored (RFC 7617)."""
    response = client.post("/bob/+tokens", json={"description": "ci"}, headers=bob)

    assert response.status == "201 CREATED"
    result = response.get_json()["result"]
    token = result["token"]
    assert result["username"] == "__token__"
    assert token.startswith("pyshelf-")
    assert token not in client.get("/bob", headers=bob).get_data(as_text=True)
    with app.extensions["pyshelf.db"].session() as session:
        stored = session.scalars(select(Token)).all()
        assert [t.description for t in stored] == ["ci"]
        assert token not in stored[0].secret_sha256
    for header in (basic_auth("__token__", token), basic_auth("bob", token), f"Bearer {token}"):
        changed = client.patch(
            "/bob", json={"email": "x@example.org"}, headers={"Authorization": header}
        )
        assert changed.status == "200 OK", header


def test_token_does_not_authenticate_as_another_user(client: Any, bob: dict[str, str]) -> None:
    """bob's token with the username admin is wrong credentials."""
    token = client.post("/bob/+tokens", headers=bob).get_json()["result"]["token"]

    response = client.patch(
        "/bob",
        json={"email": "x@example.org"},
        headers={"Authorization": basic_auth("admin", token)},
    )

    assert response.status == "403 Invalid credentials: wrong username, password or token."


def test_password_that_looks_like_a_token_still_works(
    client: Any, admin_auth: dict[str, str]
) -> None:
    """A password starting with the token prefix is checked as a password, not only as a token."""
    client.put("/carol", json={"password": "pyshelf-is-my-password"}, headers=admin_auth)
    carol = {"Authorization": basic_auth("carol", "pyshelf-is-my-password")}

    response = client.patch("/carol", json={"email": "c@example.org"}, headers=carol)

    assert response.status == "200 OK"


def test_tokens_are_made_by_their_user_or_a_superuser(
    client: Any, admin_auth: dict[str, str], bob: dict[str, str]
) -> None:
    """bob may not mint admin's tokens; admin may mint bob's."""
    assert client.post("/admin/+tokens", headers=bob).status == (
        "403 Only admin or a superuser may create tokens for admin."
    )
    assert client.post("/bob/+tokens", headers=admin_auth).status_code == 201
    assert client.post("/nobody/+tokens", headers=admin_auth).status_code == 404


def test_each_token_is_different(client: Any, admin_auth: dict[str, str]) -> None:
    """Two tokens for one user are two secrets."""
    first = client.post("/admin/+tokens", headers=admin_auth).get_json()["result"]["token"]
    second = client.post("/admin/+tokens", headers=admin_auth).get_json()["result"]["token"]

    assert first != second


# --- indexes ---------------------------------------------------------------------------------


def test_create_index_with_bases_and_read_its_config(
    client: Any, admin_auth: dict[str, str]
) -> None:
    """PUT /USER/INDEX with settings; GET shows them with the projects."""
    response = client.put(
        "/admin/team",
        json={"bases": ["admin/dev"], "volatile": "yes", "title": "Team"},
        headers=admin_auth,
    )

    assert response.status == "201 CREATED"
    expected = {
        "type": "stage",
        "bases": ["admin/dev"],
        "volatile": True,
        "acl_upload": ["admin"],
        "acl_read": [":ANONYMOUS:"],
        "mirror_whitelist": [],
        "blocked": [],
        "block_vulnerable": None,
        "title": "Team",
        "description": "",
    }
    assert response.get_json() == {"type": "indexconfig", "result": expected}
    assert client.get("/admin/team").get_json()["result"] == {**expected, "projects": []}


def test_owner_creates_own_index_but_not_for_others(client: Any, bob: dict[str, str]) -> None:
    """Users manage their own indexes; others' need a superuser."""
    assert client.put("/bob/dev", json={}, headers=bob).status == "201 CREATED"
    assert client.put("/admin/mine", json={}, headers=bob).status == (
        "403 Only admin or a superuser may create indexes for admin."
    )
    assert client.patch("/admin/dev", json={"title": "x"}, headers=bob).status == (
        "403 Only admin or a superuser may configure admin/dev."
    )
    assert client.delete("/admin/dev", headers=bob).status == (
        "403 Only admin or a superuser may delete admin/dev."
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        pytest.param(
            "put",
            "/admin/new",
            {"bases": ["nobody/nothing"]},
            "400 Cannot create admin/new: base index 'nobody/nothing' does not exist.",
            id="base-must-exist",
        ),
        pytest.param(
            "put",
            "/admin/new",
            {"bases": ["admin/new"]},
            "400 Cannot create admin/new: bases would make a cycle: admin/new reaches itself.",
            id="self-base-on-create",
        ),
        pytest.param(
            "patch",
            "/admin/dev",
            {"bases": ["admin/dev"]},
            "400 Cannot change admin/dev: bases would make a cycle: admin/dev reaches itself.",
            id="self-base-on-change",
        ),
        pytest.param(
            "patch",
            "/admin/dev",
            {"type": "mirror"},
            "400 Cannot change admin/dev: the type of an existing index cannot be changed.",
            id="type-change",
        ),
        pytest.param(
            "put",
            "/admin/mirror",
            {"type": "mirror"},
            "400 Cannot create admin/mirror: a mirror index needs mirror_url, "
            "an http(s) simple index URL, or offline=true.",
            id="mirror-needs-url",
        ),
        pytest.param(
            "put",
            "/admin/mirror",
            {"type": "mirror", "mirror_url": "ftp://example.org/simple/"},
            "400 Cannot create admin/mirror: a mirror index needs mirror_url, "
            "an http(s) simple index URL, or offline=true.",
            id="mirror-needs-http-url",
        ),
        pytest.param(
            "put",
            "/admin/mirror",
            {"type": "mirror", "mirror_url": "https://example.org/simple/", "bases": ["admin/dev"]},
            "400 Cannot create admin/mirror: a mirror index cannot have bases.",
            id="mirror-without-bases",
        ),
        pytest.param(
            "put",
            "/admin/new",
            {"colour": "blue"},
            "400 Cannot create admin/new: unknown index setting 'colour'; known: type, bases, "
            "volatile, acl_upload, acl_read, mirror_whitelist, mirror_url, mirror_cache_expiry, "
            "mirror_min_age, mirror_min_age_exempt, blocked, block_vulnerable, offline, title, "
            "description.",
            id="unknown-setting",
        ),
        pytest.param(
            "patch",
            "/admin/dev",
            {"volatile": "maybe"},
            "400 Cannot change admin/dev: volatile must be true or false, not 'maybe'.",
            id="bad-boolean",
        ),
        pytest.param(
            "put",
            "/admin/new",
            {"type": "cache"},
            "400 Cannot create admin/new: type must be 'stage' or 'mirror', not 'cache'.",
            id="unknown-type",
        ),
        pytest.param(
            "put",
            "/admin/+bad",
            {},
            "400 Cannot create admin/+bad: invalid index name '+bad': use letters, digits, "
            "'.', '_' or '-' (at most 64).",
            id="bad-name",
        ),
        pytest.param(
            "put",
            "/admin/dev",
            {},
            "409 Cannot create admin/dev: index admin/dev already exists.",
            id="duplicate",
        ),
        pytest.param(
            "delete",
            "/root/pypi",
            None,
            "409 root/pypi is a base of admin/dev; change those first.",
            id="delete-a-base",
        ),
    ],
)
def test_index_configuration_is_validated(
    client: Any,
    admin_auth: dict[str, str],
    method: str,
    path: str,
    body: dict | None,
    status: str,
) -> None:
    """Every bad setting is refused with its reason, and nothing is changed."""
    before = client.get("/admin/dev").get_json()

    response = getattr(client, method)(path, json=body, headers=admin_auth)

    assert response.status == status
    assert client.get("/admin/dev").get_json() == before
    assert client.get("/root/pypi").status_code == 200
    if path.endswith("/new") or path.endswith("/mirror"):
        assert client.get(path).status_code == 404


def test_a_cycle_through_two_indexes_is_refused(client: Any, admin_auth: dict[str, str]) -> None:
    """a -> b -> a is refused, and a keeps its old bases."""
    assert client.put("/admin/a", json={}, headers=admin_auth).status_code == 201
    assert (
        client.put("/admin/b", json={"bases": ["admin/a"]}, headers=admin_auth).status_code == 201
    )

    response = client.patch("/admin/a", json={"bases": ["admin/b"]}, headers=admin_auth)

    assert (
        response.status
        == "400 Cannot change admin/a: bases would make a cycle: admin/a reaches itself."
    )
    assert client.get("/admin/a").get_json()["result"]["bases"] == []


def test_a_longer_cycle_is_refused(client: Any, admin_auth: dict[str, str]) -> None:
    """a -> c -> b -> a is refused too."""
    client.put("/admin/a", json={}, headers=admin_auth)
    client.put("/admin/b", json={"bases": ["admin/a"]}, headers=admin_auth)
    client.put("/admin/c", json={"bases": ["admin/b"]}, headers=admin_auth)

    response = client.patch(
        "/admin/a", json={"bases": ["root/pypi", "admin/c"]}, headers=admin_auth
    )

    assert response.status_code == 400
    assert "cycle" in response.status


def test_mirror_url_credentials_are_masked(client: Any, admin_auth: dict[str, str]) -> None:
    """A mirror_url with user:password shows as ***:*** in every response."""
    url = "https://user:s3cr3t-token@mirror.example.org/simple/"

    created = client.put(
        "/admin/private-mirror", json={"type": "mirror", "mirror_url": url}, headers=admin_auth
    )
    shown = client.get("/admin/private-mirror")
    listed = client.get("/admin")

    assert created.status == "201 CREATED"
    for response in (created, shown, listed):
        assert "s3cr3t-token" not in response.get_data(as_text=True)
    assert shown.get_json()["result"]["mirror_url"] == "https://***:***@mirror.example.org/simple/"


def test_deleting_an_index_unused_as_base_works(client: Any, admin_auth: dict[str, str]) -> None:
    """An index no other index builds on can be deleted."""
    client.put("/admin/scratch", json={}, headers=admin_auth)

    response = client.delete("/admin/scratch", headers=admin_auth)

    assert response.status == "200 OK"
    assert client.get("/admin/scratch").status == "404 Index admin/scratch does not exist."


def test_changing_settings_keeps_the_others(client: Any, admin_auth: dict[str, str]) -> None:
    """PATCH changes only the keys it names; lists may come as comma-separated strings."""
    response = client.patch(
        "/admin/dev", json={"mirror_whitelist": "six, Requests", "title": "Dev"}, headers=admin_auth
    )

    result = response.get_json()["result"]
    assert response.status == "200 OK"
    assert result["mirror_whitelist"] == ["six", "Requests"]
    assert result["bases"] == ["root/pypi"]
    assert result["title"] == "Dev"


# --- yank ------------------------------------------------------------------------------------


@pytest.fixture
def released(client: Any, admin_auth: dict[str, str]) -> None:
    """Demo.Pkg 1.0.0 (wheel and sdist) and 2.0.0 (wheel) on admin/dev."""
    for filename, content in (
        make_wheel("Demo.Pkg", "1.0.0"),
        make_sdist("Demo.Pkg", "1.0.0"),
        make_wheel("Demo.Pkg", "2.0.0"),
    ):
        assert upload(client, filename, content, headers=admin_auth).status == "200 OK"


def yanked_state(client: Any) -> dict[str, Any]:
    """filename -> yanked value of admin/dev's JSON page."""
    doc = client.get(
        "/admin/dev/+simple/demo-pkg/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    ).get_json()
    return {f["filename"]: f["yanked"] for f in doc["files"]}


def test_yank_marks_every_file_of_a_version_and_unyank_clears_it(
    client: Any, admin_auth: dict[str, str], released: None
) -> None:
    """PATCH .../PROJECT/VERSION yanks (with reason) and un-yanks (PEP 592); names and versions
    are matched normalized."""
    response = client.patch(
        "/admin/dev/Demo_Pkg/1.0", json={"yanked": True, "reason": "broken"}, headers=admin_auth
    )

    assert response.status == "200 OK"
    assert sorted(response.get_json()["result"]["files"]) == [
        "demo_pkg-1.0.0-py3-none-any.whl",
        "demo_pkg-1.0.0.tar.gz",
    ]
    assert yanked_state(client) == {
        "demo_pkg-1.0.0-py3-none-any.whl": "broken",
        "demo_pkg-1.0.0.tar.gz": "broken",
        "demo_pkg-2.0.0-py3-none-any.whl": False,
    }

    client.patch("/admin/dev/demo-pkg/1.0.0", json={"yanked": False}, headers=admin_auth)

    assert set(yanked_state(client).values()) == {False}


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        (
            "/admin/dev/demo-pkg/9.9",
            {"yanked": True},
            "404 demo-pkg 9.9 has no files on admin/dev.",
        ),
        (
            "/admin/dev/demo-pkg/1.0.0",
            {"yanked": "yes"},
            '400 Send {"yanked": true|false, "reason": "..."}.',
        ),
        (
            "/admin/dev/demo-pkg/not-a-version",
            {"yanked": True},
            "400 'not-a-version' is not a valid version (PEP 440).",
        ),
        ("/admin/nope/demo-pkg/1.0.0", {"yanked": True}, "404 Index admin/nope does not exist."),
    ],
)
def test_yank_rejects_bad_requests(
    client: Any, admin_auth: dict[str, str], released: None, path: str, body: dict, status: str
) -> None:
    """Bad yanks say why and change nothing."""
    assert client.patch(path, json=body, headers=admin_auth).status == status
    assert set(yanked_state(client).values()) == {False}


def test_yank_needs_upload_or_configure_rights(
    client: Any, released: None, bob: dict[str, str]
) -> None:
    """Users outside acl_upload may not yank."""
    response = client.patch("/admin/dev/demo-pkg/1.0.0", json={"yanked": True}, headers=bob)

    assert response.status == "403 The user 'bob' may not yank on admin/dev."


def test_admin_password_fixture_is_the_superuser(client: Any) -> None:
    """The bootstrapped admin is a superuser (sanity check of the fixtures)."""
    headers = {"Authorization": basic_auth("admin", ADMIN_PASSWORD)}
    assert client.get("/admin", headers=headers).get_json()["result"]["is_superuser"] is True
