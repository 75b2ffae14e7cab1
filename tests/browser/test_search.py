"""Full-text search in headless Chromium: a phrase that only a docs page holds is found from
the search box, and the hit opens that page inside the docs."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PROJECT, STAGE, VERSION, Shoot, Site
from tests.builders import zip_bytes
from tests.conftest import basic_auth
from tests.e2e.helpers import ADMIN, multipart, settles_to

pytestmark = pytest.mark.e2e

GUIDE = (
    b"<!DOCTYPE html><html><head><title>Configuring the frobnicator</title></head><body>"
    b'<nav><a href="../index.html">Home</a></nav><div role="main"><h1 id="guide-title">'
    b"Configuring the frobnicator</h1><p>Set the <em>saffron telemetry window</em> before the "
    b"first run.</p></div></body></html>"
)
DOCS = zip_bytes(
    {
        "html/index.html": b"<!DOCTYPE html><title>demo</title><h1>demo-pkg</h1>",
        "html/guide/setup.html": GUIDE,
    }
)


def test_a_phrase_inside_the_docs_is_found_and_its_hit_opens_the_page(
    page: Page, site: Site, shoot: Shoot
) -> None:
    """Search box -> highlighted docs hit -> the page inside the docs, served from the zip."""
    body, content_type = multipart(
        [(":action", "doc_upload"), ("name", PROJECT), ("version", VERSION)], "docs.zip", DOCS
    )
    status, *_ = site.server.get(
        f"/{STAGE}/",
        headers={"Content-Type": content_type, "Authorization": basic_auth(*ADMIN)},
        method="POST",
        data=body,
    )
    assert status == 200

    def docs_hits() -> int:  # the server indexes the zip just after its response
        query = quote('"saffron telemetry window"')
        _status, _headers, raw, _reason = site.server.get(
            f"/+search?q={query}",
            headers={"Accept": "application/json", "Authorization": basic_auth(*ADMIN)},
        )
        return len(json.loads(raw)["hits"])

    settles_to(docs_hits, 1)
    page.goto(site.url("/"))
    search = page.locator("#search-form input[name=q]")
    search.fill('"saffron telemetry window"')
    search.press("Enter")
    results = page.locator("#search-results tbody tr")
    expect(results).to_have_count(1)
    expect(results.locator("mark").first).to_contain_text("saffron")
    expect(results).to_contain_text("Configuring the frobnicator")
    shoot(page, "search-docs")

    results.locator("a").first.click()

    expect(page).to_have_url(site.url(f"/{STAGE}/{PROJECT}/{VERSION}/+doc/guide/setup.html"))
    expect(page.locator("#guide-title")).to_have_text("Configuring the frobnicator")
