"""Admin pages (superusers: users and indexes) and index settings for owners, with the JSON
API's rules; yanking and deleting releases from the version page."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import basic_auth
from tests.web.helpers import ADMIN, HTML, JSON, login, upload


def flashes(client: Any, url: str) -> str:
    """The page at `url` (where flashed messages show) as text."""
    return client.get(url, headers=HTML).get_data(as_text=True)


def config(client: Any, path: str) -> dict[str, Any]:
    """An index's settings through the JSON API."""
    return client.get(f"/{path}", headers=JSON).json["result"]


@pytest.fixture
def bob(client: Any) -> dict[str, str]:
    """A plain user bob; returns his Basic credentials."""
    assert client.put("/bob", json={"password": "bob-password"}, headers=ADMIN).status_code == 201
    return {"Authorization": basic_auth("bob", "bob-password")}


@pytest.mark.parametrize("path", ["/+admin/users", "/+admin/indexes"])
def test_admin_pages_are_for_superusers_only(client: Any, bob: dict, path: str) -> None:
    anonymous = client.get(path, headers=HTML)
    login(client, "bob", "bob-password")
    plain_user = client.get(path, headers=HTML)
    login(client)
    superuser = client.get(path, headers=HTML)

    assert anonymous.status_code == 302
    assert plain_user.status == "403 Only superusers may manage users and indexes."
    assert superuser.status == "200 OK"


def test_admin_creates_a_user_resets_the_password_and_deletes_the_user(client: Any) -> None:
    login(client)

    created = client.post(
        "/+admin/users",
        data={"username": "carol", "password": "carol-password", "email": "c@example.invalid"},
    )
    listed = flashes(client, "/+admin/users")
    reset = client.post("/+admin/users/carol/password", data={"password": "carol-new-pw"})
    new_login = client.patch(
        "/carol", json={}, headers={"Authorization": basic_auth("carol", "carol-new-pw")}
    )
    deleted = client.post("/+admin/users/carol/delete")

    assert created.status_code == 303
    assert 'id="user-carol"' in listed
    assert "User carol created." in listed
    assert reset.status_code == 303
    assert new_login.status_code == 200
    assert deleted.status_code == 303
    assert client.get("/carol", headers=JSON).status_code == 404


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"username": "bad name!", "password": "long-enough"}, "Invalid username"),
        ({"username": "dave", "password": "short"}, "at least 8 characters"),
        ({"username": "admin", "password": "long-enough"}, "User admin already exists."),
    ],
)
def test_admin_user_form_applies_the_api_rules(client: Any, form: dict, message: str) -> None:
    login(client)

    response = client.post("/+admin/users", data=form)

    assert response.status_code == 303
    assert message in flashes(client, "/+admin/users")


def test_admin_cannot_delete_themselves(client: Any) -> None:
    login(client)

    client.post("/+admin/users/admin/delete")

    assert "You cannot delete yourself." in flashes(client, "/+admin/users")
    assert client.get("/admin", headers=JSON).status_code == 200


def test_admin_creates_edits_and_deletes_an_index(client: Any, bob: dict) -> None:
    login(client)

    created = client.post(
        "/+indexes/new",
        data={"owner": "bob", "name": "team", "type": "stage", "bases": "admin/dev"},
    )
    edited = client.post(
        "/bob/team/+edit",
        data={
            "title": "Team packages",
            "bases": "root/pypi",
            "acl_upload": "bob, admin",
            "mirror_whitelist": "requests",
            "volatile": "1",
        },
    )
    after_edit = config(client, "bob/team")
    deleted = client.post("/bob/team/+delete")

    assert created.status_code == 303
    assert created.headers["Location"] == "/bob/team/"
    assert edited.status_code == 303
    assert after_edit["title"] == "Team packages"
    assert after_edit["bases"] == ["root/pypi"]
    assert after_edit["acl_upload"] == ["bob", "admin"]
    assert after_edit["mirror_whitelist"] == ["requests"]
    assert after_edit["volatile"] is True
    assert deleted.status_code == 303
    assert client.get("/bob/team", headers=JSON).status_code == 404


def test_admin_creates_a_mirror_index(client: Any) -> None:
    login(client)

    response = client.post(
        "/+indexes/new",
        data={
            "owner": "admin",
            "name": "gpu",
            "type": "mirror",
            "mirror_url": "https://user:pw@127.0.0.1:9/whl/simple/",
            "mirror_cache_expiry": "60",
        },
    )

    assert response.status_code == 303
    settings = config(client, "admin/gpu")
    assert settings["type"] == "mirror"
    assert settings["mirror_url"] == "https://***:***@127.0.0.1:9/whl/simple/"
    assert settings["mirror_cache_expiry"] == 60


