"""The simple repository API, /USER/INDEX/+simple/ (PEP 503, 592, 629, 658, 691, 700, 714)."""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from app.http.simple import MIME_HTML, MIME_JSON, MIME_TEXT_HTML, negotiate
from tests.builders import make_sdist, make_wheel
from tests.test_upload import fast_password_hashes, upload  # noqa: F401 - autouse fixture

PIP = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
UV = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
POETRY = "application/vnd.pypi.simple.v1+json, */*;q=0.1"
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"
JSON_ACCEPT = {"Accept": MIME_JSON}
WHEEL, WHEEL_BYTES = make_wheel("Demo.Pkg", "1.0.0", requires_python=">=3.8")
SDIST, SDIST_BYTES = make_sdist("Demo.Pkg", "1.0.0", requires_python=">=3.8")
UPLOAD_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")  # PEP 700


@pytest.mark.parametrize(
    ("accept", "format_param", "expected"),
    [
        pytest.param(PIP, None, MIME_JSON, id="pip"),
        pytest.param(UV, None, MIME_JSON, id="uv"),
        pytest.param(POETRY, None, MIME_JSON, id="poetry-legacy-source"),
        pytest.param(MIME_JSON, None, MIME_JSON, id="poetry-pypi-source"),
        pytest.param(None, None, MIME_TEXT_HTML, id="hatch-no-accept"),
        pytest.param("*/*", None, MIME_TEXT_HTML, id="hatch-httpx-default"),
        pytest.param(BROWSER, None, MIME_TEXT_HTML, id="browser"),
        pytest.param("", None, MIME_TEXT_HTML, id="empty-header"),
        pytest.param(MIME_HTML, None, MIME_HTML, id="v1-html"),
        pytest.param("text/html", None, MIME_TEXT_HTML, id="text-html"),
        pytest.param(f"{MIME_JSON};q=0.5, text/html", None, MIME_TEXT_HTML, id="q-beats-order"),
        pytest.param(f"text/html;q=0.2, {MIME_JSON};q=0.3", None, MIME_JSON, id="q-picks-json"),
        pytest.param(f"{MIME_HTML}, {MIME_JSON}", None, MIME_HTML, id="tie-prefers-html"),
        pytest.param(f"{MIME_JSON}, {MIME_HTML}", None, MIME_HTML, id="tie-ignores-order"),
        pytest.param("application/*", None, MIME_HTML, id="type-wildcard-prefers-v1-html"),
        pytest.param("text/*", None, MIME_TEXT_HTML, id="text-wildcard"),
        pytest.param(f"*/*;q=0.1, {MIME_JSON}", None, MIME_JSON, id="wildcard-low-q"),
        pytest.param("text/html;q=0, */*", None, MIME_HTML, id="q-zero-excludes-exact-type"),
        pytest.param(f"{MIME_JSON};q=0", None, MIME_TEXT_HTML, id="only-q-zero"),
        pytest.param("application/json;q=abc, text/html", None, MIME_TEXT_HTML, id="bad-q"),
        pytest.param(MIME_JSON.upper(), None, MIME_JSON, id="case-insensitive"),
        pytest.param(f"{MIME_JSON}; charset=utf-8", None, MIME_JSON, id="other-parameters"),
        pytest.param("application/vnd.pypi.simple.latest+json", None, MIME_JSON, id="latest-json"),
        pytest.param("application/vnd.pypi.simple.latest+html", None, MIME_HTML, id="latest-html"),
        pytest.param("application/xml", None, MIME_TEXT_HTML, id="nothing-acceptable"),
        pytest.param("image/png, application/json", None, MIME_TEXT_HTML, id="nothing-known"),
        pytest.param(None, MIME_JSON, MIME_JSON, id="format-without-accept"),
        pytest.param("text/html", MIME_JSON, MIME_JSON, id="format-beats-accept"),
        pytest.param(PIP, "text/html", MIME_TEXT_HTML, id="format-html-beats-pip"),
        pytest.param(
            None, "application/vnd.pypi.simple.latest+json", MIME_JSON, id="format-latest"
        ),
        pytest.param(PIP, "application/xml", MIME_JSON, id="unsupported-format-uses-accept"),
        pytest.param(PIP, f"{MIME_JSON};q=0.5", MIME_JSON, id="format-with-q-uses-accept"),
        pytest.param(
            "text/html", "application/vnd.pypi.simple.v1 json", MIME_JSON, id="format-plus-as-space"
        ),
    ],
)
def test_negotiate_picks_the_media_type_clients_expect(
    accept: str | None, format_param: str | None, expected: str
) -> None:
    """q-values decide, ties go text/html > v1+html > v1+json, else text/html (PEP 691)."""
    assert negotiate(accept, format_param) == expected


