"""devpi-client's HTTP API: +api, JSON login and X-Devpi-Auth, PATCH operations, DELETEs."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from typing import Any

import pytest
from sqlalchemy import select
from werkzeug.security import generate_password_hash

from app.cli import accounts
from app.data.models import DocSet, File, Project
from app.http import api, auth
from app.services.indexes_config import IndexConfigError, apply_operations
from tests.builders import make_sdist, make_wheel
from tests.conftest import ADMIN_PASSWORD, basic_auth

JSON = {"Accept": "application/json"}
ALICE = ("alice", "alice-password-1")


@pytest.fixture(autouse=True)
def fast_password_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hash new passwords with 1-round PBKDF2 instead of scrypt (tests only)."""

    def fast(password: str) -> str:
        return generate_password_hash(password, "pbkdf2:sha256:1")

    for module in (auth, api, accounts):
        monkeypatch.setattr(module, "hash_password", fast)


def devpi_auth(user: str, secret: str) -> dict[str, str]:
    """The headers devpi-client sends once logged in."""
    value = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return {"X-Devpi-Auth": value, **JSON}


def login_token(client: Any, user: str = "admin", password: str = ADMIN_PASSWORD) -> str:
    """POST /+login as devpi-client does; the token it gets."""
    response = client.post("/+login", json={"user": user, "password": password}, headers=JSON)
    assert response.status == "200 OK", response.json
    return response.json["result"]["password"]


def devpi_upload(client: Any, headers: dict[str, str], filename: str, data: bytes, **extra: str):
    """A file upload as devpi-client posts it: metadata fields, no digest."""
    name, version = filename.split("-")[:2]
    form: dict[str, Any] = {
        ":action": "file_upload",
        "protocol_version": "1",
        "name": name,
        "version": version.removesuffix(".tar.gz"),
        "filetype": "bdist_wheel" if filename.endswith(".whl") else "sdist",
        "pyversion": "py3" if filename.endswith(".whl") else "source",
        "metadata_version": "2.1",
        "summary": "A demo package",
        "content": (io.BytesIO(data), filename),
        **extra,
    }
    return client.post(
        "/admin/dev/", data=form, headers=headers, content_type="multipart/form-data"
    )