def test_editing_a_mirror_keeps_credentials_that_are_shown_masked(app: Any, client: Any) -> None:
    client.patch(
        "/root/pypi", json={"mirror_url": "https://u:secret@127.0.0.1:9/simple/"}, headers=ADMIN
    )
    login(client)
    form = client.get("/root/pypi/+edit", headers=HTML).get_data(as_text=True)
    assert "secret" not in form

    client.post(
        "/root/pypi/+edit",
        data={"title": "PyPI", "mirror_url": "https://***:***@127.0.0.1:9/simple/"},
    )

    from app.services.indexes import get_index

    with app.app_context():
        from app.data.db import get_session

        assert get_index(get_session(), "root", "pypi").mirror_url == (
            "https://u:secret@127.0.0.1:9/simple/"
        )


def test_invalid_settings_are_refused_with_the_reason(client: Any) -> None:
    login(client)

    response = client.post("/admin/dev/+edit", data={"bases": "no/such-index"})

    assert response.status_code == 400
    assert "base index &#39;no/such-index&#39; does not exist" in response.get_data(as_text=True)
    assert config(client, "admin/dev")["bases"] == ["root/pypi"]


def test_an_index_that_is_a_base_is_not_deleted(client: Any) -> None:
    login(client)

    response = client.post("/root/pypi/+delete")

    assert response.status_code == 303
    assert "root/pypi is a base of admin/dev" in flashes(client, "/root/pypi/+edit")
    assert client.get("/root/pypi", headers=JSON).status_code == 200


def test_owners_edit_their_own_indexes_but_not_others(client: Any, bob: dict) -> None:
    client.put("/bob/dev", json={}, headers=bob)
    login(client, "bob", "bob-password")

    own = client.post("/bob/dev/+edit", data={"title": "Bob's", "acl_upload": "bob"})
    page = client.get("/bob/dev/", headers=HTML).get_data(as_text=True)
    other = client.post("/admin/dev/+edit", data={"title": "mine now"})

    assert own.status_code == 303
    assert 'id="edit-index"' in page
    assert other.status == "403 Only admin or a superuser may configure admin/dev."


# --- yank and delete -------------------------------------------------------------------------


def simple_json(client: Any, path: str) -> dict[str, Any]:
    """A PEP 691 project page."""
    return client.get(path, headers={"Accept": "application/vnd.pypi.simple.v1+json"}).json


def test_yank_with_a_reason_from_the_version_page_and_unyank(client: Any) -> None:
    upload(client, "demo-pkg", "1.0")
    login(client)
    page = client.get("/admin/dev/demo-pkg/1.0/", headers=HTML).get_data(as_text=True)
    assert 'id="yank-form"' in page

    yanked = client.post(
        "/admin/dev/demo-pkg/1.0/+yank", data={"action": "yank", "reason": "broken build"}
    )
    after_yank = simple_json(client, "/admin/dev/+simple/demo-pkg/")
    project_page = client.get("/admin/dev/demo-pkg/", headers=HTML).get_data(as_text=True)
    unyanked = client.post("/admin/dev/demo-pkg/1.0/+yank", data={"action": "unyank"})
    after_unyank = simple_json(client, "/admin/dev/+simple/demo-pkg/")

    assert yanked.status_code == 303
    assert after_yank["files"][0]["yanked"] == "broken build"
    assert '<span class="hint">broken build</span>' in project_page
    assert unyanked.status_code == 303
    assert after_unyank["files"][0]["yanked"] is False


def test_users_without_rights_cannot_yank(client: Any, bob: dict) -> None:
    upload(client, "demo-pkg", "1.0")
    login(client, "bob", "bob-password")

    page = client.get("/admin/dev/demo-pkg/1.0/", headers=HTML).get_data(as_text=True)
    response = client.post("/admin/dev/demo-pkg/1.0/+yank", data={"reason": "mine"})

    assert 'id="yank-form"' not in page
    assert response.status == "403 The user 'bob' may not change releases on admin/dev."