# --- helpers ---------------------------------------------------------------------------------


class Anchors(HTMLParser):
    """Collects (attributes, text) of every <a> and the meta tags of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self.meta: dict[str, str | None] = {}
        self._current: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._current, self._text = dict(attrs), []
        elif tag == "meta":
            found = dict(attrs)
            self.meta[str(found.get("name"))] = found.get("content")

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._current is not None:
            self.anchors.append((self._current, "".join(self._text)))
            self._current = None


def vary(response: Any) -> set[str]:
    """The header names a response varies on."""
    return {v.strip() for v in response.headers.get("Vary", "").split(",") if v.strip()}


def parse(body: str) -> Anchors:
    """Parse a simple page as pip does (html.parser, entities decoded)."""
    parser = Anchors()
    parser.feed(body)
    return parser


@pytest.fixture
def demo(client: Any, admin_auth: dict[str, str]) -> dict[str, bytes]:
    """Demo.Pkg 1.0.0 as a wheel and an sdist on admin/dev (Requires-Python >=3.8)."""
    for filename, content in ((WHEEL, WHEEL_BYTES), (SDIST, SDIST_BYTES)):
        response = upload(client, filename, content, headers=admin_auth)
        assert response.status == "200 OK"
    return {WHEEL: WHEEL_BYTES, SDIST: SDIST_BYTES}


@pytest.fixture
def solo(client: Any, admin_auth: dict[str, str]) -> str:
    """A stage index without bases, admin/solo."""
    response = client.put("/admin/solo", json={}, headers=admin_auth)
    assert response.status_code == 201
    return "/admin/solo/+simple"


class RecordingUpstream:
    """Wraps the app's upstream client and records every project it is asked for."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.projects: list[str] = []

    def fetch_project(self, url: str, name: str, **kwargs: Any) -> Any:
        self.projects.append(name)
        return self.inner.fetch_project(url, name, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def recorder(app: Any) -> RecordingUpstream:
    """Record the mirror's upstream requests (the upstream itself is dead: 127.0.0.1:9)."""
    mirror = app.extensions["pyshelf.mirror"]
    mirror.upstream = RecordingUpstream(mirror.upstream)
    return mirror.upstream


# --- project list ----------------------------------------------------------------------------


def test_project_list_html_links_each_project_relatively(client: Any, demo: dict) -> None:
    """One anchor per project, text = name, relative href to the project page (PEP 503, 629)."""
    response = client.get("/admin/dev/+simple/")

    assert response.status == "200 OK"
    assert response.content_type == "text/html; charset=utf-8"  # PEP 503
    body = response.get_data(as_text=True)
    assert body.startswith("<!DOCTYPE html>")
    page = parse(body)
    assert page.meta["pypi:repository-version"] == "1.4"
    assert page.anchors == [({"href": "demo-pkg/"}, "Demo.Pkg")]


def test_project_list_json_has_meta_and_project_names(client: Any, demo: dict) -> None:
    """The PEP 691 list: meta.api-version and projects[].name only (PEP 503, 691)."""
    response = client.get("/admin/dev/+simple/", headers=JSON_ACCEPT)

    assert response.status == "200 OK"
    assert response.content_type == MIME_JSON
    assert response.get_json() == {
        "meta": {"api-version": "1.4"},
        "projects": [{"name": "Demo.Pkg"}],
    }
    assert "Accept" in vary(response)  # RFC 9110 §12.5.5


def test_project_list_of_an_empty_index_is_empty(client: Any, solo: str) -> None:
    """An index with no projects still answers 200 with an empty list."""
    response = client.get(f"{solo}/", headers=JSON_ACCEPT)

    assert response.status == "200 OK"
    assert response.get_json()["projects"] == []


# --- project page ----------------------------------------------------------------------------


def test_project_page_html_has_one_anchor_per_file_with_the_required_attributes(
    client: Any, demo: dict[str, bytes]
) -> None:
    """Text = filename = last href segment, #sha256, requires-python, core-metadata (PEP 658)."""
    response = client.get("/admin/dev/+simple/demo-pkg/")

    assert response.status == "200 OK"
    assert response.content_type == "text/html; charset=utf-8"  # PEP 503, 691
    body = response.get_data(as_text=True)
    assert body.startswith("<!DOCTYPE html>")
    assert body.count('name="pypi:repository-version" content="1.4"') == 1  # PEP 629
    assert 'data-requires-python="&gt;=3.8"' in body  # PEP 503: escaped in the markup
    page = parse(body)
    assert sorted(text for _attrs, text in page.anchors) == sorted(demo)
    for attrs, text in page.anchors:
        href = str(attrs["href"])
        url = urlsplit(href)
        assert unquote(url.path.rsplit("/", 1)[1]) == text  # PEP 503
        assert url.query == ""  # PEP 658
        assert url.fragment == f"sha256={hashlib.sha256(demo[text]).hexdigest()}"  # PEP 503
        assert attrs["data-requires-python"] == ">=3.8"  # PEP 503
        assert "data-yanked" not in attrs
        if text.endswith(".whl"):
            value = str(attrs["data-core-metadata"])
            assert re.fullmatch(r"sha256=[0-9a-f]{64}", value)  # PEP 658
            assert attrs["data-dist-info-metadata"] == value  # PEP 658: PEP 714 alias agrees
        else:
            assert "data-core-metadata" not in attrs  # PEP 658
            assert "data-dist-info-metadata" not in attrs


def test_project_page_json_has_the_pep_691_and_700_keys(
    client: Any, demo: dict[str, bytes]
) -> None:
    """name, versions, files with filename/url/hashes/size/upload-time/... (PEP 691, 700)."""
    response = client.get("/admin/dev/+simple/demo-pkg/", headers=JSON_ACCEPT)

    assert response.status == "200 OK"
    assert response.content_type == MIME_JSON  # PEP 691: exact, uv needs it
    doc = response.get_json()
    assert doc["meta"] == {"api-version": "1.4"}  # PEP 691
    assert doc["name"] == "demo-pkg"  # PEP 691: normalized
    assert doc["versions"] == ["1.0.0"]  # PEP 700
    assert sorted(f["filename"] for f in doc["files"]) == sorted(demo)
    for entry in doc["files"]:
        content = demo[entry["filename"]]
        assert "dist-info-metadata" not in entry  # PEP 714
        assert entry["hashes"] == {"sha256": hashlib.sha256(content).hexdigest()}  # PEP 691
        assert entry["size"] == len(content)  # PEP 700
        assert UPLOAD_TIME_RE.match(entry["upload-time"])  # PEP 700
        assert entry["requires-python"] == ">=3.8"  # PEP 691: not escaped
        assert entry["yanked"] is False  # PEP 592
        assert "?" not in entry["url"]  # PEP 658
        assert unquote(entry["url"].rsplit("/", 1)[1]) == entry["filename"]
        if entry["filename"].endswith(".whl"):
            assert re.fullmatch(r"[0-9a-f]{64}", entry["core-metadata"]["sha256"])  # PEP 714
        else:
            assert entry["core-metadata"] is False  # PEP 658


def test_file_urls_of_the_page_serve_the_hashed_bytes_and_the_sidecar(
    client: Any, demo: dict[str, bytes]
) -> None:
    """Each URL serves exactly the hashed bytes; the wheel's sidecar matches its hash (PEP 658)."""
    doc = client.get("/admin/dev/+simple/demo-pkg/", headers=JSON_ACCEPT).get_json()

    for entry in doc["files"]:
        served = client.get(entry["url"])
        assert served.status == "200 OK"
        assert served.data == demo[entry["filename"]]
        assert int(served.headers["Content-Length"]) == entry["size"]  # PEP 700
        assert "Content-Encoding" not in served.headers
        if entry["core-metadata"]:
            sidecar = client.get(entry["url"] + ".metadata")
            assert sidecar.status == "200 OK"
            assert hashlib.sha256(sidecar.data).hexdigest() == entry["core-metadata"]["sha256"]


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (MIME_JSON, MIME_JSON),
        (MIME_HTML, f"{MIME_HTML}; charset=utf-8"),
        ("text/html", "text/html; charset=utf-8"),
        (PIP, MIME_JSON),
        ("application/xml", "text/html; charset=utf-8"),
    ],
)
def test_project_page_answers_the_negotiated_content_type(
    client: Any, demo: dict, accept: str, content_type: str
) -> None:
    """The response always carries the chosen Content-Type (PEP 691)."""
    response = client.get("/admin/dev/+simple/demo-pkg/", headers={"Accept": accept})

    assert response.status == "200 OK"
    assert response.headers["Content-Type"] == content_type
    assert "Accept" in vary(response)  # RFC 9110 §12.5.5


