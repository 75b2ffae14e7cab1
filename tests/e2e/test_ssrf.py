"""Server-side request forgery (issue #15 item 2), attacked on a running server: who may point
a mirror somewhere, which addresses upstream requests may reach (pages, file links, sidecars,
redirect hops), MIRROR_FILE_HOSTS, the trusted MIRROR_URL, and what /+status tells whom.

Linux routes all of 127.0.0.0/8 to loopback, so one machine holds a "public" upstream (on
127.0.0.2, the only address the server is allowed to reach) and "internal" servers on
127.0.0.1 and 127.0.0.3 that must never see a request.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.builders import make_wheel
from tests.conftest import ADMIN_PASSWORD, LiveServer, basic_auth
from tests.e2e.helpers import MIME_JSON, api, cli
from tests.web.helpers import CSRF_RE

pytestmark = pytest.mark.e2e

MALLORY = ("mallory", "mallory-password-1")
METRICS_TOKEN = "status-token-for-tests"
ALLOWED_HOST = "127.0.0.2"  # the one loopback address the module's server may reach
METADATA = b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n"
REFUSED_LOOPBACK = "Upstream address refused: 127.0.0.1 is a loopback address"
ALLOW_HINT = "(set UPSTREAM_ALLOW_PRIVATE to allow it)"
START_TIMEOUT_SECONDS = 60


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.cache
def wheel(project: str) -> tuple[str, bytes]:
    """(filename, bytes) of the one wheel a test project has (a +f file's name names it)."""
    return make_wheel(project, "1.0")


class Recorder:
    """An HTTP server on one loopback address: fixed answers by path; every request recorded."""

    def __init__(self, host: str) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.requests: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.requests.append(self.path)
                status, headers, body = recorder.routes.get(self.path, (404, {}, b"not here"))
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.base_url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def page(self, project: str, links: list[dict[str, Any]]) -> None:
        """Serve a PEP 691 page for `project` at /simple/PROJECT/ listing `links`."""
        document = {"meta": {"api-version": "1.1"}, "name": project, "files": links}
        body = json.dumps(document).encode()
        self.routes[f"/simple/{project}/"] = (200, {"Content-Type": MIME_JSON}, body)

    def file(self, path: str, data: bytes) -> str:
        """Serve `data` at `path`; its URL."""
        self.routes[path] = (200, {"Content-Type": "application/octet-stream"}, data)
        return self.base_url + path

    def redirect(self, path: str, location: str) -> str:
        """Answer `path` with a 302 to `location`; its URL."""
        self.routes[path] = (302, {"Location": location}, b"")
        return self.base_url + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def link(project: str, url: str, *, hashed: bool = True, metadata: bool = False) -> dict[str, Any]:
    """One `files` entry of a JSON page: the project's wheel at `url`, with or without sha256."""
    filename, data = wheel(project)
    entry: dict[str, Any] = {"filename": filename, "url": url, "hashes": {}}
    if hashed:
        entry["hashes"] = {"sha256": sha(data)}
    if metadata:
        entry["core-metadata"] = {"sha256": sha(METADATA)}
    return entry


def host_file(recorder: Recorder, project: str) -> str:
    """Serve the project's wheel on `recorder`; its URL."""
    filename, data = wheel(project)
    return recorder.file(f"/files/{filename}", data)


@pytest.fixture(scope="module")
def public() -> Iterator[Recorder]:
    """The "public" upstream, on the one address the server may reach."""
    recorder = Recorder(ALLOWED_HOST)
    yield recorder
    recorder.close()


@pytest.fixture(scope="module")
def internal() -> Iterator[Recorder]:
    """An "internal" service on 127.0.0.1: it must never receive a request."""
    recorder = Recorder("127.0.0.1")
    recorder.routes["/secret"] = (200, {"Content-Type": MIME_JSON}, b'{"secret": "s3cr3t"}')
    yield recorder
    recorder.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server that may reach 127.0.0.2 only; mallory is an ordinary user with a stage."""
    data_dir = tmp_path_factory.mktemp("ssrf") / "data"
    live = LiveServer(
        data_dir,
        {
            "ADMIN_PASSWORD": ADMIN_PASSWORD,
            "MIRROR_URL": "http://127.0.0.1:9/simple/",
            "UPSTREAM_ALLOW_PRIVATE": f"{ALLOWED_HOST}/32",
            "UPSTREAM_CONNECT_TIMEOUT": "2",
            "UPSTREAM_RETRIES": "0",
            "METRICS_TOKEN": METRICS_TOKEN,
            "WEB_CONCURRENCY": "2",
            "THREADS": "4",
        },
    )
    live.start()
    try:
        status, body, _reason = api(live, "PUT", "/mallory", {"password": MALLORY[1]})
        assert status == 201, body
        status, body, _reason = api(live, "PUT", "/mallory/dev", {}, auth=MALLORY)
        assert status == 201, body
        yield live
    finally:
        live.stop()


def make_mirror(server: LiveServer, path: str, mirror_url: str) -> None:
    """A mirror made by the admin (a superuser may point one anywhere; it is still checked)."""
    status, body, _reason = api(
        server, "PUT", f"/{path}", {"type": "mirror", "mirror_url": mirror_url}
    )
    assert status == 201, body


def web_form(
    server: LiveServer, path: str, fields: dict[str, str], auth: tuple[str, str]
) -> tuple[int, bytes, str]:
    """POST a web form as a browser would: logged in by the login form, with the form's CSRF
    token (every web form needs it, whatever the credentials)."""
    with requests.Session() as browser:
        login_page = browser.get(server.url + "/+login", timeout=30)
        token = CSRF_RE.search(login_page.text).group(1)
        form = {"username": auth[0], "password": auth[1], "csrf_token": token}
        logged_in = browser.post(server.url + "/+login", data=form, timeout=30)
        assert logged_in.ok, logged_in.reason
        page = browser.get(server.url + "/", timeout=30)  # the logout form carries the token
        token = CSRF_RE.search(page.text).group(1)
        response = browser.post(
            server.url + path,
            data={**fields, "csrf_token": token},
            headers={"Accept": "text/html"},
            allow_redirects=False,
            timeout=30,
        )
        return response.status_code, response.content, response.reason


# --- (a) who may point a mirror somewhere --------------------------------------------------------


MIRROR_RIGHT = (
    "only superusers may create mirror indexes or set mirror_url (the server's MIRROR_CREATE)"
)


def test_an_ordinary_user_cannot_create_a_mirror_through_the_api_or_the_web_form(server, internal):
    """PUT /mallory/NAME with type=mirror, and the web's create form: 403, nothing created."""
    metadata_url = "http://169.254.169.254/latest/meta-data/"
    attempt = {"type": "mirror", "mirror_url": metadata_url}
    status, _body, reason = api(server, "PUT", "/mallory/meta", attempt, auth=MALLORY)
    assert (status, reason) == (403, f"Cannot create mallory/meta: {MIRROR_RIGHT}.")

    form = {"owner": "mallory", "name": "webmeta", "type": "mirror", "mirror_url": metadata_url}
    status, _body, reason = web_form(server, "/+indexes/new", form, MALLORY)
    assert (status, reason) == (403, f"Cannot create mallory/webmeta: {MIRROR_RIGHT}.")

    for name in ("meta", "webmeta"):
        assert api(server, "GET", f"/mallory/{name}", auth=MALLORY)[0] == 404
    assert internal.requests == []


def test_an_ordinary_user_cannot_set_mirror_url_by_patch_devpi_operations_or_web_form(server):
    """On her own stage and on a mirror she owns (made for her by a superuser): 403 each way."""
    internal_url = "http://127.0.0.1:9/simple/"
    status, body, _reason = api(
        server,
        "PUT",
        "/mallory/mirror",
        {"type": "mirror", "mirror_url": f"http://{ALLOWED_HOST}:9/simple/"},
    )
    assert status == 201, body

    for path in ("/mallory/dev", "/mallory/mirror"):
        status, _body, reason = api(
            server, "PATCH", path, {"mirror_url": internal_url}, auth=MALLORY
        )
        assert (status, reason) == (403, f"Cannot change {path[1:]}: {MIRROR_RIGHT}.")
        # devpi-client's `devpi index mallory/... mirror_url=...`
        operations = [f"mirror_url={internal_url}"]
        status, _body, reason = api(server, "PATCH", path, operations, auth=MALLORY)  # type: ignore[arg-type]
        assert (status, reason) == (403, f"Cannot change {path[1:]}: {MIRROR_RIGHT}.")

    form = {"title": "mine", "mirror_url": internal_url}
    status, _body, reason = web_form(server, "/mallory/mirror/+edit", form, MALLORY)
    assert (status, reason) == (403, f"Cannot change mallory/mirror: {MIRROR_RIGHT}.")

    status, body, _reason = api(server, "GET", "/mallory/mirror", auth=MALLORY)
    assert body["result"]["mirror_url"] == f"http://{ALLOWED_HOST}:9/simple/"
    # What she may change on her mirror, she still may (the URL sent back unchanged is no change).
    status, body, _reason = api(
        server, "PATCH", "/mallory/mirror", {**body["result"], "title": "Mine"}, auth=MALLORY
    )
    assert (status, body["result"]["title"]) == (200, "Mine")


def test_mirror_create_users_lets_ordinary_users_make_mirrors_and_the_cli_is_the_operator(
    server_factory,
):
    """MIRROR_CREATE=users opens mirror creation; the CLI is never asked (it is the operator)."""
    open_server: LiveServer = server_factory(MIRROR_CREATE="users")
    status, body, _reason = api(open_server, "PUT", "/mallory", {"password": MALLORY[1]})
    assert status == 201, body
    attempt = {"type": "mirror", "mirror_url": "http://127.0.0.1:9/simple/"}
    status, body, _reason = api(open_server, "PUT", "/mallory/mine", attempt, auth=MALLORY)
    assert status == 201, body

    # The CLI runs without MIRROR_CREATE (superuser by default): it is the operator.
    created = cli(
        open_server.data_dir,
        "index",
        "create",
        "root/cli",
        "type=mirror",
        "mirror_url=http://127.0.0.1:9/simple/",
    )
    assert created.returncode == 0, created.stderr


# --- (b) a superuser's mirror at a refused address ---------------------------------------------


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", REFUSED_LOOPBACK),
        ("localhost", "Upstream address refused: localhost resolves to a loopback address"),
        ("[::ffff:127.0.0.1]", "Upstream address refused: ::ffff:127.0.0.1 is a loopback address"),
        ("169.254.169.254", "Upstream address refused: 169.254.169.254 is a link-local address"),
        ("10.1.2.3", "Upstream address refused: 10.1.2.3 is a private address"),
        ("0.0.0.0", "Upstream address refused: 0.0.0.0 is an unspecified address"),  # noqa: S104
    ],
)
def test_a_superusers_mirror_at_an_internal_address_is_refused_before_connecting(
    server, internal, host, reason
):
    """502 with the refusal, no request reaches the internal server (not even the port probe
    whose 'connection refused' would tell an open port from a closed one)."""
    port = urlsplit(internal.base_url).port
    name = "m" + hashlib.sha256(host.encode()).hexdigest()[:8]
    make_mirror(server, f"root/{name}", f"http://{host}:{port}/simple/")
    internal.requests.clear()

    status, _headers, _body, got = server.get(f"/root/{name}/+simple/demo/")

    assert (status, got) == (502, f"Upstream failed and demo is not cached: {reason} {ALLOW_HINT}")
    assert internal.requests == []


