"""Tests of app/core/upstream*.py (the upstream HTTP client and its parsers) and of the fake
upstream."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from urllib.parse import urldefrag, urljoin

import pytest
import requests

from app.core import upstream_pages
from app.core.upstream import (
    UpstreamError,
    UpstreamFile,
    UpstreamNotFound,
    UpstreamTimeout,
    mask_url,
    url_origin,
)
from app.core.upstream_client import ACCEPT_PAGE, UpstreamClient, iter_raw
from app.core.upstream_pages import normalize_upload_time, parse_html_page, parse_json_page
from tests.conftest import TEST_ALLOW_PRIVATE
from tests.fake_upstream import MIME_HTML, MIME_JSON, FakeUpstream, negotiate

PAGE = "https://upstream.test/simple/demo-pkg/"
HEX = "ab" * 32
HEX_UPPER = "AB" * 32
METADATA = b"Metadata-Version: 2.1\nName: Demo.Pkg\nVersion: 1.0.0\nRequires-Python: >=3.8\n"
YANK_REASON = 'broken <build> & "bad"'
WHEEL_1 = "demo_pkg-1.0.0-py3-none-any.whl"
SDIST_1 = "demo_pkg-1.0.0.tar.gz"
WHEEL_2 = "demo_pkg-2.0.0-py3-none-any.whl"
WHEEL_3 = "demo_pkg-3.0.0-py3-none-any.whl"
WHEEL_LOCAL = "demo_pkg-4.0.0+local.1-py3-none-any.whl"  # '+' is percent-encoded in hrefs


def blob(seed: str, size_bytes: int = 4096) -> bytes:
    """Deterministic bytes that do not compress to nothing."""
    chunks = (hashlib.sha256(f"{seed}-{i}".encode()).digest() for i in range(size_bytes // 32 + 1))
    return b"".join(chunks)[:size_bytes]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    """A fake upstream holding Demo.Pkg; it must never be asked for its project list."""
    with FakeUpstream() as upstream:
        upstream.add_file(
            "Demo.Pkg",
            SDIST_1,
            blob("sdist1"),
            requires_python=">=3.8",
            upload_time="2024-01-02T03:04:05.123456Z",
        )
        upstream.add_file(
            "Demo.Pkg",
            WHEEL_1,
            blob("wheel1"),
            requires_python=">=3.8",
            upload_time="2024-01-02T03:04:06Z",
            metadata=METADATA,
        )
        upstream.add_file(
            "Demo.Pkg", WHEEL_2, blob("wheel2"), requires_python="<4,>=3.8", yanked=YANK_REASON
        )
        upstream.add_file("Demo.Pkg", WHEEL_3, blob("wheel3"), yanked=True)
        upstream.add_file("Demo.Pkg", WHEEL_LOCAL, blob("local"))
        yield upstream
        assert upstream.requests["/simple/"] == 0, "the full project list was requested"


@pytest.fixture
def client() -> Iterator[UpstreamClient]:
    """A client with short timeouts and almost no backoff."""
    upstream_client = UpstreamClient(
        connect_timeout_seconds=2,
        read_timeout_seconds=2,
        retries=2,
        backoff_seconds=0.01,
        allow_private=TEST_ALLOW_PRIVATE,
    )
    yield upstream_client
    upstream_client.close()


def by_name(files: list[UpstreamFile]) -> dict[str, UpstreamFile]:
    return {f.filename: f for f in files}


def with_credentials(url: str, user: str, password: str) -> str:
    return url.replace("http://", f"http://{user}:{password}@", 1)


# --- fetch_project against the fake upstream ----------------------------------------------


def test_json_page_gives_every_field_of_every_file(fake, client):
    page = client.fetch_project(fake.url, "demo-pkg")

    assert page is not None
    assert page.name == "demo-pkg"
    assert page.status is None
    assert page.etag
    assert page.last_modified
    files = by_name(page.files)
    assert list(files) == [SDIST_1, WHEEL_1, WHEEL_2, WHEEL_3, WHEEL_LOCAL]
    assert files[WHEEL_1] == UpstreamFile(
        filename=WHEEL_1,
        url=fake.file_url(WHEEL_1),
        sha256=sha(blob("wheel1")),
        requires_python=">=3.8",
        yanked=False,
        upload_time="2024-01-02T03:04:06Z",
        size=4096,
        core_metadata=sha(METADATA),
    )
    assert files[SDIST_1].upload_time == "2024-01-02T03:04:05.123456Z"
    assert files[WHEEL_2].yanked == YANK_REASON
    assert files[WHEEL_2].requires_python == "<4,>=3.8"
    assert files[WHEEL_3].yanked is True
    assert files[WHEEL_3].core_metadata is False


def test_json_and_html_pages_give_the_same_files(fake, client):
    from_json = client.fetch_project(fake.url, "demo-pkg")
    fake.html_only = True
    from_html = client.fetch_project(fake.url, "demo-pkg")

    assert from_json is not None
    assert from_html is not None
    # HTML has no size and (on PyPI) no upload time (PEP 691); everything else must agree.
    expected = [dataclasses.replace(f, size=None, upload_time=None) for f in from_json.files]
    assert from_html.files == expected
    assert from_html.name == "demo-pkg"


def test_fetch_asks_for_json_first_with_the_pep_691_accept_header(fake, client):
    client.fetch_project(fake.url, "demo-pkg")

    (headers,) = fake.headers_for("/simple/demo-pkg/")
    assert headers["accept"] == ACCEPT_PAGE
    assert negotiate(headers["accept"]) == MIME_JSON


def test_html_file_urls_are_resolved_against_the_final_url_after_a_redirect(fake, client):
    fake.html_only = True
    fake.add_redirect("/moved/simple/demo-pkg/", "/simple/demo-pkg/")

    page = client.fetch_project(f"{fake.base_url}/moved/simple", "demo-pkg")

    assert page is not None
    # ../../files/... from /moved/simple/demo-pkg/ would land under /moved/.
    assert {f.url for f in page.files} == {fake.file_url(f.filename) for f in page.files}
    assert fake.count("/moved/") == 1
    assert fake.count("/simple/demo-pkg/") == 1


def test_percent_encoded_filenames_are_decoded_and_urls_kept_encoded(fake, client):
    fake.html_only = True
    page = client.fetch_project(fake.url, "demo-pkg")

    assert page is not None
    local = by_name(page.files)[WHEEL_LOCAL]
    assert local.url.endswith("/demo_pkg-4.0.0%2Blocal.1-py3-none-any.whl")


@pytest.mark.parametrize("html_only", [False, True], ids=["json", "html"])
def test_a_matching_etag_gives_none_and_a_changed_page_gives_a_new_one(fake, client, html_only):
    fake.html_only = html_only
    first = client.fetch_project(fake.url, "demo-pkg")
    assert first is not None
    assert first.etag

    assert client.fetch_project(fake.url, "demo-pkg", etag=first.etag) is None
    assert fake.headers_for("/simple/demo-pkg/")[-1]["if-none-match"] == first.etag

    fake.add_file("Demo.Pkg", "demo_pkg-5.0.0.tar.gz", blob("five"))
    changed = client.fetch_project(fake.url, "demo-pkg", etag=first.etag)
    assert changed is not None
    assert changed.etag != first.etag
    assert "demo_pkg-5.0.0.tar.gz" in by_name(changed.files)


def test_an_unchanged_last_modified_gives_none(fake, client):
    first = client.fetch_project(fake.url, "demo-pkg")
    assert first is not None
    assert first.last_modified

    assert client.fetch_project(fake.url, "demo-pkg", last_modified=first.last_modified) is None
    assert fake.headers_for("/simple/demo-pkg/")[-1]["if-modified-since"] == first.last_modified


def test_an_unknown_project_raises_not_found_without_retrying(fake, client):
    with pytest.raises(UpstreamNotFound) as caught:
        client.fetch_project(fake.url, "no-such-project")

    assert str(caught.value) == f"{fake.url}no-such-project/: HTTP 404 Not Found"
    assert caught.value.status_code == 404
    assert fake.count("/simple/no-such-project/") == 1


def test_a_503_is_retried_then_raises_upstream_error(fake, client):
    fake.fail("503")

    with pytest.raises(UpstreamError) as caught:
        client.fetch_project(fake.url, "demo-pkg")

    assert type(caught.value) is UpstreamError
    message = f"{fake.url}demo-pkg/: HTTP 503 Service Unavailable (after 3 attempts)"
    assert str(caught.value) == message
    assert caught.value.status_code == 503
    assert fake.count("/simple/demo-pkg/") == 3  # retries=2


def test_a_transient_503_is_retried_until_the_page_arrives(fake, client):
    fake.fail("503", times=2)

    page = client.fetch_project(fake.url, "demo-pkg")

    assert page is not None
    assert len(page.files) == 5
    assert fake.count("/simple/demo-pkg/") == 3


def test_no_retries_means_exactly_one_attempt(fake):
    fake.fail("503")
    single = UpstreamClient(retries=0, backoff_seconds=0.01, allow_private=TEST_ALLOW_PRIVATE)

    with pytest.raises(UpstreamError, match=r"HTTP 503 Service Unavailable$"):
        single.fetch_project(fake.url, "demo-pkg")
    assert fake.count("/simple/demo-pkg/") == 1


def test_a_connection_reset_is_retried_then_raises_upstream_error(fake, client):
    fake.fail("reset")

    with pytest.raises(UpstreamError, match=r"connection failed: .*\(after 3 attempts\)$"):
        client.fetch_project(fake.url, "demo-pkg")
    assert fake.count("/simple/demo-pkg/") == 3


def test_a_refused_connection_raises_upstream_error(client):
    with FakeUpstream() as gone:
        url = gone.url

    with pytest.raises(UpstreamError, match=r"connection failed: Connection refused") as caught:
        client.fetch_project(url, "demo-pkg")
    assert type(caught.value) is UpstreamError


def test_an_upstream_that_never_accepts_raises_timeout_after_retrying_the_connect():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):  # fill the accept queue until the kernel drops SYNs
                filler = socket.socket()
                fillers.append(filler)
                filler.settimeout(0.2)
                try:
                    filler.connect(("127.0.0.1", port))
                except TimeoutError:
                    break
            else:
                pytest.skip("this kernel never lets a connect to a full listener time out")
            impatient = UpstreamClient(
                connect_timeout_seconds=0.2,
                retries=1,
                backoff_seconds=0.01,
                allow_private=TEST_ALLOW_PRIVATE,
            )

            with pytest.raises(UpstreamTimeout) as caught:
                impatient.fetch_project(f"http://127.0.0.1:{port}/simple/", "demo-pkg")
        finally:
            for filler in fillers:
                filler.close()

    message = f"http://127.0.0.1:{port}/simple/demo-pkg/: connect timeout after 0.2s"
    assert str(caught.value) == f"{message} (after 2 attempts)"


def test_a_slow_upstream_raises_timeout_within_the_read_timeout(fake):
    fake.delay_seconds = 5
    impatient = UpstreamClient(
        read_timeout_seconds=0.3, retries=2, backoff_seconds=0.01, allow_private=TEST_ALLOW_PRIVATE
    )
    started = time.monotonic()

    with pytest.raises(UpstreamTimeout, match=r"read timeout after 0\.3s$"):
        impatient.fetch_project(fake.url, "demo-pkg")

    assert time.monotonic() - started < 2
    assert fake.count("/simple/demo-pkg/") == 1  # a read timeout is not retried


def test_an_unsupported_content_type_raises_upstream_error(fake, client):
    fake.add_redirect("/odd/simple/demo-pkg/", fake.file_url(WHEEL_1))

    with pytest.raises(UpstreamError, match=r"unsupported Content-Type 'application/octet-stream'"):
        client.fetch_project(f"{fake.base_url}/odd/simple/", "demo-pkg")


@pytest.mark.parametrize("name", ["Demo.Pkg", "demo_pkg", "demo--pkg", "../etc"])
def test_a_name_that_is_not_normalized_is_a_caller_bug(fake, client, name):
    with pytest.raises(ValueError, match="not a normalized project name"):
        client.fetch_project(fake.url, name)
    assert fake.count() == 0


@pytest.mark.parametrize("name", ["-demo", "demo-", "", "demo-pkg/", "a b", "a%2fb", "ünï"])
def test_a_name_no_project_can_have_is_not_found_without_a_request(fake, client, name):
    with pytest.raises(UpstreamNotFound, match=r"not a valid project name$"):
        client.fetch_project(fake.url, name)
    assert fake.count() == 0


@pytest.mark.parametrize("simple_url", ["ftp://host/simple/", "/simple/", "http://[::1/simple/"])
def test_a_simple_url_that_is_not_http_raises_upstream_error(client, simple_url):
    with pytest.raises(UpstreamError):
        client.fetch_project(simple_url, "demo-pkg")


def test_the_project_status_is_read_from_json_and_html(fake, client):
    fake.set_status("Demo.Pkg", "archived", "moved elsewhere")

    from_json = client.fetch_project(fake.url, "demo-pkg")
    fake.html_only = True
    from_html = client.fetch_project(fake.url, "demo-pkg")

    assert from_json is not None
    assert from_html is not None
    assert from_json.status == from_html.status == "archived"
    assert from_json.status_reason == from_html.status_reason == "moved elsewhere"


# --- credentials --------------------------------------------------------------------------


def test_credentials_in_the_simple_url_are_sent_as_a_basic_auth_header(fake, client):
    fake.basic_auth = ("alice", "p@ss:word")
    simple_url = with_credentials(fake.url, "alice", "p%40ss%3Aword")

    page = client.fetch_project(simple_url, "demo-pkg")

    assert page is not None
    assert len(page.files) == 5
    token = base64.b64encode(b"alice:p@ss:word").decode()
    (headers,) = fake.headers_for("/simple/demo-pkg/")
    assert headers["authorization"] == f"Basic {token}"
    assert all(f.url.startswith(fake.base_url) for f in page.files)  # no userinfo in URLs


def test_missing_credentials_give_upstream_error_not_not_found(fake, client):
    fake.basic_auth = ("alice", "secret")

    with pytest.raises(UpstreamError, match=r"HTTP 401 Unauthorized$") as caught:
        client.fetch_project(fake.url, "demo-pkg")
    assert not isinstance(caught.value, UpstreamNotFound)


@pytest.mark.parametrize("mode", [None, "503", "reset"])
def test_credentials_never_appear_in_error_messages(fake, client, mode):
    fake.basic_auth = ("alice", "right")
    fake.fail(mode)
    simple_url = with_credentials(fake.url, "alice", "wrong-s3cret")

    with pytest.raises(UpstreamError) as caught:
        client.fetch_project(simple_url, "demo-pkg")

    text = f"{caught.value} {caught.value.url} {caught.value!r}"
    assert "wrong-s3cret" not in text
    assert "alice" not in text
    assert str(caught.value).startswith("http://***:***@127.0.0.1:")


def test_index_credentials_are_sent_for_files_on_the_same_host_only(fake, client):
    fake.basic_auth = ("alice", "secret")
    simple_url = with_credentials(fake.url, "alice", "secret")
    with FakeUpstream() as elsewhere:
        elsewhere.add_file("other", "other-1.0.tar.gz", b"other bytes")

        with client.open_file(fake.file_url(WHEEL_1), simple_url=simple_url) as response:
            assert b"".join(iter_raw(response)) == blob("wheel1")
        with client.open_file(elsewhere.file_url("other-1.0.tar.gz"), simple_url=simple_url) as r:
            assert b"".join(iter_raw(r)) == b"other bytes"

        assert "authorization" not in elsewhere.headers_for("/files/")[0]
    assert fake.headers_for("/files/")[0]["authorization"].startswith("Basic ")


def test_credentials_in_a_file_url_are_sent_as_a_header_and_masked(fake, client):
    fake.basic_auth = ("bob", "hunter2")

    with client.open_file(with_credentials(fake.file_url(WHEEL_1), "bob", "hunter2")) as response:
        assert b"".join(iter_raw(response)) == blob("wheel1")
    with pytest.raises(UpstreamError) as caught:
        client.open_file(with_credentials(fake.file_url(WHEEL_1), "bob", "wrong"))
    assert "wrong" not in str(caught.value)
    assert "***:***@" in str(caught.value)


# --- open_file --------------------------------------------------------------------------


def test_open_file_streams_the_exact_bytes_and_asks_for_identity_encoding(fake, client):
    assert fake.gzip_when_accepted  # the fake would gzip the file if the client allowed it

    with client.open_file(fake.file_url(WHEEL_1)) as response:
        data = b"".join(iter_raw(response, chunk_bytes=1000))

    assert data == blob("wheel1")
    (headers,) = fake.headers_for("/files/")
    assert headers["accept-encoding"] == "identity"


def test_the_metadata_sidecar_matches_the_advertised_hash(fake, client):
    page = client.fetch_project(fake.url, "demo-pkg")
    assert page is not None
    wheel = by_name(page.files)[WHEEL_1]

    with client.open_file(wheel.url + ".metadata") as response:
        data = b"".join(iter_raw(response))

    assert data == METADATA
    assert sha(data) == wheel.core_metadata


def test_open_file_of_a_missing_file_raises_not_found(fake, client):
    with pytest.raises(UpstreamNotFound, match=r"HTTP 404 Not Found$"):
        client.open_file(f"{fake.base_url}/files/nothing/nothing-1.0.tar.gz")


def test_open_file_retries_a_503_before_the_response_starts(fake, client):
    fake.fail("503", times=1)

    with client.open_file(fake.file_url(WHEEL_1)) as response:
        assert b"".join(iter_raw(response)) == blob("wheel1")
    assert fake.count("/files/") == 2


def test_a_truncated_download_raises_upstream_error_while_streaming(fake, client):
    fake.truncate.add(WHEEL_1)

    with (
        client.open_file(fake.file_url(WHEEL_1)) as response,
        pytest.raises(UpstreamError, match="download interrupted"),
    ):
        b"".join(iter_raw(response))


def test_a_corrupt_file_keeps_its_length_but_not_its_hash(fake, client):
    fake.corrupt.add(WHEEL_1)

    with client.open_file(fake.file_url(WHEEL_1)) as response:
        data = b"".join(iter_raw(response))

    assert len(data) == 4096
    assert sha(data) != sha(blob("wheel1"))


def test_a_throttled_download_can_be_caught_mid_flight_and_the_fake_still_stops(client):
    upstream = FakeUpstream().start()
    try:
        upstream.add_file("big", "big-1.0.tar.gz", blob("big", 400_000))
        upstream.throttle_bytes_per_second = 100_000
        started = time.monotonic()
        response = client.open_file(upstream.file_url("big-1.0.tar.gz"))
        first = next(iter_raw(response, chunk_bytes=1024))
        assert len(first) == 1024
        assert time.monotonic() - started < 1.5  # the whole file takes 4 s
    finally:
        stop_started = time.monotonic()
        upstream.stop()
        assert time.monotonic() - stop_started < 2
    with pytest.raises(UpstreamError):
        b"".join(iter_raw(response))
    response.close()


def test_a_slow_file_raises_timeout_while_streaming(fake):
    impatient = UpstreamClient(
        read_timeout_seconds=0.3, backoff_seconds=0.01, allow_private=TEST_ALLOW_PRIVATE
    )
    fake.add_file("big", "big-1.0.tar.gz", blob("big", 100_000))
    fake.throttle_bytes_per_second = 2  # one byte every half second

    with impatient.open_file(fake.file_url("big-1.0.tar.gz")) as response:
        stream = iter_raw(response, chunk_bytes=64)
        with pytest.raises(UpstreamTimeout, match="read timeout during download"):
            next(stream)


# --- sessions -----------------------------------------------------------------------------


def test_sessions_are_made_lazily_one_per_thread(fake):
    made: list[requests.Session] = []

    def factory() -> requests.Session:
        made.append(requests.Session())
        return made[-1]

    threaded = UpstreamClient(session_factory=factory, ca_bundle="/nonexistent/ca.pem")
    assert made == []

    threaded._session(is_trusted=False)
    threaded._session(is_trusted=False)
    worker = threading.Thread(target=threaded._session, kwargs={"is_trusted": False})
    worker.start()
    worker.join()

    assert len(made) == 2
    assert all(s.verify == "/nonexistent/ca.pem" for s in made)
    threaded.close()


def test_the_client_works_from_many_threads_at_once(fake, client):
    results: list[int] = []

    def fetch() -> None:
        page = client.fetch_project(fake.url, "demo-pkg")
        results.append(len(page.files) if page else -1)

    workers = [threading.Thread(target=fetch) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=10)

    assert results == [5] * 8


# --- parse_html_page ----------------------------------------------------------------------


def html_page(*anchors: str, head: str = "") -> str:
    return f"<!DOCTYPE html><html><head>{head}</head><body>{''.join(anchors)}</body></html>"


def only_file(text: str, base_url: str = PAGE) -> UpstreamFile:
    (upstream_file,) = parse_html_page(text, base_url, "demo-pkg").files
    return upstream_file


def test_html_attributes_are_read_in_any_order_case_and_quoting():
    text = html_page(
        f"<A data-yanked='' DATA-REQUIRES-PYTHON=&gt;=3.8 "
        f'data-core-metadata="sha256={HEX_UPPER}" HREF=../../files/x/a-1.0.tar.gz#sha256={HEX}>'
        "whatever</A>"
    )

    assert only_file(text) == UpstreamFile(
        filename="a-1.0.tar.gz",
        url="https://upstream.test/files/x/a-1.0.tar.gz",
        sha256=HEX,
        requires_python=">=3.8",
        yanked=True,
        upload_time=None,
        size=None,
        core_metadata=HEX,
    )


def test_html_requires_python_entities_are_unescaped():
    text = html_page('<a href="a-1.0.tar.gz" data-requires-python="&lt;4,&gt;=3.8&amp;">a</a>')

    assert only_file(text).requires_python == "<4,>=3.8&"


def test_html_filename_comes_from_the_href_not_the_anchor_text():
    text = html_page('<a href="/f/demo_pkg-1.0%2Blocal-py3-none-any.whl?x=1">evil.whl</a>')

    upstream_file = only_file(text)
    assert upstream_file.filename == "demo_pkg-1.0+local-py3-none-any.whl"
    assert upstream_file.url == "https://upstream.test/f/demo_pkg-1.0%2Blocal-py3-none-any.whl?x=1"


@pytest.mark.parametrize(
    ("href", "expected_url"),
    [
        ("a-1.0.tar.gz", "https://upstream.test/simple/demo-pkg/a-1.0.tar.gz"),
        ("../../packages/a-1.0.tar.gz", "https://upstream.test/packages/a-1.0.tar.gz"),
        ("/packages/a-1.0.tar.gz", "https://upstream.test/packages/a-1.0.tar.gz"),
        ("//files.test/p/a-1.0.tar.gz", "https://files.test/p/a-1.0.tar.gz"),
        ("http://files.test/p/a-1.0.tar.gz#egg=a", "http://files.test/p/a-1.0.tar.gz"),
    ],
)
def test_html_hrefs_are_resolved_against_the_page_url(href, expected_url):
    assert only_file(html_page(f'<a href="{href}">x</a>')).url == expected_url


@pytest.mark.parametrize(
    "href",
    [
        "https://files.test/p/a-1.0.tar.gz",
        "https://files.test:443/p/a-1.0.tar.gz#sha256=" + "a" * 64,
        "http://u:p@files.test/p/a-1.0.tar.gz#",
        "http://files.test/p/a.whl#x#y",
        "HTTP://files.test/p/a.whl",
        "http://files.test/p/../a.whl",
        "http://files.test/p/a.whl?x=1",
        "http://files.test/p/a.whl;x",
        "http://[::1]/p/a.whl",
        "http://files.test:99999/p/a.whl",
        "http://files.test:x/p/a.whl",
        "http://files.test/p/a b.whl",
        "http://files.test/p/a\tb.whl",
        "https://files.test/p/a.whl#\nsha256=" + "a" * 64,
        "http:///p/a.whl",
        "http://:80/p/a.whl",
        "ftp://files.test/p/a.whl",
        "http://files.test/p/\u00e9.whl",
    ],
)
def test_a_plain_absolute_file_url_resolves_as_urljoin_and_urldefrag_resolve_it(href):
    """The fast path for absolute URLs (one origin check per host) gives what the general path
    gives: the URL, its fragment, and None for what is not a usable http(s) URL."""
    base = "https://upstream.test/simple/demo-pkg/"
    try:
        url, fragment = urldefrag(urljoin(base, href))
        expected = (url if url_origin(url) is not None else None), fragment
    except ValueError:
        expected = None, ""

    assert upstream_pages._resolve(base, href) == expected


def test_html_base_href_sets_the_base_of_every_link():
    text = html_page(
        '<a href="a-1.0.tar.gz">a</a>',
        head='<base href="https://cdn.test/pkgs/demo/"><base href="https://ignored.test/">',
    )

    assert only_file(text).url == "https://cdn.test/pkgs/demo/a-1.0.tar.gz"


def test_html_relative_base_href_is_resolved_against_the_page_url():
    text = html_page('<a href="a-1.0.tar.gz">a</a>', head='<base href="../../files/">')

    assert only_file(text).url == "https://upstream.test/files/a-1.0.tar.gz"


@pytest.mark.parametrize(
    ("attribute", "expected"),
    [
        ("", False),
        ("data-yanked", True),
        ('data-yanked=""', True),
        ('data-yanked="  "', True),
        ('data-yanked="broken &lt;build&gt; &amp; &quot;bad&quot;"', YANK_REASON),
    ],
    ids=["absent", "valueless", "empty", "blank", "reason"],
)
def test_html_data_yanked_forms(attribute, expected):
    assert only_file(html_page(f'<a href="a-1.0.tar.gz" {attribute}>a</a>')).yanked == expected


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ("", False),
        ('data-core-metadata="true"', True),
        (f'data-core-metadata="sha256={HEX}"', HEX),
        (f'data-core-metadata="SHA256={HEX_UPPER}"', HEX),
        ('data-core-metadata="sha512=abcd"', True),
        ('data-core-metadata="sha256=not-hex"', True),
        ('data-core-metadata="false"', False),
        ("data-core-metadata", False),
        (f'data-dist-info-metadata="sha256={HEX}"', HEX),
        ('data-dist-info-metadata="true"', True),
        (f'data-core-metadata="true" data-dist-info-metadata="sha256={HEX}"', True),
        (f'data-core-metadata data-dist-info-metadata="sha256={HEX}"', HEX),
    ],
    ids=[
        "absent",
        "true",
        "sha256",
        "uppercase",
        "other-algorithm",
        "bad-hex",
        "false",
        "valueless",
        "alias-sha256",
        "alias-true",
        "core-wins",
        "valueless-core-falls-back",
    ],
)
def test_html_core_metadata_forms(attributes, expected):
    text = html_page(f'<a href="a-1.0-py3-none-any.whl" {attributes}>a</a>')

    assert only_file(text).core_metadata == expected


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        (f"#sha256={HEX}", HEX),
        (f"#sha256={HEX_UPPER}", HEX),
        ("#sha512=" + "cd" * 64, None),
        ("#md5=0123456789abcdef0123456789abcdef", None),
        ("#sha256=short", None),
        (f"#egg=a&sha256={HEX}", HEX),
        ("", None),
    ],
    ids=["sha256", "uppercase", "sha512", "md5", "bad-hex", "after-egg", "none"],
)
def test_html_hash_fragments_give_sha256_only_but_keep_the_file(fragment, expected):
    upstream_file = only_file(html_page(f'<a href="a-1.0.tar.gz{fragment}">a</a>'))

    assert upstream_file.sha256 == expected
    assert upstream_file.url == "https://upstream.test/simple/demo-pkg/a-1.0.tar.gz"


@pytest.mark.parametrize(
    "anchor",
    [
        "<a>no href</a>",
        '<a href="">empty</a>',
        "<a href>valueless</a>",
        '<a href="javascript:alert(1)">js</a>',
        '<a href="mailto:a@example.test">mail</a>',
        '<a href="sub/">a directory</a>',
        '<a href="..">parent</a>',
        '<a href="evil%2F..%2Fpasswd">slash inside</a>',
        '<a href="a%00.tar.gz">control character</a>',
    ],
)
def test_html_anchors_that_name_no_usable_file_are_skipped(anchor):
    text = html_page(anchor, '<a href="ok-1.0.tar.gz">ok</a>')

    assert [f.filename for f in parse_html_page(text, PAGE, "demo-pkg").files] == ["ok-1.0.tar.gz"]


def test_html_duplicate_filenames_keep_the_first_link():
    text = html_page('<a href="/a/x-1.0.tar.gz">1</a>', '<a href="/b/x-1.0.tar.gz">2</a>')

    assert only_file(text).url == "https://upstream.test/a/x-1.0.tar.gz"


def test_html_links_inside_scripts_and_comments_are_not_files():
    text = html_page(
        "<script>document.write('<a href=\"bad-1.0.tar.gz\">x</a>')</script>",
        '<!-- <a href="old-1.0.tar.gz">old</a> -->',
        '<a href="ok-1.0.tar.gz">ok</a>',
    )

    assert only_file(text).filename == "ok-1.0.tar.gz"


def test_html_page_name_is_the_requested_name_and_status_comes_from_the_meta_tag():
    text = html_page(
        '<a href="a-1.0.tar.gz">a</a>',
        head='<meta name="pypi:repository-version" content="1.4">'
        '<meta name="pypi:project-status" content="quarantined">',
    )

    parsed = parse_html_page(text, PAGE, "demo-pkg")
    assert (parsed.name, parsed.status) == ("demo-pkg", "quarantined")


def test_html_data_upload_time_is_normalized():
    text = html_page('<a href="a-1.0.tar.gz" data-upload-time="2024-05-06T07:08:09+02:00">a</a>')

    assert only_file(text).upload_time == "2024-05-06T05:08:09Z"


def test_html_without_anchors_is_an_empty_page():
    parsed = parse_html_page("<html><body><p>nothing here", PAGE, "demo-pkg")

    assert parsed.files == []
    assert parsed.status is None


# --- parse_json_page ----------------------------------------------------------------------


def json_page(**file_fields: object) -> dict[str, object]:
    entry = {"filename": "a-1.0.tar.gz", "url": "a-1.0.tar.gz", "hashes": {}}
    entry.update(file_fields)
    return {"meta": {"api-version": "1.4"}, "name": "Demo.Pkg", "files": [entry]}


def only_json_file(**file_fields: object) -> UpstreamFile:
    (upstream_file,) = parse_json_page(json.dumps(json_page(**file_fields)), PAGE, "demo-pkg").files
    return upstream_file


def test_json_file_with_every_field():
    upstream_file = only_json_file(
        url="https://files.test/p/a-1.0.tar.gz#sha256=ignored",
        hashes={"sha256": HEX_UPPER, "blake2b_256": "ff"},
        **{
            "requires-python": ">=3.8",
            "yanked": "broken",
            "upload-time": "2024-01-02T03:04:05.000001Z",
            "size": 123,
            "core-metadata": {"sha256": HEX},
            "provenance": None,
            "gpg-sig": False,
            "some-future-key": {"x": 1},
        },
    )

    assert upstream_file == UpstreamFile(
        filename="a-1.0.tar.gz",
        url="https://files.test/p/a-1.0.tar.gz",
        sha256=HEX,
        requires_python=">=3.8",
        yanked="broken",
        upload_time="2024-01-02T03:04:05.000001Z",
        size=123,
        core_metadata=HEX,
    )


def test_json_relative_urls_are_resolved_against_the_page_url():
    assert only_json_file(url="../../f/a-1.0.tar.gz").url == "https://upstream.test/f/a-1.0.tar.gz"


def test_json_hash_falls_back_to_the_url_fragment():
    assert only_json_file(url=f"a-1.0.tar.gz#sha256={HEX}").sha256 == HEX


def test_json_name_and_project_status_are_read():
    document = json_page()
    document["project-status"] = {"status": "deprecated", "reason": "use b"}

    parsed = parse_json_page(json.dumps(document).encode(), PAGE, "demo-pkg")
    assert (parsed.name, parsed.status) == ("Demo.Pkg", "deprecated")


@pytest.mark.parametrize(
    ("yanked", "expected"),
    [(False, False), (True, True), ("", False), ("  ", False), ("reason", "reason"), (None, False)],
    ids=["false", "true", "empty-string", "blank", "reason", "null"],
)
def test_json_yanked_forms(yanked, expected):
    assert only_json_file(yanked=yanked).yanked == expected


def test_json_missing_yanked_means_not_yanked():
    assert only_json_file().yanked is False


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, False),
        ({"core-metadata": False}, False),
        ({"core-metadata": True}, True),
        ({"core-metadata": {"sha256": HEX}}, HEX),
        ({"core-metadata": {}}, True),
        ({"core-metadata": {"sha512": "cd"}}, True),
        ({"core-metadata": "true"}, True),
        ({"dist-info-metadata": {"sha256": HEX}}, HEX),
        ({"data-dist-info-metadata": {"sha256": HEX}}, HEX),
        ({"core-metadata": False, "dist-info-metadata": True}, False),
    ],
    ids=[
        "absent",
        "false",
        "true",
        "sha256",
        "empty",
        "sha512",
        "string",
        "alias",
        "pypi-alias",
        "core-wins",
    ],
)
def test_json_core_metadata_forms(fields, expected):
    assert only_json_file(**fields).core_metadata == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-02T03:04:05Z", "2024-01-02T03:04:05Z"),
        ("2024-01-02T03:04:05.123Z", "2024-01-02T03:04:05.123000Z"),
        ("2024-01-02T03:04:05.000000Z", "2024-01-02T03:04:05Z"),
        ("2024-01-02T03:04:05.1234567Z", "2024-01-02T03:04:05.123456Z"),
        ("2024-01-02T03:04:05+01:30", "2024-01-02T01:34:05Z"),
        ("2024-01-02 03:04:05", "2024-01-02T03:04:05Z"),
        ("yesterday", None),
        ("", None),
        (1704164645, None),
        (None, None),
    ],
)
def test_upload_times_are_normalized_to_utc_with_z(value, expected):
    assert normalize_upload_time(value) == expected
    assert only_json_file(**{"upload-time": value}).upload_time == expected


def test_json_odd_optional_values_are_dropped_not_fatal():
    upstream_file = only_json_file(
        hashes={"sha256": "not-hex"}, size="12", **{"requires-python": 3.8}
    )

    assert (upstream_file.sha256, upstream_file.size, upstream_file.requires_python) == (
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "malformed JSON page: Expecting property name"),
        (b"\xff\xfe\x00garbage", "malformed JSON page"),
        ("[]", "malformed JSON page: top level is not an object"),
        ('{"files": {}}', "malformed JSON page: 'files' is not a list"),
        ('{"name": "a"}', "malformed JSON page: 'files' is not a list"),
        ('{"files": ["a-1.0.tar.gz"]}', "malformed JSON page: a file entry is not an object"),
        ('{"files": [{"url": "a"}]}', "lacks 'filename' or 'url'"),
        ('{"files": [{"filename": "a-1.0.tar.gz"}]}', "lacks 'filename' or 'url'"),
        ('{"files": [{"filename": 1, "url": "a"}]}', "lacks 'filename' or 'url'"),
        ('{"files": [{"filename": "a", "url": "a", "hashes": []}]}', "'hashes' of 'a'"),
        ('{"meta": {"api-version": "2.0"}, "files": []}', "unsupported api-version '2.0'"),
    ],
)
def test_malformed_json_pages_raise_upstream_error(document, message):
    with pytest.raises(
        UpstreamError, match=r"^https://upstream\.test/simple/demo-pkg/: "
    ) as caught:
        parse_json_page(document, PAGE, "demo-pkg")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "filename", ["", ".", "..", "a/b-1.0.tar.gz", "a\\b-1.0.tar.gz", "a\nb.tar.gz", "x" * 256]
)
def test_json_files_with_unsafe_filenames_are_skipped(filename):
    document = json_page()
    document["files"].append({"filename": filename, "url": "x", "hashes": {}})

    files = parse_json_page(json.dumps(document), PAGE, "demo-pkg").files
    assert [f.filename for f in files] == ["a-1.0.tar.gz"]


def test_json_files_with_non_http_urls_are_skipped():
    document = json_page(url="file:///etc/passwd")

    assert parse_json_page(json.dumps(document), PAGE, "demo-pkg").files == []


# --- mask_url -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://u:p@host.test/simple/", "https://***:***@host.test/simple/"),
        ("https://token@host.test/simple/", "https://***@host.test/simple/"),
        ("https://u:p%40ss@host.test:8443/s/?a=b#c", "https://***:***@host.test:8443/s/?a=b#c"),
        ("https://u:p@ss@host.test/", "https://***:***@host.test/"),
        ("https://host.test/simple/", "https://host.test/simple/"),
        ("https://host.test/a@b/", "https://host.test/a@b/"),
        ("https://host.test?x=a@b", "https://host.test?x=a@b"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url_hides_userinfo_and_keeps_everything_else(url, expected):
    assert mask_url(url) == expected


# --- the fake upstream itself -------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (ACCEPT_PAGE, MIME_JSON),
        (f"{MIME_JSON}, {MIME_HTML}; q=0.1, text/html; q=0.01", MIME_JSON),  # pip
        (f"{MIME_JSON}, */*;q=0.1", MIME_JSON),  # poetry
        (None, "text/html"),
        ("*/*", "text/html"),
        ("text/html,application/xhtml+xml,*/*;q=0.8", "text/html"),  # a browser
        (f"{MIME_JSON};q=0.5, text/html", "text/html"),
        (MIME_HTML, MIME_HTML),
        ("application/vnd.pypi.simple.latest+json", MIME_JSON),
        (f"{MIME_JSON};q=0, */*", "text/html"),
        ("application/*;q=0.5, text/html;q=0.4", MIME_HTML),
        ("application/xml", "text/html"),
    ],
)
def test_fake_upstream_negotiates_by_q_value(accept, expected):
    assert negotiate(accept) == expected


def test_fake_upstream_escapes_html_attributes_and_serves_the_project_list():
    with FakeUpstream() as upstream:
        upstream.add_file(
            "Demo.Pkg", WHEEL_2, b"two", requires_python="<4,>=3.8", yanked=YANK_REASON
        )
        upstream.add_file("Demo.Pkg", WHEEL_3, b"three", yanked=True)
        with urllib.request.urlopen(upstream.url + "demo-pkg/", timeout=5) as response:
            page = response.read().decode()
            content_type = response.headers["Content-Type"]
        with urllib.request.urlopen(upstream.url, timeout=5) as response:
            index = response.read().decode()

    assert content_type == "text/html; charset=utf-8"
    assert 'data-requires-python="&lt;4,&gt;=3.8"' in page
    assert 'data-yanked="broken &lt;build&gt; &amp; &quot;bad&quot;"' in page
    assert 'data-yanked=""' in page
    assert '<a href="demo-pkg/">Demo.Pkg</a>' in index
    assert upstream.requests["/simple/"] == 1


def test_fake_upstream_demands_basic_auth_when_configured():
    with FakeUpstream() as upstream:
        upstream.add_file("a", "a-1.0.tar.gz", b"a")
        upstream.basic_auth = ("alice", "secret")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(upstream.url + "a/", timeout=5)
        caught.value.close()

    assert caught.value.code == 401
    assert caught.value.headers["WWW-Authenticate"] == 'Basic realm="fake-upstream"'


def test_fake_upstream_redirects_non_normalized_names_and_restarts_on_its_port():
    with FakeUpstream() as upstream:
        upstream.add_file("Demo.Pkg", "demo_pkg-1.0.tar.gz", b"a")
        with urllib.request.urlopen(upstream.url + "Demo_Pkg", timeout=5) as response:
            final_url = response.url
        url = upstream.url
        upstream.stop()
        upstream.start()
        assert upstream.url == url
        with urllib.request.urlopen(url + "demo-pkg/", timeout=5) as response:
            assert response.status == 200

    assert final_url == url + "demo-pkg/"


@pytest.mark.parametrize(
    "value",
    [
        "2024-02-30T03:04:05Z",  # no such day
        "2024-01-02T24:00:00Z",
        "0000-01-02T03:04:05Z",
        "2024-01-02T03:04:05.0000000Z",
        "2024-01-02T03:04:05.999999Z",
        "2024-01-02T03:04:05.000001Z",
        "2024-01-02T03:04:05.100000Z",
    ],
)
def test_an_upload_time_in_the_normal_form_is_checked_as_any_other(value):
    """The normal form is taken as it is only when it is a real moment: the same answer as
    parsing and formatting it again."""
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        expected = None
    else:
        fraction = f".{moment.microsecond:06d}" if moment.microsecond else ""
        expected = moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"
    assert normalize_upload_time(value) == expected