def test_format_query_parameter_overrides_accept(client: Any, demo: dict) -> None:
    """`?format=` takes precedence over Accept (PEP 691)."""
    response = client.get(
        f"/admin/dev/+simple/demo-pkg/?format={MIME_JSON}", headers={"Accept": "text/html"}
    )

    assert response.content_type == MIME_JSON
    assert response.get_json()["name"] == "demo-pkg"


def test_requires_python_and_yank_reasons_are_escaped_in_html(
    client: Any, admin_auth: dict[str, str]
) -> None:
    """Attributes are HTML-escaped, JSON carries raw values; no reason is "" / true (PEP 592)."""
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        filename, content = make_wheel("Demo.Pkg", version, requires_python='>=3.8,<4,!="3.9"')
        assert upload(client, filename, content, headers=admin_auth).status == "200 OK"
    reason = 'broken <build> & "bad"'
    yanks = {"2.0.0": {"yanked": True, "reason": reason}, "3.0.0": {"yanked": True}}
    for version, body in yanks.items():
        response = client.patch(f"/admin/dev/demo-pkg/{version}", json=body, headers=admin_auth)
        assert response.status_code == 200

    body = client.get("/admin/dev/+simple/demo-pkg/").get_data(as_text=True)
    doc = client.get("/admin/dev/+simple/demo-pkg/", headers=JSON_ACCEPT).get_json()

    lines = {
        re.search(r">([^<]+)</a>", line).group(1): line  # type: ignore[union-attr]
        for line in body.splitlines()
        if "<a " in line
    }
    assert (
        'data-requires-python="&gt;=3.8,&lt;4,!=&quot;3.9&quot;"'
        in lines["demo_pkg-1.0.0-py3-none-any.whl"]
    )
    assert "data-yanked" not in lines["demo_pkg-1.0.0-py3-none-any.whl"]
    assert (
        'data-yanked="broken &lt;build&gt; &amp; &quot;bad&quot;"'
        in lines["demo_pkg-2.0.0-py3-none-any.whl"]
    )
    assert 'data-yanked=""' in lines["demo_pkg-3.0.0-py3-none-any.whl"]
    yanked = {f["filename"]: f["yanked"] for f in doc["files"]}
    assert yanked == {
        "demo_pkg-1.0.0-py3-none-any.whl": False,
        "demo_pkg-2.0.0-py3-none-any.whl": reason,
        "demo_pkg-3.0.0-py3-none-any.whl": True,  # PEP 592: never ""
    }
    assert {f["requires-python"] for f in doc["files"]} == {'>=3.8,<4,!="3.9"'}
    parsed = parse(body)
    assert {text: attrs.get("data-yanked") for attrs, text in parsed.anchors} == {
        "demo_pkg-1.0.0-py3-none-any.whl": None,
        "demo_pkg-2.0.0-py3-none-any.whl": reason,
        "demo_pkg-3.0.0-py3-none-any.whl": "",  # PEP 592: a value, so pip sees it
    }