def docs_zip() -> bytes:
    """A documentation zip as `devpi upload --with-docs` builds it (index.html at the top)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.html", "<!DOCTYPE html><title>Docs</title>")
    return buffer.getvalue()


# --- +api and headers --------------------------------------------------------------------------


def test_api_of_the_root_names_the_login_and_features(client: Any) -> None:
    response = client.get("/+api", headers=JSON)

    assert response.status == "200 OK"
    assert response.headers["Content-Type"] == "application/json"
    assert response.json == {
        "type": "apiconfig",
        "result": {
            "login": "http://localhost/+login",
            "authstatus": ["noauth", "", []],
            "features": ["server-keyvalue-parsing", "push-no-docs", "push-only-docs"],
        },
    }


def test_api_of_a_stage_adds_its_urls_and_upload_endpoint(client: Any) -> None:
    result = client.get("/admin/dev/+api", headers=JSON).json["result"]

    assert result["index"] == "http://localhost/admin/dev"
    assert result["simpleindex"] == "http://localhost/admin/dev/+simple/"
    assert result["pypisubmit"] == "http://localhost/admin/dev/"


def test_api_of_a_mirror_has_no_upload_endpoint(client: Any) -> None:
    result = client.get("/root/pypi/+api", headers=JSON).json["result"]

    assert result["simpleindex"] == "http://localhost/root/pypi/+simple/"
    assert "pypisubmit" not in result


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/admin/+api", "200 OK"),
        ("/nobody/+api", "404 User nobody does not exist."),
        ("/admin/nothing/+api", "404 Index admin/nothing does not exist."),
    ],
)
def test_api_of_users_and_missing_indexes(client: Any, path: str, status: str) -> None:
    assert client.get(path, headers=JSON).status == status


def test_api_honours_a_proxy_prefix(client: Any) -> None:
    response = client.get("/+api", headers=JSON, environ_overrides={"SCRIPT_NAME": "/pypi"})

    assert response.json["result"]["login"] == "http://localhost/pypi/+login"


def test_every_answer_carries_the_devpi_headers(client: Any) -> None:
    for response in (client.get("/+api"), client.get("/admin/dev/+simple/"), client.get("/x/y")):
        assert response.headers["X-Devpi-Api-Version"] == "2"
        assert response.headers["X-Devpi-Server-Version"].startswith("6.20.3+pyshelf.")
        assert len(response.headers["X-Devpi-Uuid"]) == 32


# --- login and X-Devpi-Auth --------------------------------------------------------------------


def test_login_answers_a_token_that_authenticates_as_the_user(client: Any) -> None:
    response = client.post(
        "/+login", json={"user": "admin", "password": ADMIN_PASSWORD}, headers=JSON
    )

    assert response.status == "200 OK"
    assert response.json["type"] == "proxyauth"
    assert response.json["result"]["expiration"] == 36_000
    token = response.json["result"]["password"]
    assert not token.startswith(("devpi-", "pypi-"))  # devpi-client would treat it as PyPI's
    status = client.get("/+api", headers=devpi_auth("admin", token)).json["result"]["authstatus"]
    assert status == ["ok", "admin", []]
    assert (
        client.patch("/admin/dev", json={}, headers=devpi_auth("admin", token)).status_code == 200
    )


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"user": "admin", "password": "wrong"}, "401 User 'admin' could not be authenticated."),
        ({"user": "ghost", "password": "x"}, "401 User 'ghost' could not be authenticated."),
        ({"user": "admin"}, '400 Bad request: no user/password specified ("user", "password").'),
        (["admin"], '400 Send a JSON object: {"user": NAME, "password": PASSWORD}.'),
    ],
)
def test_login_refusals(client: Any, body: Any, status: str) -> None:
    response = client.post("/+login", json=body, headers=JSON)

    assert response.status == status
    assert response.json["message"] == status.split(" ", 1)[1]  # devpi-client prints it


def test_login_is_throttled_like_every_password_check(client: Any) -> None:
    for _ in range(5):
        client.post("/+login", json={"user": "admin", "password": "wrong"}, headers=JSON)

    response = client.post(
        "/+login", json={"user": "admin", "password": ADMIN_PASSWORD}, headers=JSON
    )

    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0


def test_expired_token_is_anonymous_and_writes_ask_to_log_in_again(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = login_token(client)
    monkeypatch.setattr(auth, "LOGIN_TOKEN_SECONDS", -1)

    api_status = client.get("/+api", headers=devpi_auth("admin", token)).json["result"]
    response = client.patch("/admin/dev", json={}, headers=devpi_auth("admin", token))

    assert api_status["authstatus"] == ["expired", "admin", []]
    assert response.status == (
        "401 Your login expired or is no longer valid: log in again (devpi login)."
    )
    assert response.headers["Location"] == "http://localhost/+login"  # devpi-client: forget it
    assert client.get("/admin/dev", headers=devpi_auth("admin", token)).status_code == 200


def test_a_new_password_ends_the_login_tokens(client: Any, admin_auth: dict[str, str]) -> None:
    token = login_token(client)

    client.patch("/admin", json={"password": "a-new-password"}, headers=admin_auth)

    status = client.get("/+api", headers=devpi_auth("admin", token)).json["result"]["authstatus"]
    assert status == ["expired", "admin", []]


def test_a_token_names_its_user_only(client: Any, admin_auth: dict[str, str]) -> None:
    client.put("/alice", json={"password": ALICE[1]}, headers=admin_auth)
    token = login_token(client)

    status = client.get("/+api", headers=devpi_auth("alice", token)).json["result"]["authstatus"]

    assert status == ["expired", "alice", []]


def test_x_devpi_auth_takes_a_password_too_and_wins_over_basic(client: Any) -> None:
    headers = {**devpi_auth("admin", ADMIN_PASSWORD), "Authorization": basic_auth("x", "proxy")}

    status = client.get("/+api", headers=headers).json["result"]["authstatus"]

    assert status == ["ok", "admin", []]


# --- users and indexes ---------------------------------------------------------------------------


def test_root_lists_users_for_json_clients_and_stays_html_for_others(client: Any) -> None:
    response = client.get("/", headers=JSON)

    assert response.json["type"] == "list:userconfig"
    assert set(response.json["result"]) == {"admin", "root"}
    assert response.json["result"]["root"]["indexes"]["pypi"]["type"] == "mirror"
    assert client.get("/").mimetype == "text/html"
    assert client.get("/", headers={"Accept": "*/*"}).mimetype == "text/html"


def test_user_patch_takes_back_the_whole_get_result(
    client: Any, admin_auth: dict[str, str]
) -> None:
    """`devpi user -m alice email=...` PATCHes what GET answered, with one value changed."""
    client.put("/alice", json={"password": ALICE[1]}, headers=admin_auth)
    config = client.get("/alice", headers=JSON).json["result"]
    del config["indexes"], config["username"]
    config["email"] = "alice@example.org"

    response = client.patch("/alice", json=config, headers={**basic_auth_headers(ALICE), **JSON})

    assert response.status == "200 OK"
    assert response.json["result"]["email"] == "alice@example.org"


def basic_auth_headers(credentials: tuple[str, str]) -> dict[str, str]:
    """Basic credentials as headers."""
    return {"Authorization": basic_auth(*credentials)}


def test_index_get_leaves_out_projects_when_asked(client: Any) -> None:
    assert "projects" in client.get("/admin/dev", headers=JSON).json["result"]
    assert "projects" not in client.get("/admin/dev?no_projects=", headers=JSON).json["result"]


@pytest.mark.parametrize(
    ("operations", "expected"),
    [
        (["title=Dev index"], {"title": "Dev index"}),
        (["acl_upload+=bob"], {"acl_upload": ["admin", "bob"]}),
        (["acl_upload+=admin"], {"acl_upload": ["admin"]}),
        (["acl_upload-=admin"], {"acl_upload": []}),
        (["bases-="], {"bases": []}),
        (
            ["volatile=True", "mirror_whitelist=a,b"],
            {"volatile": True, "mirror_whitelist": ["a", "b"]},
        ),
        (["title=a=b"], {"title": "a=b"}),
    ],
)
def test_index_patch_applies_devpi_operations(
    client: Any, admin_auth: dict[str, str], operations: list[str], expected: dict[str, Any]
) -> None:
    response = client.patch("/admin/dev", json=operations, headers={**admin_auth, **JSON})

    assert response.status == "200 OK", response.json
    assert {k: response.json["result"][k] for k in expected} == expected


@pytest.mark.parametrize(
    ("operations", "status"),
    [
        (
            ["acl_upload-=nobody"],
            "400 Cannot change admin/dev: the 'acl_upload' setting doesn't have value 'nobody'.",
        ),
        (
            ["title+=x"],
            "400 Cannot change admin/dev: title is not a list setting: use title=value.",
        ),
        (
            ["colour=red"],
            "400 Cannot change admin/dev: unknown index setting 'colour'; known: "
            "type, bases, volatile, acl_upload, acl_read, mirror_whitelist, mirror_url, "
            "mirror_cache_expiry, mirror_min_age, mirror_min_age_exempt, blocked, "
            "block_vulnerable, offline, title, description.",
        ),
        (
            ["volatile"],
            "400 Cannot change admin/dev: expected key=value, key+=value or "
            "key-=value, not 'volatile'.",
        ),
        (
            ["bases+=nobody/nothing"],
            "400 Cannot change admin/dev: base index 'nobody/nothing' does not exist.",
        ),
    ],
)
def test_index_patch_refuses_bad_operations(
    client: Any, admin_auth: dict[str, str], operations: list[str], status: str
) -> None:
    response = client.patch("/admin/dev", json=operations, headers={**admin_auth, **JSON})

    assert response.status == status
    assert client.get("/admin/dev", headers=JSON).json["result"]["bases"] == ["root/pypi"]


def test_index_patch_takes_a_whole_config_or_devpis_envelope(
    client: Any, admin_auth: dict[str, str]
) -> None:
    config = client.get("/root/pypi", headers=JSON).json
    config["result"]["title"] = "Mirror"

    response = client.patch("/root/pypi", json=config, headers={**admin_auth, **JSON})

    assert response.status == "200 OK", response.json
    assert response.json["result"]["title"] == "Mirror"


def test_a_masked_mirror_url_sent_back_unchanged_keeps_the_real_one(
    client: Any, admin_auth: dict[str, str]
) -> None:
    client.patch(
        "/root/pypi",
        json={"mirror_url": "http://user:secret@127.0.0.1:9/simple/"},
        headers=admin_auth,
    )
    shown = client.get("/root/pypi", headers=JSON).json["result"]

    client.patch("/root/pypi", json=[f"title={shown['title']}!"], headers=admin_auth)
    client.patch("/root/pypi", json=shown, headers=admin_auth)

    with client.application.extensions["pyshelf.db"].session() as session:
        from app.services.indexes import get_index_by_path

        assert get_index_by_path(session, "root/pypi").mirror_url == (
            "http://user:secret@127.0.0.1:9/simple/"
        )


def test_apply_operations_leaves_its_input_alone() -> None:
    config = {"acl_upload": ["admin"], "title": ""}

    result = apply_operations(config, ["acl_upload+=bob", "description-="])

    assert config == {"acl_upload": ["admin"], "title": ""}
    assert result == {"acl_upload": ["admin", "bob"], "title": "", "description": ""}
    with pytest.raises(IndexConfigError, match="expected key=value"):
        apply_operations(config, [3])


# --- uploads ------------------------------------------------------------------------------------


def test_devpi_upload_needs_no_digest_but_twine_style_still_does(
    client: Any, admin_auth: dict[str, str]
) -> None:
    filename, data = make_wheel("hello", "1.0")
    token = login_token(client)

    refused = devpi_upload(client, admin_auth, filename, data)
    response = devpi_upload(client, devpi_auth("admin", token), filename, data)
    docs = client.post(
        "/admin/dev/",
        data={
            ":action": "doc_upload",
            "name": "hello",
            "version": "1.0",
            "content": (io.BytesIO(docs_zip()), "hello-1.0.doc.zip"),
        },
        headers=devpi_auth("admin", token),
        content_type="multipart/form-data",
    )

    assert refused.status == "400 Error: Include at least one message digest."
    assert response.status == "200 OK"
    assert docs.status == "200 OK"
    assert client.get("/admin/dev/hello/1.0/+doc/").status_code == 200


# --- project JSON and DELETE ------------------------------------------------------------------


@pytest.fixture
def released(client: Any, admin_auth: dict[str, str]) -> dict[str, str]:
    """hello 1.0 (wheel, sdist, docs) and 2.0 (wheel) on admin/dev; admin's devpi headers."""
    token = login_token(client)
    headers = devpi_auth("admin", token)
    for name, data in (
        make_wheel("hello", "1.0"),
        make_sdist("hello", "1.0"),
        make_wheel("hello", "2.0"),
    ):
        assert devpi_upload(client, headers, name, data).status_code == 200
    response = client.post(
        "/admin/dev/",
        data={
            ":action": "doc_upload",
            "name": "hello",
            "version": "1.0",
            "content": (io.BytesIO(docs_zip()), "hello-1.0.doc.zip"),
        },
        headers=headers,
        content_type="multipart/form-data",
    )
    assert response.status_code == 200
    return headers