# --- (c) file links and sidecars at refused addresses ------------------------------------------


def mirrored_file_path(server: LiveServer, index: str, project: str) -> str:
    """The +f path pyshelf lists for the wheel, from its JSON page."""
    status, _headers, body, reason = server.get(
        f"/{index}/+simple/{project}/", headers={"Accept": MIME_JSON}
    )
    assert (status, reason) == (200, "OK"), body
    (entry,) = json.loads(body)["files"]
    return urlsplit(entry["url"]).path


@pytest.mark.parametrize(
    ("project", "hashed", "host", "reason"),
    [
        ("hashed", True, "127.0.0.1", REFUSED_LOOPBACK),
        ("hashless", False, "127.0.0.1", REFUSED_LOOPBACK),  # would be streamed back as it is
        (
            "named",
            False,
            "localhost",
            "Upstream address refused: localhost resolves to a loopback address",
        ),
    ],
)
def test_file_links_at_an_internal_address_answer_502_and_reach_nothing(
    server, public, internal, project, hashed, host, reason
):
    """A public upstream's page may link files anywhere: an internal address is refused."""
    port = urlsplit(internal.base_url).port
    url = f"http://{host}:{port}/secret"
    public.page(project, [link(project, url, hashed=hashed)])
    index = f"root/files-{project}"
    make_mirror(server, index, public.base_url + "/simple/")
    path = mirrored_file_path(server, index, project)
    internal.requests.clear()

    status, _headers, body, got = server.get(path)

    filename = wheel(project)[0]
    assert (status, got) == (502, f"Upstream failed fetching {filename}: {reason} {ALLOW_HINT}")
    assert b"s3cr3t" not in body
    assert internal.requests == []