def test_local_version_filenames_are_percent_encoded_once(
    client: Any, admin_auth: dict[str, str]
) -> None:
    """'+' becomes %2B in hrefs; the file route serves both spellings (PEP 503, 658)."""
    filename, content = make_wheel("Demo.Pkg", "1.0.0+cpu")
    assert upload(client, filename, content, headers=admin_auth).status == "200 OK"

    doc = client.get("/admin/dev/+simple/demo-pkg/", headers=JSON_ACCEPT).get_json()
    page = parse(client.get("/admin/dev/+simple/demo-pkg/").get_data(as_text=True))

    url = doc["files"][0]["url"]
    assert url.endswith("/demo_pkg-1.0.0%2Bcpu-py3-none-any.whl")
    assert doc["versions"] == ["1.0.0+cpu"]
    assert page.anchors[0][1] == filename
    assert unquote(urlsplit(str(page.anchors[0][0]["href"])).path).endswith(filename)
    for spelling in (url, url.replace("%2B", "+")):
        assert client.get(spelling).data == content
    assert client.get(url + ".metadata").status == "200 OK"


def test_project_page_title_shows_the_display_name(client: Any, admin_auth: dict[str, str]) -> None:
    """The page names the project as uploaded, not normalized."""
    filename, content = make_wheel("Demo.Pkg", "1.0.0")
    upload(client, filename, content, headers=admin_auth)

    body = client.get("/admin/dev/+simple/demo-pkg/").get_data(as_text=True)

    assert "<title>Links for Demo.Pkg</title>" in body
    assert "<h1>Links for Demo.Pkg</h1>" in body


