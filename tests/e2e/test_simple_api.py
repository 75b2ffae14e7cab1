"""The simple API as installers see it on a live server: redirects, negotiation, files, yanks."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import pytest

from tests.builders import make_sdist, make_wheel
from tests.conftest import LiveServer, run_pip
from tests.e2e.helpers import (
    ACCEPT_PIP,
    ACCEPT_POETRY,
    ACCEPT_UV,
    MIME_HTML,
    MIME_JSON,
    TEXT_HTML,
    anchors,
    api,
    file_url,
    line_of,
    publish,
    raw_upload,
    sha256,
    simple_json,
)

pytestmark = pytest.mark.e2e

S = "/admin/dev/+simple"
WHEEL_1 = make_wheel("Demo.Pkg", "1.0.0", requires_python=">=3.8")
SDIST_1 = make_sdist("Demo.Pkg", "1.0.0", requires_python=">=3.8")
WHEEL_2 = make_wheel("Demo.Pkg", "2.0.0")
WHEEL_3 = make_wheel("Demo.Pkg", "3.0.0")
DEMO = dict([WHEEL_1, SDIST_1, WHEEL_2, WHEEL_3])
YANK_REASON = 'broken <build> & "bad"'
UPLOAD_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")  # PEP 700


@pytest.fixture(scope="module")
def demo(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    """The fixture: Demo.Pkg 1.0.0 (wheel + sdist), 2.0.0 and 3.0.0 yanked."""
    publish(live_server, "admin/dev", tmp_path_factory.mktemp("demo"), *DEMO.items())
    for version, body in [
        ("2.0.0", {"yanked": True, "reason": YANK_REASON}),
        ("3.0.0", {"yanked": True}),
    ]:
        status, result, reason = api(live_server, "PATCH", f"/admin/dev/Demo.Pkg/{version}", body)
        assert (status, reason) == (200, "OK"), result
    status, result, reason = api(live_server, "PUT", "/admin/solo", {"bases": []})
    assert (status, reason) == (201, "CREATED"), result
    return live_server


# --- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "location"),
    [
        (f"{S}/Demo_Pkg/", f"{S}/demo-pkg/"),
        (f"{S}/Demo.Pkg/", f"{S}/demo-pkg/"),
        (f"{S}/DEMO--pkg/", f"{S}/demo-pkg/"),
        (f"{S}/Demo_Pkg", f"{S}/demo-pkg/"),
        (f"{S}/demo-pkg", f"{S}/demo-pkg/"),
        (S, f"{S}/"),
    ],
)
def test_non_normalized_names_and_missing_slashes_redirect_permanently(
    demo: LiveServer, path: str, location: str
) -> None:
    """One 301 straight to the canonical URL, never page content at another URL (PEP 503)."""
    status, headers, _body, reason = demo.get(path)

    assert (status, reason) == (301, "MOVED PERMANENTLY")
    assert headers["Location"] == location


def test_unknown_project_on_a_stage_whose_mirror_is_down_is_a_502(demo: LiveServer) -> None:
    """admin/dev asks root/pypi, whose upstream refuses connections: 502, not 404 (RFC 5861 §4)."""
    status, headers, _body, reason = demo.get(f"{S}/no-such-project-xyz/")

    assert status == 502
    assert reason.startswith("Upstream failed and no-such-project-xyz is not cached: ")
    assert headers["Retry-After"] == "30"


def test_unknown_project_on_an_index_without_mirror_bases_is_a_404(demo: LiveServer) -> None:
    """With no mirror to ask, an unknown name is a plain 404, so uv moves on."""
    status, _headers, _body, reason = demo.get("/admin/solo/+simple/no-such-project-xyz/")

    assert (status, reason) == (404, "Project no-such-project-xyz is not on index admin/solo.")


def test_unknown_index_is_a_404(demo: LiveServer) -> None:
    """An index that does not exist has no pages."""
    status, _headers, _body, reason = demo.get("/admin/nothing-here/+simple/demo-pkg/")

    assert (status, reason) == (404, "Index admin/nothing-here does not exist.")


def test_post_to_the_simple_url_is_a_405_that_names_the_upload_url(demo: LiveServer) -> None:
    """uv turns a 405 into the hint "this is the simple index URL"."""
    for path in (f"{S}/", f"{S}/demo-pkg/"):
        status, headers, _body, reason = demo.get(path, method="POST", data=b"")
        assert (status, reason) == (
            405,
            "This is the simple index URL; upload to /admin/dev/ instead.",
        )
        assert headers["Allow"] == "GET, HEAD"


# --- content negotiation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        pytest.param(ACCEPT_PIP, MIME_JSON, id="pip"),
        pytest.param(ACCEPT_UV, MIME_JSON, id="uv"),
        pytest.param(ACCEPT_POETRY, MIME_JSON, id="poetry"),
        pytest.param(MIME_JSON, MIME_JSON, id="v1-json"),
        pytest.param(MIME_HTML, f"{MIME_HTML}; charset=utf-8", id="v1-html"),
        pytest.param("text/html", TEXT_HTML, id="text-html"),
        pytest.param("*/*", TEXT_HTML, id="anything"),
        pytest.param(None, TEXT_HTML, id="no-accept"),
        pytest.param("application/xml", TEXT_HTML, id="unacceptable-falls-back-to-html"),
        pytest.param(f"{MIME_JSON};q=0.5, text/html", TEXT_HTML, id="q-values-not-order"),
        pytest.param("application/vnd.pypi.simple.latest+json", MIME_JSON, id="latest-json"),
        pytest.param(
            "application/vnd.pypi.simple.latest+html",
            f"{MIME_HTML}; charset=utf-8",
            id="latest-html",
        ),
    ],
)
@pytest.mark.parametrize("path", [f"{S}/demo-pkg/", f"{S}/"], ids=["project", "list"])
def test_content_type_follows_the_clients_accept_header(
    demo: LiveServer, path: str, accept: str | None, content_type: str
) -> None:
    """Installers get JSON, browsers and hatch get HTML; ties go to text/html (PEP 691)."""
    status, headers, body, _reason = demo.get(path, headers={"Accept": accept} if accept else {})

    assert status == 200
    assert headers["Content-Type"] == content_type
    assert "Accept" in [v.strip() for v in headers["Vary"].split(",")]
    if content_type == MIME_JSON:
        assert json.loads(body)["meta"]["api-version"] == "1.4"
    else:
        assert b'<meta name="pypi:repository-version" content="1.4">' in body  # PEP 629


@pytest.mark.parametrize(
    ("query", "accept", "content_type"),
    [
        (f"?format={MIME_JSON}", None, MIME_JSON),
        ("?format=application/vnd.pypi.simple.v1%2Bjson", None, MIME_JSON),
        (f"?format={MIME_JSON}", "text/html", MIME_JSON),
        ("?format=text/html", ACCEPT_PIP, TEXT_HTML),
        ("?format=application/xml", ACCEPT_PIP, MIME_JSON),
    ],
    ids=[
        "json-without-accept",
        "json-percent-encoded",
        "json-over-accept",
        "html-over-accept",
        "unknown-uses-accept",
    ],
)
def test_format_query_takes_precedence_over_accept(
    demo: LiveServer, query: str, accept: str | None, content_type: str
) -> None:
    """`?format=` picks exactly one type; an unsupported value falls back to Accept (PEP 691).

    The first case is a plain curl line: its unencoded "+" reaches the server as a
    space, and must still mean v1+json.
    """
    status, headers, _body, _reason = demo.get(
        f"{S}/demo-pkg/{query}", headers={"Accept": accept} if accept else {}
    )

    assert status == 200
    assert headers["Content-Type"] == content_type


def test_pages_revalidate_with_their_etag_and_each_representation_has_its_own(
    demo: LiveServer,
) -> None:
    """If-None-Match gives 304 with the same ETag and Vary; HTML and JSON differ."""
    etags = {}
    for accept in (MIME_JSON, "text/html"):
        status, headers, _body, _reason = demo.get(f"{S}/demo-pkg/", headers={"Accept": accept})
        assert status == 200
        assert headers["Cache-Control"] == "no-cache"  # RFC 9111 §5.2: an upload shows up at once
        etags[accept] = headers["ETag"]

        status, headers, body, _reason = demo.get(
            f"{S}/demo-pkg/", headers={"Accept": accept, "If-None-Match": etags[accept]}
        )
        assert (status, body) == (304, b"")
        assert headers["ETag"] == etags[accept]
        assert headers["Cache-Control"] == "no-cache"
        assert "Accept" in [v.strip() for v in headers["Vary"].split(",")]

    assert etags[MIME_JSON] != etags["text/html"]
    status, _headers, _body, _reason = demo.get(
        f"{S}/demo-pkg/", headers={"Accept": "text/html", "If-None-Match": etags[MIME_JSON]}
    )
    assert status == 200


# --- files ------------------------------------------------------------------------------------


def test_file_head_announces_its_length_and_byte_ranges(demo: LiveServer) -> None:
    """HEAD: Content-Length and exactly `Accept-Ranges: bytes`, as uv and poetry compare."""
    url = file_url(demo, "admin/dev", "demo-pkg", WHEEL_1[0])

    status, headers, body, _reason = demo.get(url, method="HEAD")

    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == str(len(WHEEL_1[1]))
    assert headers["Accept-Ranges"] == "bytes"
    assert "immutable" in headers["Cache-Control"]  # RFC 8246


@pytest.mark.parametrize(
    ("range_header", "status", "content_range", "start", "end"),
    [
        ("bytes=0-9", 206, "bytes 0-9/{size}", 0, 10),
        ("bytes=-100", 206, "bytes {tail}-{last}/{size}", -100, None),
        ("bytes=100-", 206, "bytes 100-{last}/{size}", 100, None),
        ("bytes=999999999-", 416, "bytes */{size}", None, None),
    ],
    ids=["first-ten", "suffix", "open-ended", "unsatisfiable"],
)
def test_file_serves_byte_ranges(
    demo: LiveServer,
    range_header: str,
    status: int,
    content_range: str,
    start: int | None,
    end: int | None,
) -> None:
    """Single ranges give 206 with Content-Range; unsatisfiable ones 416 (RFC 9110 §14)."""
    data = WHEEL_1[1]
    size = len(data)
    url = file_url(demo, "admin/dev", "demo-pkg", WHEEL_1[0])

    got_status, headers, body, _reason = demo.get(url, headers={"Range": range_header})

    assert got_status == status
    assert headers["Content-Range"] == content_range.format(
        size=size, last=size - 1, tail=size - 100
    )
    if status == 206:
        assert body == data[start:end]
        assert headers["Content-Length"] == str(len(body))


@pytest.mark.parametrize(
    ("if_range", "status"),
    [("file-etag", 206), ('"some-other-etag"', 200)],
    ids=["same-file", "changed-file"],
)
def test_file_range_honours_if_range(demo: LiveServer, if_range: str, status: int) -> None:
    """pip resumes with Range + If-Range: a matching ETag gives 206, else all (RFC 9110 §13.1.5)."""
    url = file_url(demo, "admin/dev", "demo-pkg", WHEEL_1[0])
    etag = demo.get(url, method="HEAD")[1]["ETag"]
    headers = {"Range": "bytes=10-", "If-Range": etag if if_range == "file-etag" else if_range}

    got_status, _headers, body, _reason = demo.get(url, headers=headers)

    assert got_status == status
    assert body == (WHEEL_1[1][10:] if status == 206 else WHEEL_1[1])


def test_file_revalidates_to_304_and_is_cached_as_immutable(demo: LiveServer) -> None:
    """The file's ETag is stable; If-None-Match gives 304; files are immutable (RFC 8246)."""
    url = file_url(demo, "admin/dev", "demo-pkg", WHEEL_1[0])
    status, headers, body, _reason = demo.get(url)
    assert status == 200
    assert body == WHEEL_1[1]
    assert headers["Content-Length"] == str(len(body))  # RFC 9110 §8.6
    assert "immutable" in headers["Cache-Control"]

    status, again, body, _reason = demo.get(url, headers={"If-None-Match": headers["ETag"]})

    assert (status, body) == (304, b"")
    assert again["ETag"] == headers["ETag"]


