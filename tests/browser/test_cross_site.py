"""Another site's page in headless Chromium, while the browser holds cached Basic credentials
for pyshelf: its forged form and its requests to the JSON API and the upload URL change
nothing (issue #15: credentials in a header are no proof that the user meant the request)."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Response

from tests.browser.conftest import NAVIGATION_TIMEOUT_MS, TIMEOUT_MS
from tests.builders import make_wheel
from tests.conftest import ADMIN_PASSWORD, LiveServer
from tests.e2e.helpers import api, upload_fields

pytestmark = pytest.mark.e2e

ATTACKER_HOST = "127.0.0.2"  # another loopback address: another site, not only another origin
PRIVATE = "admin/private"
STOLEN_WHEEL = make_wheel("stolen-pkg", "1.0")
# The page a victim is lured to, in two clicks. Chromium sends cached Basic credentials
# unasked only below the directory where they were first asked for (here /admin/private/
# +simple/), and answers a later challenge of the same realm from its cache without asking.
# So the first click opens a pyshelf URL that challenges at a path whose directory is "/"
# (`%2F` separates nothing for the browser, but does for the server), and from then on the
# browser sends the credentials with every request to the site, as after a site-wide login.
# The second click posts to the JSON API and the upload URL, then submits the form. (The
# context's http_credentials stand in for what the user once typed into the password dialog.)
ATTACKER_PAGE = """<!DOCTYPE html><meta charset="utf-8"><title>Cute cats</title>
<button id="cats">Cats</button> <button id="more">More cats</button>
<form id="form" method="post" action="{server}/+admin/users">
  <input name="username" value="mallory"><input name="password" value="mallory-password">
  <input name="superuser" value="on">
</form>
<script>
const server = {server_json};
document.getElementById("cats").onclick = () =>
  window.open(server + "/{private_escaped}%2F%2Bf%2F{zeros}%2Fcats.whl");
const upload = new FormData();
for (const [key, value] of {fields}) upload.append(key, value);
const wheel = Uint8Array.from(atob("{wheel}"), (c) => c.charCodeAt(0));
upload.append("content", new Blob([wheel]), "{filename}");
const post = (path, body) =>
  fetch(server + path, {{method: "POST", mode: "no-cors", credentials: "include", body}});
document.getElementById("more").onclick = () =>
  Promise.allSettled([post("/admin/+tokens"), post("/{private}/", upload)])
    .then(() => document.getElementById("form").submit());
</script>
"""


class AttackerSite:
    """A one-page web server on ATTACKER_HOST: the other site."""

    def __init__(self, page: bytes) -> None:
        body = page

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((ATTACKER_HOST, 0), Handler)
        self.url = f"http://{ATTACKER_HOST}:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def private_stage(server_factory: Callable[..., LiveServer], tmp_path: Path) -> LiveServer:
    """A live pyshelf with admin/private, a stage only its owner may read."""
    server = server_factory(data_dir=tmp_path / "data")
    status, body, _ = api(server, "PUT", f"/{PRIVATE}", {"acl_read": []})
    assert status == 201, body
    return server


@pytest.fixture
def attacker(private_stage: LiveServer) -> Iterator[AttackerSite]:
    """The other site, with its page aimed at `private_stage`."""
    filename, content = STOLEN_WHEEL
    page = ATTACKER_PAGE.format(
        server=private_stage.url,
        server_json=json.dumps(private_stage.url),
        fields=json.dumps(upload_fields(filename, content)),
        wheel=base64.b64encode(content).decode(),
        filename=filename,
        private=PRIVATE,
        private_escaped=PRIVATE.replace("/", "%2F"),
        zeros="0" * 64,
    )
    site = AttackerSite(page.encode())
    yield site
    site.close()


def is_the_forged_form(response: Response) -> bool:
    """The answer to the attacker's form."""
    return response.request.method == "POST" and response.url.endswith("/+admin/users")


def test_another_sites_page_changes_nothing_with_the_browsers_cached_basic_credentials(
    browser: Browser, private_stage: LiveServer, attacker: AttackerSite
) -> None:
    context = browser.new_context(
        http_credentials={"username": "admin", "password": ADMIN_PASSWORD}
    )
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)
    page = context.new_page()
    posts: list[Response] = []
    page.on("response", lambda r: posts.append(r) if r.request.method == "POST" else None)
    try:
        # The victim reads the private index as pip would: a 401, then Basic credentials.
        simple = page.goto(f"{private_stage.url}/{PRIVATE}/+simple/")
        assert simple is not None
        assert simple.status == 200

        page.goto(attacker.url)
        with context.expect_page() as opened:
            page.locator("#cats").click()
        popup = opened.value
        popup.wait_for_load_state()
        popup.close()
        with page.expect_response(is_the_forged_form) as submitted:
            page.locator("#more").click()
        form = submitted.value
        # The premise: the browser did send the cached credentials with the forged form.
        assert "authorization" in form.request.all_headers(), "no cached credentials were sent"
        assert (form.status, form.status_text) == (400, "Bad Request: The CSRF token is missing.")
        answers = {r.url.removeprefix(private_stage.url): r.status for r in posts}
        assert answers.get("/admin/+tokens") == 403, answers
        assert answers.get(f"/{PRIVATE}/") == 403, answers
    finally:
        context.close()

    status, users, _ = api(private_stage, "GET", "/")
    assert status == 200
    assert "mallory" not in users["result"]
    status, index, _ = api(private_stage, "GET", f"/{PRIVATE}")
    assert (status, index["result"]["projects"]) == (200, [])
