"""The security headers in a real browser: no page of the UI trips its own Content-Security-
Policy, and another site cannot frame it (clickjacking)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import MIRRORED, PROJECT, STAGE, VERSION, Site, log_in

pytestmark = pytest.mark.e2e


def test_no_page_trips_its_content_security_policy_and_no_other_site_can_frame_one(
    page: Page, site: Site
) -> None:
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text)
            if "Content Security Policy" in message.text or "Refused to" in message.text
            else None
        ),
    )
    log_in(page, site)
    expect(page.locator("#account-link")).to_have_text("admin")
    for path in (
        "/",
        f"/{STAGE}/",
        f"/{STAGE}/{PROJECT}/",
        f"/{STAGE}/{PROJECT}/{VERSION}/",
        f"/root/pypi/{MIRRORED}/",
        "/+search?q=demo",
        "/+account",
        "/+admin/users",
        "/+admin/indexes",
    ):
        page.goto(site.url(path))
        # the stylesheet applied: the body is not in the browser's default 8px margin
        margin = page.evaluate("getComputedStyle(document.body).margin")
        assert margin != "8px", path
    assert violations == []
    _assert_not_framable(page, site)


def _assert_not_framable(page: Page, site: Site) -> None:
    """Another origin (the fake PyPI's port) frames the login page: the browser refuses."""
    control = site.upstream.url  # the fake PyPI sends no framing headers: it loads
    page.goto(control)  # the attacker's page, on another origin
    page.set_content(
        f'<iframe name="victim" src="{site.url("/+login")}"></iframe>'
        f'<iframe name="control" src="{control}"></iframe>'
    )
    page.wait_for_load_state("load")
    frames = {frame.name: frame for frame in page.frames if frame != page.main_frame}
    assert frames["control"].url == control
    assert "<a " in frames["control"].content()  # a framed page is readable: the control works
    victim = frames["victim"]
    # Chromium replaces a refused frame by its error page: the login form never shows
    assert victim.url.startswith("chrome-error://"), victim.url
    assert victim.locator("#login-form").count() == 0