def test_sdist_is_served_as_its_exact_bytes_without_content_encoding(demo: LiveServer) -> None:
    """A .tar.gz must not be sent as Content-Encoding: gzip; its bytes match the hash (PEP 503)."""
    page = simple_json(demo, "admin/dev", "demo-pkg")
    entry = next(f for f in page["files"] if f["filename"] == SDIST_1[0])
    for headers in ({}, {"Accept-Encoding": "gzip"}):
        status, response_headers, body, _reason = demo.get(entry["url"], headers=headers)
        assert status == 200
        assert "Content-Encoding" not in response_headers
        assert sha256(body) == entry["hashes"]["sha256"] == sha256(SDIST_1[1])


def test_metadata_sidecar_is_the_wheels_metadata_byte_for_byte(demo: LiveServer) -> None:
    """`<wheel>.metadata` equals the wheel's METADATA, and its hash is advertised (PEP 658)."""
    with zipfile.ZipFile(io.BytesIO(WHEEL_1[1])) as wheel:
        metadata = wheel.read("demo_pkg-1.0.0.dist-info/METADATA")
    url = file_url(demo, "admin/dev", "demo-pkg", WHEEL_1[0])

    status, _headers, body, _reason = demo.get(url + ".metadata")

    assert status == 200
    assert body == metadata
    status, _headers, page, _reason = demo.get(f"{S}/demo-pkg/", headers={"Accept": "text/html"})
    assert f'data-core-metadata="sha256={sha256(metadata)}"' in line_of(page, WHEEL_1[0])
    entry = next(
        f
        for f in simple_json(demo, "admin/dev", "demo-pkg")["files"]
        if f["filename"] == WHEEL_1[0]
    )
    assert entry["core-metadata"] == {"sha256": sha256(metadata)}
    sdist = next(
        f
        for f in simple_json(demo, "admin/dev", "demo-pkg")["files"]
        if f["filename"] == SDIST_1[0]
    )
    assert sdist["core-metadata"] is False  # PEP 658: sidecars for wheels only


