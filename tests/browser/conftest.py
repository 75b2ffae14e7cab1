"""Fixtures for browser tests: one headless Debian Chromium per run, a fresh page per test.

Chromium comes from Debian's `chromium` package (`make test` installs it as root); Playwright
only drives it, so `playwright install` (which downloads browsers) is never needed. Tests
are skipped, with the reason, only when no chromium binary can be found.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tests.builders import make_wheel
from tests.conftest import ADMIN_PASSWORD, ROOT, LiveServer
from tests.e2e.helpers import publish
from tests.fake_upstream import FakeUpstream

SCREENSHOTS = ROOT / "test-output" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 10_000  # every click, wait and expect; navigations get NAVIGATION_TIMEOUT_MS
NAVIGATION_TIMEOUT_MS = 15_000
CHROMIUM_ARGS = [
    "--no-sandbox",  # Chromium's own sandbox refuses to start as root (CI runs as root)
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-proxy-server",  # tests talk to 127.0.0.1 only, never through a proxy
    "--disable-background-networking",  # no update checks, safe browsing or other traffic
    "--disable-component-update",
    "--disable-sync",
]

STAGE = "admin/dev"
PROJECT = "demo-pkg"
VERSION = "1.0.0"
MIRRORED = "mirrored-pkg"
README = """\
# demo-pkg

A package published with **twine** for the browser tests.

- installs with pip
- has documentation

```python
import demo_pkg
print(demo_pkg.__version__)
```
"""

# Elements that reach past the right edge of the viewport, outside any scrolling box.
WIDER_THAN_VIEWPORT = """() => {
  const width = document.documentElement.clientWidth;
  if (document.documentElement.scrollWidth <= width) return [];
  const scrolls = (el) => el.closest(".table-wrap, pre");
  return [...document.querySelectorAll("body *")]
    .filter((el) => el.getBoundingClientRect().right > width + 1 && !scrolls(el.parentElement))
    .map((el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
      + (el.className ? "." + String(el.className).split(" ").join(".") : ""))
    .slice(0, 10);
}"""

Shoot = Callable[[Page, str], None]


def chromium_path() -> str | None:
    """The chromium to drive: $CHROMIUM, else `chromium` on PATH (Debian: /usr/bin/chromium)."""
    configured = os.environ.get("CHROMIUM")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Chromium for the whole run (skips when there is none)."""
    executable = chromium_path()
    if executable is None:
        configured = os.environ.get("CHROMIUM")
        pytest.skip(
            f"CHROMIUM={configured} is not an executable"
            if configured
            else "chromium not found: install Debian's chromium package (`make test` does, as"
            " root) or set CHROMIUM=/path/to/chromium"
        )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):  # only this run's pictures, none left from before
        old.unlink()
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, timeout=NAVIGATION_TIMEOUT_MS
        )
        yield launched
        launched.close()


@pytest.fixture
def page(
    browser: Browser, server_factory: Callable[..., LiveServer], request: pytest.FixtureRequest
) -> Iterator[Page]:
    """A page in a fresh context (no cookies) at desktop size; a failed test leaves a picture."""
    # `server_factory` is asked for only to be torn down after this fixture: the browser's
    # keep-alive connections close first, so gunicorn's workers exit at once, not 2 s later.
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)
    opened = context.new_page()
    yield opened
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        path = SCREENSHOTS / f"failed-{request.node.name}.png"
        try:
            opened.screenshot(path=str(path), full_page=True)
            print(f"screenshot of the page at failure: {path} ({opened.url})")
        except PlaywrightError as exc:  # a crashed page must not hide the test's own failure
            print(f"no screenshot of the page at failure: {exc}")
    context.close()


@pytest.fixture
def shoot() -> Shoot:
    """Save the page as NAME-desktop.png and NAME-phone.png under test-output/screenshots/."""

    def save(page: Page, name: str) -> None:
        page.screenshot(path=str(SCREENSHOTS / f"{name}-desktop.png"), full_page=True)
        page.set_viewport_size(PHONE)
        try:
            page.screenshot(path=str(SCREENSHOTS / f"{name}-phone.png"), full_page=True)
            # Wide tables and code scroll inside their own boxes; the page itself never does.
            overflow = page.evaluate(WIDER_THAN_VIEWPORT)
            assert overflow == [], f"{name} is wider than a phone: {overflow}"
        finally:
            page.set_viewport_size(DESKTOP)

    return save


@dataclass
class Site:
    """A live pyshelf with demo-pkg on admin/dev, mirroring a fake PyPI that has mirrored-pkg."""

    server: LiveServer
    upstream: FakeUpstream
    dist_dir: Path

    def url(self, path: str = "/") -> str:
        """An absolute URL on the server."""
        return self.server.url + path


@pytest.fixture
def site(
    server_factory: Callable[..., LiveServer], fake_upstream: FakeUpstream, tmp_path: Path
) -> Site:
    """The real server (entrypoint.sh) with demo-pkg published by twine and a fake upstream."""
    fake_upstream.add_file(MIRRORED, *make_wheel(MIRRORED, "1.0", summary="From the fake PyPI"))
    server = server_factory(MIRROR_URL=fake_upstream.url)
    wheel = make_wheel(
        PROJECT,
        VERSION,
        summary="A demo package for the browser tests",
        description=README,
        description_content_type="text/markdown",
    )
    publish(server, STAGE, tmp_path / "dist", wheel)
    return Site(server, fake_upstream, tmp_path / "dist")


def log_in(page: Page, site: Site, password: str = ADMIN_PASSWORD) -> None:
    """Log in as admin through the login form."""
    page.goto(site.url("/+login"))
    form = page.locator("#login-form")
    form.locator("input[name=username]").fill("admin")
    form.locator("input[name=password]").fill(password)
    form.locator("button[type=submit]").click()
    expect(page.locator("#account-link")).to_have_text("admin")