def test_a_core_metadata_sidecar_at_an_internal_address_is_refused(server, public, internal):
    """PEP 658: `<file URL>.metadata` is fetched from the same host as the file: refused too."""
    port = urlsplit(internal.base_url).port
    public.page(
        "sidecar",
        [link("sidecar", f"http://127.0.0.1:{port}/secret", metadata=True)],
    )
    make_mirror(server, "root/sidecar", public.base_url + "/simple/")
    path = mirrored_file_path(server, "root/sidecar", "sidecar")
    internal.requests.clear()

    status, _headers, _body, got = server.get(path + ".metadata")

    filename = wheel("sidecar")[0]
    reason = f"Upstream failed fetching {filename}.metadata: {REFUSED_LOOPBACK} {ALLOW_HINT}"
    assert (status, got) == (502, reason)
    assert internal.requests == []


def test_a_file_on_the_allowed_upstream_is_served(server, public):
    """The control: the same mirror serves a file its allowed upstream holds."""
    public.page("served", [link("served", host_file(public, "served"))])
    make_mirror(server, "root/served", public.base_url + "/simple/")

    status, _headers, body, _reason = server.get(
        mirrored_file_path(server, "root/served", "served")
    )

    assert (status, body) == (200, wheel("served")[1])


# --- (d) redirects -----------------------------------------------------------------------------