def test_project_json_lists_versions_with_release_links(client: Any, released: Any) -> None:
    response = client.get("/admin/dev/hello/", headers=JSON)

    assert response.json["type"] == "projectconfig"
    result = response.json["result"]
    assert set(result) == {"1.0", "2.0"}
    links = result["1.0"]["+links"]
    assert {link["rel"] for link in links} == {"releasefile"}
    wheel = next(link for link in links if link["href"].endswith(".whl"))
    sha = wheel["hash_spec"].removeprefix("sha256=")
    assert wheel["href"] == f"http://localhost/admin/dev/+f/{sha}/hello-1.0-py3-none-any.whl"
    assert wheel["hashes"] == {"sha256": sha}
    assert result["1.0"]["doc_url"] == "http://localhost/admin/dev/hello/1.0/+doc/"


def test_project_json_ignore_bases_looks_at_the_index_alone(
    client: Any, admin_auth: dict[str, str], released: Any
) -> None:
    client.put("/admin/child", json={"bases": ["admin/dev"]}, headers=admin_auth)

    assert client.get("/admin/child/hello/", headers=JSON).status_code == 200
    response = client.get("/admin/child/hello/?ignore_bases=", headers=JSON)
    assert response.status == "404 Project hello is not on index admin/child."


def files_of(client: Any, project: str = "hello") -> list[str]:
    """The filenames of a project on admin/dev."""
    with client.application.extensions["pyshelf.db"].session() as session:
        return sorted(
            session.scalars(
                select(File.filename).join(Project).where(Project.normalized_name == project)
            )
        )