# --- HTML and JSON pages ------------------------------------------------------------------------


def test_html_anchors_name_their_files_and_carry_the_sha256(demo: LiveServer) -> None:
    """Anchor text = filename = last href segment; `#sha256=` of the served bytes (PEP 503)."""
    status, _headers, page, _reason = demo.get(f"{S}/demo-pkg/")
    assert status == 200
    found = anchors(page)

    assert sorted(a.text for a in found) == sorted(DEMO)
    for anchor in found:
        assert anchor.filename_in_href == anchor.text
        assert re.fullmatch(r"[^#?]+#sha256=[0-9a-f]{64}", anchor.href), anchor.href
        assert anchor.href.endswith(f"#sha256={sha256(DEMO[anchor.text])}")
        assert "?" not in anchor.href  # PEP 658


def test_requires_python_is_html_escaped_in_the_attribute(demo: LiveServer) -> None:
    """`>=3.8` is written `&gt;=3.8` in HTML and plain in JSON (PEP 503, 691)."""
    status, _headers, page, _reason = demo.get(f"{S}/demo-pkg/")
    assert status == 200

    for filename in (WHEEL_1[0], SDIST_1[0]):
        assert 'data-requires-python="&gt;=3.8"' in line_of(page, filename)
    assert "data-requires-python" not in line_of(page, WHEEL_2[0])
    files = {f["filename"]: f for f in simple_json(demo, "admin/dev", "demo-pkg")["files"]}
    assert files[WHEEL_1[0]]["requires-python"] == ">=3.8"