def test_a_redirect_from_the_allowed_upstream_to_an_internal_address_is_refused(
    server, public, internal
):
    """Every hop connects through the same check: a page or a file redirected inward is a 502."""
    public.redirect("/simple/bounce/", internal.base_url + "/secret")
    target = public.redirect("/files/bounce.whl", internal.base_url + "/secret")
    public.page("bounced-file", [link("bounced-file", target, hashed=False)])
    make_mirror(server, "root/bounce", public.base_url + "/simple/")
    internal.requests.clear()

    status, _headers, _body, reason = server.get("/root/bounce/+simple/bounce/")
    assert (status, reason) == (
        502,
        f"Upstream failed and bounce is not cached: {REFUSED_LOOPBACK} {ALLOW_HINT}",
    )

    status, _headers, _body, reason = server.get(
        mirrored_file_path(server, "root/bounce", "bounced-file")
    )
    assert (status, reason) == (
        502,
        f"Upstream failed fetching {wheel('bounced-file')[0]}: {REFUSED_LOOPBACK} {ALLOW_HINT}",
    )
    assert internal.requests == []
    assert "/simple/bounce/" in public.requests  # the allowed hop was made


# --- (f) /+status ------------------------------------------------------------------------------


def test_status_shows_upstream_errors_to_superusers_and_the_metrics_token_only(server, internal):
    """Anonymous callers and ordinary users see the state word, not the error text."""
    make_mirror(server, "root/statusprobe", internal.base_url + "/simple/")
    assert server.get("/root/statusprobe/+simple/demo/")[0] == 502

    def mirror_state(headers: dict[str, str]) -> dict[str, Any]:
        status, _headers, body, _reason = server.get("/+status", headers=headers)
        assert status == 200, body
        return json.loads(body)["mirrors"]["root/statusprobe"]

    for headers in ({}, {"Authorization": basic_auth(*MALLORY)}):
        shown = mirror_state(headers)
        assert shown["upstream"] == "failing"
        assert "last_error" not in shown
    for headers in (
        {"Authorization": basic_auth("admin", ADMIN_PASSWORD)},
        {"Authorization": f"Bearer {METRICS_TOKEN}"},
    ):
        shown = mirror_state(headers)
        assert shown["upstream"] == "failing"
        assert REFUSED_LOOPBACK in shown["last_error"]