def doc_versions(client: Any) -> list[str]:
    """The versions of hello with docs."""
    with client.application.extensions["pyshelf.db"].session() as session:
        return sorted(session.scalars(select(DocSet.version)))


def test_delete_on_a_non_volatile_index_is_refused(client: Any, released: Any) -> None:
    response = client.delete("/admin/dev/hello/1.0", headers=released)

    assert response.status == (
        "403 Index admin/dev is not volatile: released files stay (yank them instead; a "
        "superuser may delete with ?force, devpi remove --force)."
    )
    assert response.json["message"].startswith("Index admin/dev is not volatile")
    assert len(files_of(client)) == 3


def test_force_deletes_a_version_with_its_docs_for_a_superuser(client: Any, released: Any) -> None:
    response = client.delete("/admin/dev/hello/1.0?force=", headers=released)

    assert response.status == "200 OK"
    assert response.json == {"message": "hello 1.0 deleted from admin/dev."}
    assert files_of(client) == ["hello-2.0-py3-none-any.whl"]
    assert doc_versions(client) == []


def test_force_is_for_superusers_only(
    client: Any, admin_auth: dict[str, str], released: Any
) -> None:
    client.put("/alice", json={"password": ALICE[1]}, headers=admin_auth)
    client.patch("/admin/dev", json=["acl_upload+=alice"], headers=admin_auth)

    response = client.delete("/admin/dev/hello/1.0?force", headers=basic_auth_headers(ALICE))

    assert response.status == "403 Only superusers may force deletions on admin/dev."


