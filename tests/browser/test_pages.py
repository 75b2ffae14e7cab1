"""The web UI in headless Chromium: log in, browse, upload and open docs, search, refresh, log out.

Each main page is saved at desktop and phone size under test-output/screenshots/.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import (
    MIRRORED,
    PROJECT,
    STAGE,
    VERSION,
    Shoot,
    Site,
    log_in,
)
from tests.builders import make_wheel, zip_bytes
from tests.conftest import ADMIN_PASSWORD

pytestmark = pytest.mark.e2e

DOCS_HTML = b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>demo-pkg docs</title>
<link rel="stylesheet" href="_static/docs.css"></head>
<body><h1 id="docs-title">demo-pkg documentation</h1>
<p>This page runs in the origin <code id="origin">(script did not run)</code>.</p>
<script>document.getElementById("origin").textContent = String(window.origin);</script>
</body></html>
"""
DOCS_CSS = b"body { font-family: serif; margin: 2rem; }\n"


def test_admin_logs_in_from_home_and_sees_the_published_project(
    page: Page, site: Site, shoot: Shoot
) -> None:
    page.goto(site.url("/"))
    expect(page.locator("#indexes")).to_contain_text(STAGE)
    shoot(page, "home")

    page.locator("#login-link").click()
    expect(page.locator("#login-form")).to_be_visible()
    shoot(page, "login")
    page.locator("#login-form input[name=username]").fill("admin")
    page.locator("#login-form input[name=password]").fill(ADMIN_PASSWORD)
    page.locator("#login-form button[type=submit]").click()
    expect(page).to_have_url(site.url("/"))  # `next` brought us back
    expect(page.locator("#account-link")).to_have_text("admin")
    expect(page.locator("#admin-link")).to_be_visible()

    page.locator("#indexes").get_by_role("link", name=STAGE, exact=True).click()
    expect(page).to_have_url(site.url(f"/{STAGE}/"))
    expect(page.locator("#index-settings")).to_contain_text("root/pypi")
    expect(page.locator("#pip-snippet")).to_contain_text(f"{site.server.url}/{STAGE}/+simple/")
    expect(page.locator("#pypirc-snippet")).to_contain_text(
        f"repository = {site.url(f'/{STAGE}/')}"
    )
    expect(page.locator("#projects")).to_contain_text("A demo package for the browser tests")
    shoot(page, "index-stage")

    page.locator("#projects").get_by_role("link", name=PROJECT, exact=True).click()
    expect(page).to_have_url(site.url(f"/{STAGE}/{PROJECT}/"))
    expect(page.locator("main > h1")).to_contain_text(f"{PROJECT} {VERSION}")
    expect(page.locator("#install-snippet")).to_have_text(
        f"pip install -i {site.server.url}/{STAGE}/+simple/ {PROJECT}"
    )
    description = page.locator("#description")
    expect(description.locator("h1")).to_have_text(PROJECT)
    expect(description.locator("strong")).to_have_text("twine")
    expect(description.locator("pre")).to_contain_text("print(demo_pkg.__version__)")
    expect(page.locator(f'[id="v{VERSION}"]')).to_contain_text(
        f"demo_pkg-{VERSION}-py3-none-any.whl"
    )
    shoot(page, "project")


def test_account_and_admin_pages_show_their_forms(page: Page, site: Site, shoot: Shoot) -> None:
    log_in(page, site)
    page.locator("#account-link").click()
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator("#password-form")).to_be_visible()
    expect(page.locator("#index-create-form")).to_be_visible()
    page.locator("#token-form input[name=description]").fill("CI of demo-pkg")
    page.locator("#token-form select[name=index]").select_option(STAGE)
    page.locator("#token-form button[type=submit]").click()
    expect(page.locator("#new-token")).to_have_text(re.compile(r"\S{20,}"))
    expect(page.locator("#tokens")).to_contain_text("CI of demo-pkg")
    expect(page.locator("#tokens .revoke-token")).to_have_count(1)
    shoot(page, "account")

    page.locator("#admin-link").click()
    expect(page.locator("#user-create-form")).to_be_visible()
    expect(page.locator("#users")).to_contain_text("admin")
    shoot(page, "admin-users")
    page.get_by_role("link", name="Indexes →").click()
    expect(page.locator("#index-create-form")).to_be_visible()
    expect(page.locator("#admin-indexes")).to_contain_text("root/pypi")
    shoot(page, "admin-indexes")


