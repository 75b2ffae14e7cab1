"""The version page's Promote to... form (issue #22): who is offered which indexes, the form's
CSRF token, the result page, and the audit trail on the target's version page."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.conftest import basic_auth
from tests.web.helpers import ADMIN, CSRF_RE, HTML, JSON, doc_upload_form, docs_zip, login, upload

PASSWORDS = {"alice": "alice-password", "bob": "bob-password-1"}
ALICE = {"Authorization": basic_auth("alice", PASSWORDS["alice"])}
OPTION_RE = re.compile(r'<option value="([^"]+)">')
PROMOTE_URL = "/alice/dev/demo-pkg/1.0/+promote"


@pytest.fixture
def stages(client: Any) -> Any:
    """alice with dev (demo-pkg 1.0 and its docs), prod and a read-restricted private; bob with
    his own stage; admin/dev and the mirror root/pypi exist already."""
    for user, password in PASSWORDS.items():
        response = client.put(f"/{user}", json={"password": password}, headers=ADMIN)
        assert response.status_code == 201, response.data
    for path, config, auth in (
        ("alice/dev", {}, ALICE),
        ("alice/prod", {}, ALICE),
        ("alice/private", {"acl_read": ["alice"]}, ALICE),
        ("bob/stage", {}, {"Authorization": basic_auth("bob", PASSWORDS["bob"])}),
    ):
        response = client.put(f"/{path}", json=config, headers=auth)
        assert response.status_code == 201, response.data
    assert upload(client, "demo-pkg", "1.0", index="alice/dev", headers=ALICE).status_code == 200
    form = doc_upload_form("demo-pkg", "1.0", docs_zip())
    assert client.post("/alice/dev/", data=form, headers=ALICE).status_code == 200
    return client


def page(client: Any, url: str) -> str:
    """A page as a browser gets it (with the client's session cookie)."""
    response = client.get(url, headers=HTML)
    assert response.status_code == 200, response.data
    return response.get_data(as_text=True)


def test_the_version_page_offers_the_stages_the_visitor_may_upload_to(stages: Any) -> None:
    """alice: her other stages (never the mirror, this index, or others' stages); bob: his own
    stage; anonymous visitors: no form."""
    login(stages, "alice", PASSWORDS["alice"])
    assert OPTION_RE.findall(page(stages, "/alice/dev/demo-pkg/1.0/")) == [
        "alice/private",
        "alice/prod",
    ]
    stages.post("/+logout", headers=HTML)
    login(stages, "bob", PASSWORDS["bob"])
    assert OPTION_RE.findall(page(stages, "/alice/dev/demo-pkg/1.0/")) == ["bob/stage"]
    stages.post("/+logout", headers=HTML)
    stages.delete_cookie("session")
    assert 'id="promote-form"' not in page(stages, "/alice/dev/demo-pkg/1.0/")


def test_promoting_needs_the_forms_csrf_token_then_lists_what_was_copied(
    app: Any, stages: Any
) -> None:
    """A post without the page's token is refused and copies nothing; with it the result page
    names the file and the docs, and the target's version page who copied them from where."""
    app.config["WTF_CSRF_ENABLED"] = True
    token = CSRF_RE.search(page(stages, "/+login"))
    assert token
    login(stages, "alice", PASSWORDS["alice"], csrf_token=token.group(1))
    version_page = page(stages, "/alice/dev/demo-pkg/1.0/")
    assert 'action="/alice/dev/demo-pkg/1.0/+promote"' in version_page

    forged = stages.post(PROMOTE_URL, data={"target": "alice/prod"}, headers=HTML)

    assert forged.status == "400 Bad Request: The CSRF token is missing."
    assert stages.get("/alice/prod/demo-pkg/1.0/", headers=JSON).status_code == 404

    csrf = CSRF_RE.search(version_page)
    assert csrf
    response = stages.post(
        PROMOTE_URL, data={"target": "alice/prod", "csrf_token": csrf.group(1)}, headers=HTML
    )

    assert response.status == "200 OK"
    result = response.get_data(as_text=True)
    assert "demo-pkg 1.0 → alice/prod" in result
    assert re.search(r'<ul id="promote-copied"[^>]*>\s*<li><a href="/alice/prod/\+f/', result)
    assert "demo_pkg-1.0-py3-none-any.whl</a>" in result
    assert "Documentation: copied." in result
    target = page(stages, "/alice/prod/demo-pkg/1.0/")
    assert 'copied from <a href="/alice/dev/demo-pkg/1.0/">alice/dev</a>' in target
    assert "by alice: <span" in target
    assert 'id="docs-link"' in target

    again = stages.post(
        PROMOTE_URL, data={"target": "alice/prod", "csrf_token": csrf.group(1)}, headers=HTML
    )
    assert 'id="promote-noop"' in again.get_data(as_text=True)
    assert 'id="promote-unchanged"' in again.get_data(as_text=True)


def test_a_stranger_posting_the_form_gets_a_403_and_nothing_is_copied(stages: Any) -> None:
    """bob may read alice/dev but not upload to alice/prod."""
    login(stages, "bob", PASSWORDS["bob"])

    response = stages.post(PROMOTE_URL, data={"target": "alice/prod"}, headers=HTML)

    assert response.status == (
        "403 The user 'bob' isn't allowed to upload to index 'alice/prod': ask its owner to add "
        "you to its acl_upload."
    )
    assert stages.get("/alice/prod/demo-pkg/1.0/", headers=JSON).status_code == 404


def test_anonymous_posts_go_to_the_login_page(stages: Any) -> None:
    response = stages.post(PROMOTE_URL, data={"target": "alice/prod"}, headers=HTML)

    assert response.status_code in (302, 303)
    assert "/+login" in response.headers["Location"]


def test_the_audit_trail_never_names_an_index_the_visitor_may_not_read(stages: Any) -> None:
    """A release promoted out of alice/private into the public alice/prod: visitors who may
    not read alice/private see that it came from an index they may not read, not its name."""
    assert upload(
        stages, "hidden-pkg", "2.0", index="alice/private", headers=ALICE
    ).status_code == (200)
    response = stages.post(
        "/alice/private/+promote",
        json={"name": "hidden-pkg", "version": "2.0", "target": "alice/prod"},
        headers={**ALICE, **JSON},
    )
    assert response.status_code == 200, response.data

    anonymous = page(stages, "/alice/prod/hidden-pkg/2.0/")
    assert 'copied from <span class="muted">an index you may not read</span>' in anonymous
    assert "alice/private" not in anonymous
    login(stages, "alice", PASSWORDS["alice"])
    assert ">alice/private</a>" in page(stages, "/alice/prod/hidden-pkg/2.0/")


def test_an_empty_target_is_a_400_that_says_what_to_choose(stages: Any) -> None:
    login(stages, "alice", PASSWORDS["alice"])

    response = stages.post(PROMOTE_URL, data={"target": ""}, headers=HTML)

    assert response.status == "400 Choose the index to promote to."
