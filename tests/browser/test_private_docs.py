"""Docs of a read-restricted index in headless Chromium: the sandboxed page's own requests carry
no session cookie, so a logged-in browser reads them through a signed grant URL."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PROJECT, STAGE, VERSION, Site
from tests.browser.test_pages import DOCS_CSS, DOCS_HTML
from tests.builders import zip_bytes
from tests.conftest import ADMIN_PASSWORD, basic_auth
from tests.e2e.helpers import ADMIN, api, multipart

pytestmark = pytest.mark.e2e


@pytest.fixture
def private_docs(site: Site) -> Site:
    """admin/dev readable by its owner only, with docs for demo-pkg 1.0.0."""
    docs = zip_bytes({"html/index.html": DOCS_HTML, "html/_static/docs.css": DOCS_CSS})
    body, content_type = multipart(
        [(":action", "doc_upload"), ("name", PROJECT), ("version", VERSION)], "docs.zip", docs
    )
    status, *_ = site.server.get(
        f"/{STAGE}/",
        headers={"Content-Type": content_type, "Authorization": basic_auth(*ADMIN)},
        method="POST",
        data=body,
    )
    assert status == 200
    status, result, _ = api(site.server, "PATCH", f"/{STAGE}", {"acl_read": []})
    assert status == 200, result
    return site


def test_restricted_docs_send_a_browser_to_log_in_then_load_with_their_stylesheet(
    page: Page, private_docs: Site
) -> None:
    """Anonymous: the login page (no password dialog), then back to the docs through the
    grant URL, where the stylesheet the sandboxed page asks for without a cookie loads too."""
    docs_path = f"/{STAGE}/{PROJECT}/{VERSION}/+doc/"
    page.goto(private_docs.url(docs_path))
    expect(page.locator("#login-form")).to_be_visible()

    form = page.locator("#login-form")
    form.locator("input[name=username]").fill("admin")
    form.locator("input[name=password]").fill(ADMIN_PASSWORD)
    with page.expect_response(lambda r: r.url.endswith("/_static/docs.css")) as stylesheet:
        form.locator("button[type=submit]").click()
        expect(page.locator("#docs-title")).to_have_text("demo-pkg documentation")

    assert f"{docs_path}+grant/" in page.url
    assert stylesheet.value.status == 200
    expect(page.locator("#origin")).to_have_text("null")  # sandboxed: an opaque origin
    assert page.evaluate("getComputedStyle(document.body).fontFamily") == "serif"