def test_docs_zip_uploaded_through_the_form_opens_sandboxed(
    page: Page, site: Site, shoot: Shoot
) -> None:
    log_in(page, site)
    page.goto(site.url(f"/{STAGE}/{PROJECT}/{VERSION}/"))
    expect(page.locator("#metadata")).to_contain_text("A demo package for the browser tests")
    expect(page.locator("#docs-link")).to_have_count(0)
    expect(page.locator("#yank-form")).to_be_visible()
    shoot(page, "version")

    docs = zip_bytes({"html/index.html": DOCS_HTML, "html/_static/docs.css": DOCS_CSS})
    form = page.locator("#doc-upload-form")
    form.locator("input[name=content]").set_input_files(
        files=[{"name": "demo-pkg-docs.zip", "mimeType": "application/zip", "buffer": docs}]
    )
    form.locator("button[type=submit]").click()
    expect(page.locator(".flash")).to_have_text(f"Documentation of {PROJECT} {VERSION} uploaded.")

    with page.expect_response(lambda r: r.url.endswith("/+doc/")) as opened:
        page.locator("#docs-link").click()
    response = opened.value
    assert (response.status, response.status_text) == (200, "OK")
    policy = response.headers["content-security-policy"]
    assert policy.startswith("sandbox allow-scripts "), policy
    assert "allow-same-origin" not in policy  # an opaque origin: no access to the site
    expect(page.locator("#docs-title")).to_have_text("demo-pkg documentation")
    expect(page.locator("#origin")).to_have_text("null")  # its script ran, sandboxed
    assert page.evaluate("getComputedStyle(document.body).fontFamily") == "serif"
    shoot(page, "docs")

    page.goto(site.url(f"/{STAGE}/{PROJECT}/"))
    expect(page.locator("#docs-link")).to_have_attribute("href", f"/{STAGE}/{PROJECT}/latest/+doc/")


def test_search_box_finds_the_published_project(page: Page, site: Site, shoot: Shoot) -> None:
    page.goto(site.url("/"))
    search = page.locator("#search-form input[name=q]")
    search.fill("demo")
    search.press("Enter")
    expect(page).to_have_url(site.url("/+search?q=demo"))
    results = page.locator("#search-results")
    expect(results.get_by_role("link", name=PROJECT, exact=True)).to_have_attribute(
        "href", f"/{STAGE}/{PROJECT}/"
    )
    expect(results).to_contain_text("A demo package for the browser tests")
    shoot(page, "search")

    results.get_by_role("link", name=PROJECT, exact=True).click()
    expect(page).to_have_url(site.url(f"/{STAGE}/{PROJECT}/"))


def test_refresh_button_fetches_the_mirrored_project_again(
    page: Page, site: Site, shoot: Shoot
) -> None:
    log_in(page, site)  # strangers may not make the server ask the upstream again
    page.goto(site.url(f"/root/pypi/{MIRRORED}/"))
    state = page.locator("#mirror-state")
    expect(state).to_contain_text(re.compile(r"From mirror root/pypi:\s+last fetched \d{4}-"))
    expect(page.locator('[id="v1.1"]')).to_have_count(0)
    assert site.upstream.count(f"/simple/{MIRRORED}/") == 1

    # Upstream gains a release; the cached page is fresh (30 minutes), so only Refresh shows it.
    site.upstream.add_file(MIRRORED, *make_wheel(MIRRORED, "1.1", summary="From the fake PyPI"))
    page.reload()
    expect(page.locator("main > h1")).to_have_text(f"{MIRRORED} 1.0")
    assert site.upstream.count(f"/simple/{MIRRORED}/") == 1

    page.locator("#refresh").click()
    expect(page).to_have_url(site.url(f"/root/pypi/{MIRRORED}/"))
    expect(page.locator(".flash")).to_have_text(f"{MIRRORED} will be fetched again from root/pypi.")
    expect(page.locator("main > h1")).to_have_text(f"{MIRRORED} 1.1")
    expect(state).to_contain_text(re.compile(r"last fetched \d{4}-.*, last checked \d{4}-"))
    assert site.upstream.count(f"/simple/{MIRRORED}/") == 2
    shoot(page, "project-mirror")

    page.locator("#mirror-state").get_by_role("link", name="root/pypi").click()
    expect(page.locator("#projects")).to_contain_text(MIRRORED)
    expect(page.locator("#pypirc-snippet")).to_have_count(0)  # a mirror takes no uploads
    shoot(page, "index-mirror")


def test_log_out_shows_the_login_link_again(page: Page, site: Site) -> None:
    log_in(page, site)
    page.goto(site.url(f"/{STAGE}/"))
    page.locator("#logout").click()
    expect(page).to_have_url(site.url("/"))
    expect(page.locator("#login-link")).to_be_visible()
    expect(page.locator("#account-link")).to_have_count(0)
    page.goto(site.url("/+account"))
    expect(page.locator("#login-form")).to_be_visible()  # the session is gone