# --- (e) MIRROR_FILE_HOSTS, and the operator's own MIRROR_URL ---------------------------------


def test_mirror_file_hosts_narrows_where_file_links_may_point(server_factory, public):
    """A public file host not on the list is refused (no request); the upstream's own host and
    a listed host are served."""
    elsewhere = Recorder("127.0.0.3")
    listed = Recorder("127.0.0.4")
    try:
        for project, recorder in (("off-list", elsewhere), ("on-list", listed), ("own", public)):
            public.page(project, [link(project, host_file(recorder, project))])
        narrow: LiveServer = server_factory(
            MIRROR_URL=public.base_url + "/simple/", MIRROR_FILE_HOSTS="127.0.0.4"
        )

        status, _headers, _body, reason = narrow.get(
            mirrored_file_path(narrow, "root/pypi", "off-list")
        )
        refusal = "Upstream address refused: file host 127.0.0.3 is not in MIRROR_FILE_HOSTS"
        filename = wheel("off-list")[0]
        assert (status, reason) == (502, f"Upstream failed fetching {filename}: {refusal}")
        assert elsewhere.requests == []
        for project in ("on-list", "own"):
            status, _headers, body, _reason = narrow.get(
                mirrored_file_path(narrow, "root/pypi", project)
            )
            assert (status, body) == (200, wheel(project)[1])
    finally:
        elsewhere.close()
        listed.close()


def test_the_operators_mirror_url_may_be_internal_but_nothing_else_rides_on_it(
    server_factory, internal
):
    """MIRROR_URL at 127.0.0.1 works without an allow list (the operator chose it); another
    index pointing elsewhere on that host, and a redirect off it, are refused."""
    other = Recorder("127.0.0.3")
    try:
        internal.page("trusted", [link("trusted", host_file(internal, "trusted"))])
        internal.redirect("/simple/moved/", other.base_url + "/simple/moved/")
        trusting: LiveServer = server_factory(
            MIRROR_URL=internal.base_url + "/simple/", UPSTREAM_ALLOW_PRIVATE=""
        )
        status, _headers, body, _reason = trusting.get(
            mirrored_file_path(trusting, "root/pypi", "trusted")
        )
        assert (status, body) == (200, wheel("trusted")[1])

        status, _headers, _body, reason = trusting.get("/root/pypi/+simple/moved/")
        refusal = "Upstream address refused: 127.0.0.3 is a loopback address"
        assert (status, reason) == (
            502,
            f"Upstream failed and moved is not cached: {refusal} {ALLOW_HINT}",
        )
        assert other.requests == []

        make_mirror(trusting, "root/sideways", internal.base_url + "/other/simple/")
        internal.requests.clear()
        status, _headers, _body, reason = trusting.get("/root/sideways/+simple/demo/")
        assert (status, reason) == (
            502,
            f"Upstream failed and demo is not cached: {REFUSED_LOOPBACK} {ALLOW_HINT}",
        )
        assert internal.requests == []
    finally:
        other.close()