def test_yanked_files_carry_their_reason_or_an_empty_marker(demo: LiveServer) -> None:
    """HTML data-yanked always has a value; JSON yanked is the reason, true or false (PEP 592)."""
    status, _headers, page, _reason = demo.get(f"{S}/demo-pkg/")
    assert status == 200

    assert 'data-yanked="broken &lt;build&gt; &amp; &quot;bad&quot;"' in line_of(page, WHEEL_2[0])
    assert 'data-yanked=""' in line_of(page, WHEEL_3[0])
    assert "data-yanked" not in line_of(page, WHEEL_1[0])
    yanked = {a.text: a.attrs.get("data-yanked") for a in anchors(page)}
    assert yanked[WHEEL_2[0]] == YANK_REASON  # what pip reads after unescaping
    files = {f["filename"]: f for f in simple_json(demo, "admin/dev", "demo-pkg")["files"]}
    assert files[WHEEL_2[0]]["yanked"] == YANK_REASON
    assert files[WHEEL_3[0]]["yanked"] is True
    assert files[WHEEL_1[0]]["yanked"] is False
    assert files[SDIST_1[0]]["yanked"] is False


def test_json_page_has_api_version_versions_sizes_and_upload_times(demo: LiveServer) -> None:
    """PEP 691/700 keys: api-version 1.4, versions, size = Content-Length, UTC times."""
    page = simple_json(demo, "admin/dev", "demo-pkg")

    assert page["meta"] == {"api-version": "1.4"}
    assert page["name"] == "demo-pkg"
    assert sorted(page["versions"]) == ["1.0.0", "2.0.0", "3.0.0"]
    assert sorted(f["filename"] for f in page["files"]) == sorted(DEMO)
    for entry in page["files"]:
        assert entry["hashes"] == {"sha256": sha256(DEMO[entry["filename"]])}
        assert UPLOAD_TIME_RE.match(entry["upload-time"]), entry["upload-time"]
        assert "dist-info-metadata" not in entry  # PEP 714
        status, headers, _body, _reason = demo.get(entry["url"], method="HEAD")
        assert status == 200
        assert entry["size"] == int(headers["Content-Length"]) == len(DEMO[entry["filename"]])