def test_files_of_a_volatile_index_can_be_deleted(client: Any) -> None:
    client.patch("/admin/dev", json={"volatile": True}, headers=ADMIN)
    upload(client, "demo-pkg", "1.0")
    upload(client, "demo-pkg", "2.0")
    login(client)
    page = client.get("/admin/dev/demo-pkg/1.0/", headers=HTML).get_data(as_text=True)
    assert 'id="delete-version-form"' in page

    response = client.post(
        "/admin/dev/demo-pkg/1.0/+delete", data={"filename": "demo_pkg-1.0-py3-none-any.whl"}
    )

    assert response.status_code == 303
    assert response.headers["Location"] == "/admin/dev/demo-pkg/"
    assert [
        f["filename"] for f in simple_json(client, "/admin/dev/+simple/demo-pkg/")["files"]
    ] == ["demo_pkg-2.0-py3-none-any.whl"]
    last = client.post("/admin/dev/demo-pkg/2.0/+delete")
    assert last.headers["Location"] == "/admin/dev/"
    assert config(client, "admin/dev")["projects"] == []  # the empty project went too


def test_files_of_a_non_volatile_index_are_never_deleted(client: Any) -> None:
    upload(client, "demo-pkg", "1.0")
    login(client)

    page = client.get("/admin/dev/demo-pkg/1.0/", headers=HTML).get_data(as_text=True)
    response = client.post("/admin/dev/demo-pkg/1.0/+delete")

    assert 'id="delete-version-form"' not in page
    assert response.status == (
        "403 Index admin/dev is not volatile: released files stay; yank them instead."
    )


def test_the_edit_page_makes_a_mirror_offline_and_online_again(client: Any) -> None:
    """The Offline box: an unknown project is then a 404 that says so (no upstream asked: the
    test upstream refuses connections, a 502), the index page says it; unticked, it fetches."""
    login(client)
    url = "http://127.0.0.1:9/simple/"
    assert 'name="offline"' in client.get("/root/pypi/+edit", headers=HTML).get_data(as_text=True)

    response = client.post("/root/pypi/+edit", data={"mirror_url": url, "offline": "1"})

    assert response.status_code == 303
    assert config(client, "root/pypi")["offline"] is True
    answer = client.get("/root/pypi/+simple/nothing-here/")
    assert answer.status == "404 Project nothing-here is not in this offline mirror root/pypi."
    assert 'id="offline"' in client.get("/root/pypi/", headers=HTML).get_data(as_text=True)

    assert client.post("/root/pypi/+edit", data={"mirror_url": ""}).status_code == 400
    assert client.post("/root/pypi/+edit", data={"mirror_url": url}).status_code == 303
    assert config(client, "root/pypi")["offline"] is False
    assert client.get("/root/pypi/+simple/nothing-here/").status_code == 502


def test_the_edit_page_sets_the_guard_and_shows_who_added_each_rule(client: Any, bob: dict) -> None:
    """The owner sets a cooldown, an exemption and a block rule on the edit form; the page
    lists who added each rule; another account's form post is refused and changes nothing."""
    login(client)
    saved = client.post(
        "/root/pypi/+edit",
        data={
            "title": "PyPI",
            "mirror_url": config(client, "root/pypi")["mirror_url"],
            "mirror_min_age": "3d",
            "mirror_min_age_exempt": "urgent==1.2, other",
            "blocked": "evil>=2,<2.1: compromised\nworse: typosquat\n",
        },
    )
    settings = config(client, "root/pypi")
    form = client.get("/root/pypi/+edit", headers=HTML).get_data(as_text=True)
    login(client, "bob", "bob-password")
    refused = client.post("/root/pypi/+edit", data={"mirror_min_age": "0", "blocked": ""})

    assert saved.status_code == 303
    assert settings["mirror_min_age"] == "3d"
    assert settings["mirror_min_age_exempt"] == ["urgent==1.2", "other"]
    assert settings["blocked"] == ["evil>=2,<2.1: compromised", "worse: typosquat"]
    assert "blocked evil&gt;=2,&lt;2.1: added by admin at " in form
    assert 'name="mirror_min_age" value="3d"' in form
    assert refused.status == "403 Only root or a superuser may configure root/pypi."
    assert config(client, "root/pypi")["mirror_min_age"] == "3d"


def test_a_form_without_the_cooldown_field_keeps_the_cooldown(client: Any) -> None:
    """Posting an edit form that lacks mirror_min_age (an older page) never lifts it."""
    client.patch("/root/pypi", json={"mirror_min_age": "12h"}, headers=ADMIN)
    login(client)
    client.post(
        "/root/pypi/+edit", data={"title": "PyPI", "mirror_url": "http://127.0.0.1:9/simple/"}
    )
    assert config(client, "root/pypi")["mirror_min_age"] == "12h"