def volatile(client: Any, admin_auth: dict[str, str]) -> None:
    """Make admin/dev volatile."""
    assert client.patch("/admin/dev", json=["volatile=True"], headers=admin_auth).status_code == 200


def test_uploaders_delete_versions_and_files_on_volatile_indexes(
    client: Any, admin_auth: dict[str, str], released: Any
) -> None:
    volatile(client, admin_auth)
    client.put("/alice", json={"password": ALICE[1]}, headers=admin_auth)
    client.patch("/admin/dev", json=["acl_upload+=alice"], headers=admin_auth)
    alice = basic_auth_headers(ALICE)
    link = client.get("/admin/dev/hello/", headers=JSON).json["result"]["2.0"]["+links"][0]

    assert client.delete("/admin/dev/hello/1.0/", headers=alice).status == "200 OK"
    assert client.delete(link["href"], headers=alice).status == "200 OK"

    assert files_of(client) == []
    project = client.get("/admin/dev/hello/?ignore_bases", headers=JSON)
    assert project.status == "404 Project hello is not on index admin/dev."  # gone with its files


def test_deleting_a_project_takes_its_files_and_docs(
    client: Any, admin_auth: dict[str, str], released: Any
) -> None:
    volatile(client, admin_auth)

    response = client.delete("/admin/dev/hello/", headers=released)

    assert response.status == "200 OK"
    assert files_of(client) == []
    assert doc_versions(client) == []
    assert "hello" not in client.get("/admin/dev", headers=JSON).json["result"]["projects"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/admin/dev/nothing/", "404 Project nothing is not on index admin/dev."),
        ("/admin/dev/hello/9.9", "404 hello 9.9 is not on index admin/dev."),
        (
            "/admin/dev/hello/not..a..version",
            "400 'not..a..version' is not a valid version (PEP 440).",
        ),
        ("/admin/dev/+f/" + "0" * 64 + "/x.whl", "404 No such file on admin/dev: x.whl"),
        ("/root/pypi/hello/", "403 Index root/pypi is a mirror: its files come from upstream."),
        ("/admin/none/hello/", "404 Index admin/none does not exist."),
    ],
)
def test_delete_refusals(
    client: Any, admin_auth: dict[str, str], released: Any, path: str, status: str
) -> None:
    volatile(client, admin_auth)

    assert client.delete(path, headers=released).status == status


def test_delete_needs_a_login(client: Any, released: Any) -> None:
    response = client.delete("/admin/dev/hello/1.0?force")

    assert response.status == "401 Authentication required: log in or pass credentials."


# --- imported password hashes ---------------------------------------------------------------


def test_imported_hashes_are_checked_and_replaced_by_scrypt_at_login(client: Any) -> None:
    from argon2 import PasswordHasher

    from app.data.models import User

    legacy = hashlib.sha256(b"c2FsdA==" + b"old-password").hexdigest()
    with client.application.extensions["pyshelf.db"].session() as session:
        session.add(User(username="argo", password_hash=PasswordHasher().hash("argon-pass")))
        session.add(User(username="sha", password_hash=f"devpi-sha256$c2FsdA==${legacy}"))
        session.commit()

    assert client.post("/+login", json={"user": "argo", "password": "nope"}).status_code == 401
    assert client.post("/+login", json={"user": "sha", "password": "nope"}).status_code == 401
    argo = login_token(client, "argo", "argon-pass")
    sha = login_token(client, "sha", "old-password")

    with client.application.extensions["pyshelf.db"].session() as session:
        hashes = dict(session.execute(select(User.username, User.password_hash)).all())
    assert hashes["argo"].startswith("pbkdf2:")  # this module's stand-in for scrypt
    assert hashes["sha"].startswith("pbkdf2:")
    for user, token in (("argo", argo), ("sha", sha)):
        status = client.get("/+api", headers=devpi_auth(user, token)).json["result"]
        assert status["authstatus"] == ["ok", user, []]  # issued after the re-hash
