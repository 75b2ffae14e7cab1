"""Promote to... in headless Chromium (issue #22): the version page's form copies a release into
another stage, the result page lists it, and the target's page shows who promoted it."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PROJECT, STAGE, VERSION, Shoot, Site, log_in
from tests.e2e.helpers import api, simple_json

pytestmark = pytest.mark.e2e


def test_promote_copies_the_release_and_the_target_page_shows_the_audit_trail(
    page: Page, site: Site, shoot: Shoot
) -> None:
    status, body, _reason = api(site.server, "PUT", "/admin/prod", {"bases": ["root/pypi"]})
    assert status == 201, body
    log_in(page, site)
    page.goto(site.url(f"/{STAGE}/{PROJECT}/{VERSION}/"))
    form = page.locator("#promote-form")
    expect(form.locator("select[name=target] option")).to_have_text(["admin/prod (non-volatile)"])
    shoot(page, "version-promote-form")

    form.locator("select[name=target]").select_option("admin/prod")
    form.locator("button[type=submit]").click()

    expect(page.locator("h1")).to_have_text(f"{PROJECT} {VERSION} → admin/prod")
    copied = page.locator("#promote-copied li")
    expect(copied).to_have_count(1)
    expect(copied.first).to_contain_text("demo_pkg-1.0.0-py3-none-any.whl")
    shoot(page, "promoted")
    page.locator("#promote-target").click()
    expect(page.locator("#promotions li")).to_contain_text("copied from admin/dev by admin")
    files = simple_json(site.server, "admin/prod", PROJECT)["files"]
    assert [f["hashes"] for f in files] == [
        f["hashes"] for f in simple_json(site.server, STAGE, PROJECT)["files"]
    ]