def test_project_list_links_each_project_in_html_and_json(demo: LiveServer) -> None:
    """The root lists the project with a relative href in HTML, by name in JSON (PEP 503, 691)."""
    status, _headers, page, _reason = demo.get(f"{S}/")
    assert status == 200
    links = {a.text: a.href for a in anchors(page)}
    assert links["Demo.Pkg"] == "demo-pkg/"

    status, _headers, body, _reason = demo.get(f"{S}/", headers={"Accept": MIME_JSON})
    assert status == 200
    listing = json.loads(body)
    assert listing["meta"]["api-version"] == "1.4"
    assert {"name": "Demo.Pkg"} in listing["projects"]


# --- real installers ----------------------------------------------------------------------------


def test_pip_download_picks_the_newest_version_that_is_not_yanked(
    demo: LiveServer, tmp_path: Path
) -> None:
    """2.0.0 and 3.0.0 are yanked, so a bare requirement gets 1.0.0 (PEP 592)."""
    result = run_pip(
        "download", "--no-deps", "-d", str(tmp_path), "-i", f"{demo.url}{S}/", "demo-pkg"
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [WHEEL_1[0]]


def test_pip_download_of_a_pinned_yanked_version_succeeds_with_a_warning(
    demo: LiveServer, tmp_path: Path
) -> None:
    """An exact pin may select a yanked file; pip warns and shows the reason (PEP 592).

    The index URL has no trailing slash here: pip adds it.
    """
    result = run_pip(
        "download", "--no-deps", "-d", str(tmp_path), "-i", f"{demo.url}{S}", "demo-pkg==2.0.0"
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "yanked version" in result.stderr
    assert YANK_REASON in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [WHEEL_2[0]]


def test_pip_installs_a_version_uploaded_a_moment_ago(demo: LiveServer, tmp_path: Path) -> None:
    """Upload, then install at once with no --refresh: pages are no-cache with an ETag.

    run_pip disables pip's HTTP cache, so the Cache-Control assertion is what keeps a caching
    pip honest; the two pip runs show the page changes as soon as the upload returns.
    """
    index_url = f"{demo.url}{S}/"
    first = make_wheel("fresh-pkg", "1.0")
    publish(demo, "admin/dev", tmp_path / "one", first)
    result = run_pip(
        "download", "--no-deps", "-d", str(tmp_path / "a"), "-i", index_url, "fresh-pkg"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert [p.name for p in (tmp_path / "a").iterdir()] == [first[0]]

    second = make_wheel("fresh-pkg", "1.1")
    status, _headers, body, reason = raw_upload(demo, "admin/dev", *second)
    assert (status, reason) == (200, "OK"), body
    result = run_pip(
        "download", "--no-deps", "-d", str(tmp_path / "b"), "-i", index_url, "fresh-pkg"
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert [p.name for p in (tmp_path / "b").iterdir()] == [second[0]]
    status, headers, _body, _reason = demo.get(f"{S}/fresh-pkg/", headers={"Accept": ACCEPT_PIP})
    assert status == 200
    assert headers["Cache-Control"] == "no-cache"


def test_local_version_filenames_are_percent_encoded_once_and_pip_downloads_them(
    demo: LiveServer, tmp_path: Path
) -> None:
    """`1.0+cpu`: the href carries %2B, the route takes `+` and %2B, pip finds it (PEP 440)."""
    wheel = make_wheel("local-ver", "1.0+cpu")
    status, _headers, body, reason = raw_upload(demo, "admin/dev", *wheel)
    assert (status, reason) == (200, "OK"), body
    url = file_url(demo, "admin/dev", "local-ver", wheel[0])
    assert url.endswith("/local_ver-1.0%2Bcpu-py3-none-any.whl")

    for variant in (url, url.replace("%2B", "+")):
        status, _headers, body, _reason = demo.get(variant)
        assert (status, body) == (200, wheel[1])
    result = run_pip(
        "download",
        "--no-deps",
        "-d",
        str(tmp_path),
        "-i",
        f"{demo.url}{S}/",
        "local-ver==1.0+cpu",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / wheel[0]).read_bytes() == wheel[1]
