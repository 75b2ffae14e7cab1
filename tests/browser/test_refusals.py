"""What the web UI refuses, in headless Chromium: bad logins, missing CSRF tokens, bad docs, XSS."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PROJECT, STAGE, VERSION, Shoot, Site, log_in
from tests.builders import make_wheel, zip_bytes
from tests.conftest import ADMIN_PASSWORD
from tests.e2e.helpers import publish

pytestmark = pytest.mark.e2e

EVIL = "evil-pkg"
EVIL_SUMMARY = "<script>window.pwned = 'summary'</script> sneaky"
EVIL_README = """\
# Evil readme

<script>window.pwned = "script"</script>

<img src="missing.png" onerror="window.pwned = 'onerror'">

<a href="javascript:window.pwned = 'link'">click me</a>

<div onmouseover="window.pwned = 'hover'" style="position:fixed;inset:0">cover</div>

Text after the script.
"""


def test_wrong_password_shows_the_error_and_stays_logged_out(
    page: Page, site: Site, shoot: Shoot
) -> None:
    page.goto(site.url("/+login"))
    page.locator("#login-form input[name=username]").fill("admin")
    page.locator("#login-form input[name=password]").fill("not-the-password")
    page.locator("#login-form button[type=submit]").click()
    expect(page.locator("#login-error")).to_have_text("Invalid username or password.")
    expect(page.locator("#login-form input[name=username]")).to_have_value("admin")
    expect(page.locator("#logout")).to_have_count(0)
    shoot(page, "login-error")

    page.goto(site.url("/"))
    expect(page.locator("#login-link")).to_be_visible()
    expect(page.locator("#account-link")).to_have_count(0)


def test_login_form_without_csrf_token_is_refused(page: Page, site: Site) -> None:
    page.goto(site.url("/+login"))
    page.evaluate("document.querySelector('#login-form input[name=csrf_token]').remove()")
    page.locator("#login-form input[name=username]").fill("admin")
    page.locator("#login-form input[name=password]").fill(ADMIN_PASSWORD)
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.locator("#login-form button[type=submit]").click()
    response = posted.value
    assert (response.status, response.status_text) == (
        400,
        "Bad Request: The CSRF token is missing.",
    )
    expect(page.locator("h1")).to_have_text("400")
    expect(page.locator("body")).to_contain_text("The CSRF token is missing.")

    page.goto(site.url("/"))
    expect(page.locator("#login-link")).to_be_visible()  # the right password did not log in


def test_logout_form_without_csrf_token_is_refused(page: Page, site: Site) -> None:
    log_in(page, site)
    page.evaluate(
        "document.querySelector('#logout').form.querySelector('[name=csrf_token]').remove()"
    )
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.locator("#logout").click()
    response = posted.value
    assert (response.status, response.status_text) == (
        400,
        "Bad Request: The CSRF token is missing.",
    )
    page.goto(site.url("/"))
    expect(page.locator("#account-link")).to_have_text("admin")  # still logged in


def test_docs_zip_with_parent_directory_entries_is_refused(
    page: Page, site: Site, shoot: Shoot
) -> None:
    log_in(page, site)
    page.goto(site.url(f"/{STAGE}/{PROJECT}/{VERSION}/"))
    docs = zip_bytes({"index.html": b"<h1>docs</h1>", "../evil.html": b"<h1>outside</h1>"})
    form = page.locator("#doc-upload-form")
    form.locator("input[name=content]").set_input_files(
        files=[{"name": "evil-docs.zip", "mimeType": "application/zip", "buffer": docs}]
    )
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        form.locator("button[type=submit]").click()
    reason = "Documentation zip member '../evil.html' points outside the zip (..)."
    response = posted.value
    assert (response.status, response.status_text) == (400, reason)
    expect(page.locator("h1")).to_have_text("400")
    expect(page.locator("p")).to_have_text(reason)
    shoot(page, "error-400")

    page.goto(site.url(f"/{STAGE}/{PROJECT}/{VERSION}/"))
    expect(page.locator("#doc-upload-form")).to_be_visible()
    expect(page.locator("#docs-link")).to_have_count(0)  # nothing was stored
    status, _headers, _body, _reason = site.server.get(f"/{STAGE}/{PROJECT}/{VERSION}/+doc/")
    assert status == 404


def test_script_in_description_and_summary_never_runs(page: Page, site: Site) -> None:
    wheel = make_wheel(
        EVIL,
        "6.6.6",
        summary=EVIL_SUMMARY,
        description=EVIL_README,
        description_content_type="text/markdown",
    )
    publish(site.server, STAGE, site.dist_dir, wheel)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    page.goto(site.url(f"/{STAGE}/{EVIL}/"))
    description = page.locator("#description")
    expect(description.locator("h1")).to_have_text("Evil readme")  # it was rendered
    expect(description).to_contain_text("Text after the script.")
    page.mouse.move(200, 300)  # over the `cover` div, had its handler survived
    _assert_nothing_ran(page)
    expect(page.locator(".hint").first).to_contain_text(EVIL_SUMMARY)  # shown as text

    for path in (f"/{STAGE}/{EVIL}/6.6.6/", f"/{STAGE}/", f"/+search?q={EVIL}"):
        page.goto(site.url(path))
        expect(page.locator("main")).to_contain_text(EVIL_SUMMARY)
        _assert_nothing_ran(page)
    assert dialogs == []


def _assert_nothing_ran(page: Page) -> None:
    """No script, event handler or javascript: link from the package survived or ran."""
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.locator("main script").count() == 0
    for attribute in ("onerror", "onmouseover", "style"):
        assert page.locator(f"main [{attribute}]").count() == 0, attribute
    assert page.locator("main a[href^='javascript:' i]").count() == 0