# --- redirects -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "target"),
    [
        pytest.param("/admin/dev/+simple", "/admin/dev/+simple/", id="list-without-slash"),
        pytest.param("/admin/dev/+simple/demo-pkg", "/admin/dev/+simple/demo-pkg/", id="no-slash"),
        pytest.param(
            "/admin/dev/+simple/Demo_Pkg/", "/admin/dev/+simple/demo-pkg/", id="not-normalized"
        ),
        pytest.param(
            "/admin/dev/+simple/Demo.Pkg", "/admin/dev/+simple/demo-pkg/", id="both-in-one-hop"
        ),
        pytest.param(
            "/admin/dev/+simple/demo--pkg/", "/admin/dev/+simple/demo-pkg/", id="runs-of-dashes"
        ),
    ],
)
def test_non_canonical_urls_redirect_permanently_in_one_hop(
    client: Any, demo: dict, path: str, target: str
) -> None:
    """301 to the normalized name with a trailing slash, never content at another URL (PEP 503)."""
    response = client.get(path)

    assert response.status_code == 301
    assert urlsplit(response.headers["Location"]).path == target
    assert client.get(target).status_code == 200


# --- conditional requests --------------------------------------------------------------------


def test_matching_etag_gives_304_with_vary_and_cache_control(client: Any, demo: dict) -> None:
    """If-None-Match -> 304 with the same ETag, Cache-Control, Vary, no body (RFC 9110 §13.1.2)."""
    first = client.get("/admin/dev/+simple/demo-pkg/", headers=JSON_ACCEPT)
    etag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == "no-cache"  # RFC 9111 §5.2: uploads show at once

    again = client.get(
        "/admin/dev/+simple/demo-pkg/", headers={**JSON_ACCEPT, "If-None-Match": etag}
    )

    assert again.status_code == 304
    assert again.data == b""
    assert again.headers["ETag"] == etag
    assert "Accept" in vary(again)  # RFC 9110 §12.5.5
    assert again.headers["Cache-Control"] == "no-cache"


