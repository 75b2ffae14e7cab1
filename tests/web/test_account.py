"""The account page: API tokens (shown once, stored hashed, optionally limited to one index),
and changing the password."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select

from app.data.models import Token
from app.http.auth import token_hash
from tests.conftest import ADMIN_PASSWORD, basic_auth
from tests.web.helpers import ADMIN, HTML, login, upload

SECRET_RE = re.compile(r'id="new-token">(pyshelf-[^<]+)<')


def create_token(client: Any, **form: str) -> tuple[Any, str | None]:
    """Post the token form; returns the response and the secret shown (if any)."""
    response = client.post("/+account/tokens", data=form, headers=HTML)
    match = SECRET_RE.search(response.get_data(as_text=True))
    return response, match.group(1) if match else None


def tokens_in_db(app: Any) -> list[Token]:
    """Every token row."""
    with app.extensions["pyshelf.db"].session() as session:
        return list(session.scalars(select(Token)))


def test_account_page_needs_a_login(client: Any) -> None:
    response = client.get("/+account", headers=HTML)

    assert response.status_code == 302
    assert response.headers["Location"] == "/+login?next=/%2Baccount"


def test_a_new_token_is_shown_once_and_stored_only_as_a_hash(app: Any, client: Any) -> None:
    login(client)

    response, secret = create_token(client, description="CI of demo")
    again = client.get("/+account", headers=HTML).get_data(as_text=True)

    assert response.status_code == 201
    assert secret is not None
    (row,) = tokens_in_db(app)
    assert row.secret_sha256 == token_hash(secret)
    assert secret not in again
    assert "CI of demo" in again
    assert "every index" in again


def test_a_token_works_as_password_with_token_user_or_the_users_name(app: Any, client: Any) -> None:
    login(client)
    _, secret = create_token(client, description="twine")
    assert secret is not None

    as_token = upload(client, "one", headers={"Authorization": basic_auth("__token__", secret)})
    as_user = upload(client, "two", headers={"Authorization": basic_auth("admin", secret)})

    assert as_token.status_code == 200
    assert as_user.status_code == 200
    (row,) = tokens_in_db(app)
    assert row.last_used_at is not None


def test_a_token_limited_to_one_index_uploads_only_there(client: Any) -> None:
    assert client.put("/admin/other", json={}, headers=ADMIN).status_code == 201
    login(client)
    response, secret = create_token(client, description="dev only", index="admin/dev")
    assert secret is not None
    assert "limited to admin/dev" in response.get_data(as_text=True)
    auth = {"Authorization": basic_auth("__token__", secret)}

    here = upload(client, "one", headers=auth)
    elsewhere = upload(client, "one", index="admin/other", headers=auth)
    new_token = client.post("/admin/+tokens", json={}, headers=auth)

    assert here.status_code == 200
    assert elsewhere.status == (
        "403 This token is limited to index admin/dev (reading it, uploading and yanking "
        "there); it cannot be used for POST /admin/other/."
    )
    assert new_token.status_code == 403  # a scoped token cannot mint an unscoped one


def test_a_token_cannot_be_limited_to_an_index_without_upload_rights(client: Any) -> None:
    client.put("/bob", json={"password": "bob-password"}, headers=ADMIN)
    login(client, "bob", "bob-password")

    response, secret = create_token(client, index="admin/dev")

    assert response.status_code == 400
    assert secret is None
    assert "upload rights are needed there" in response.get_data(as_text=True)


def test_revoking_a_token_deletes_it_and_it_stops_working(app: Any, client: Any) -> None:
    login(client)
    _, secret = create_token(client, description="short-lived")
    assert secret is not None
    (row,) = tokens_in_db(app)

    response = client.post(f"/+account/tokens/{row.id}/revoke", headers=HTML)
    used = upload(client, headers={"Authorization": basic_auth("__token__", secret)})

    assert response.status_code == 303
    assert tokens_in_db(app) == []
    assert used.status == "403 Invalid credentials: wrong username, password or token."


def test_nobody_revokes_another_users_token(app: Any, client: Any) -> None:
    admin_token = client.post("/admin/+tokens", json={}, headers=ADMIN)
    assert admin_token.status_code == 201
    client.put("/bob", json={"password": "bob-password"}, headers=ADMIN)
    login(client, "bob", "bob-password")
    (row,) = tokens_in_db(app)

    response = client.post(f"/+account/tokens/{row.id}/revoke", headers=HTML)

    assert response.status_code == 404
    assert len(tokens_in_db(app)) == 1


def test_changing_the_password_checks_the_current_one(client: Any) -> None:
    login(client)

    wrong = client.post(
        "/+account/password",
        data={
            "current_password": "not-it",
            "new_password": "new-password-1",
            "new_password2": "new-password-1",
        },
        headers=HTML,
    )
    right = client.post(
        "/+account/password",
        data={
            "current_password": ADMIN_PASSWORD,
            "new_password": "new-password-1",
            "new_password2": "new-password-1",
        },
        headers=HTML,
    )

    assert wrong.status_code == 400
    assert "The current password is wrong." in wrong.get_data(as_text=True)
    assert right.status_code == 303
    new_auth = {"Authorization": basic_auth("admin", "new-password-1")}
    assert client.patch("/admin", json={}, headers=new_auth).status_code == 200


def test_a_short_or_mistyped_new_password_is_refused(client: Any) -> None:
    login(client)
    base = {"current_password": ADMIN_PASSWORD}

    short = client.post(
        "/+account/password", data={**base, "new_password": "x", "new_password2": "x"}
    )
    differ = client.post(
        "/+account/password",
        data={**base, "new_password": "long-enough-1", "new_password2": "long-enough-2"},
    )

    assert short.status_code == 400
    assert differ.status_code == 400
    assert "The two new passwords differ." in differ.get_data(as_text=True)


def test_users_create_their_own_indexes_from_the_account_page(client: Any) -> None:
    client.put("/bob", json={"password": "bob-password"}, headers=ADMIN)
    login(client, "bob", "bob-password")

    mine = client.post("/+indexes/new", data={"name": "dev", "bases": "root/pypi"}, headers=HTML)
    others = client.post("/+indexes/new", data={"owner": "admin", "name": "x"}, headers=HTML)

    assert mine.status_code == 303
    assert mine.headers["Location"] == "/bob/dev/"
    config = client.get("/bob/dev", headers={"Accept": "application/json"}).json["result"]
    assert config["bases"] == ["root/pypi"]
    assert config["acl_upload"] == ["bob"]
    assert others.status_code == 403


def test_the_json_api_creates_tokens_limited_to_one_index(client: Any) -> None:
    client.put("/admin/other", json={}, headers=ADMIN)

    created = client.post("/admin/+tokens", json={"index": "admin/dev"}, headers=ADMIN)
    missing = client.post("/admin/+tokens", json={"index": "no/such"}, headers=ADMIN)
    auth = {"Authorization": basic_auth("__token__", created.json["result"]["token"])}

    assert created.status_code == 201
    assert created.json["result"]["index"] == "admin/dev"
    assert missing.status == "400 Index no/such does not exist."
    assert upload(client, headers=auth).status_code == 200
    assert upload(client, index="admin/other", headers=auth).status_code == 403


def test_deleting_an_index_deletes_the_tokens_limited_to_it(app: Any, client: Any) -> None:
    client.put("/admin/other", json={}, headers=ADMIN)
    client.post("/admin/+tokens", json={"index": "admin/other"}, headers=ADMIN)
    client.post("/admin/+tokens", json={}, headers=ADMIN)

    assert client.delete("/admin/other", headers=ADMIN).status_code == 200

    (left,) = tokens_in_db(app)
    assert left.index_id is None  # the unscoped token stays; none was widened