def test_each_representation_has_its_own_etag(client: Any, demo: dict) -> None:
    """HTML and JSON of one page differ, so must their validators (RFC 9110 §13.1.2)."""
    json_etag = client.get("/admin/dev/+simple/demo-pkg/", headers=JSON_ACCEPT).headers["ETag"]
    html = client.get("/admin/dev/+simple/demo-pkg/", headers={"If-None-Match": json_etag})

    assert html.status_code == 200
    assert html.headers["ETag"] != json_etag


def test_etag_changes_when_a_file_is_uploaded(
    client: Any, demo: dict, admin_auth: dict[str, str]
) -> None:
    """A new upload invalidates the old validator, so revalidating clients see it."""
    etag = client.get("/admin/dev/+simple/demo-pkg/", headers=JSON_ACCEPT).headers["ETag"]
    filename, content = make_wheel("Demo.Pkg", "1.0.1")
    upload(client, filename, content, headers=admin_auth)

    response = client.get(
        "/admin/dev/+simple/demo-pkg/", headers={**JSON_ACCEPT, "If-None-Match": etag}
    )

    assert response.status_code == 200
    assert response.get_json()["versions"] == ["1.0.0", "1.0.1"]


# --- errors ----------------------------------------------------------------------------------


def test_unknown_project_on_an_index_without_bases_is_404_and_not_stored(
    client: Any, solo: str, recorder: RecordingUpstream
) -> None:
    """Unknown names are a plain 404, the only status that lets uv try the next index."""
    response = client.get(f"{solo}/no-such-project/", headers={"Accept": PIP})

    assert response.status == "404 Project no-such-project is not on index admin/solo."
    assert response.headers["Cache-Control"] == "no-store"
    assert recorder.projects == []


def test_unknown_index_is_404(client: Any) -> None:
    """A missing index is a 404 too, for the list and for project pages."""
    assert client.get("/nobody/nothing/+simple/").status == (
        "404 Index nobody/nothing does not exist."
    )
    assert client.get("/nobody/nothing/+simple/demo-pkg/").status_code == 404


def test_unknown_project_with_a_dead_upstream_is_502_with_retry_after(
    client: Any, recorder: RecordingUpstream
) -> None:
    """Upstream down and nothing cached: 502 + Retry-After, never a cacheable 404 (RFC 5861 §4)."""
    response = client.get("/admin/dev/+simple/no-such-project/", headers={"Accept": PIP})

    assert response.status_code == 502
    assert response.status.startswith("502 Upstream failed and no-such-project is not cached")
    assert response.headers["Retry-After"] == "30"
    assert response.headers["Cache-Control"] == "no-store"  # RFC 9111 §5.2.2.5
    assert recorder.projects == ["no-such-project"]


def test_private_project_is_served_without_asking_the_upstream(
    client: Any, demo: dict, recorder: RecordingUpstream
) -> None:
    """A name held by the stage skips the mirror base entirely: no upstream call, no 502."""
    response = client.get("/admin/dev/+simple/demo-pkg/", headers=JSON_ACCEPT)

    assert response.status == "200 OK"
    assert sorted(f["filename"] for f in response.get_json()["files"]) == sorted(demo)
    assert recorder.projects == []


@pytest.mark.parametrize(
    "path", ["/admin/dev/+simple/", "/admin/dev/+simple/demo-pkg/", "/admin/dev/+simple"]
)
def test_post_to_the_simple_index_is_405_with_allow(client: Any, path: str) -> None:
    """Uploading to the index URL instead of /USER/INDEX/ gets 405 + Allow."""
    response = client.post(path, data={":action": "file_upload"})

    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]
    assert "HEAD" in response.headers["Allow"]
    assert "POST" not in response.headers["Allow"]
