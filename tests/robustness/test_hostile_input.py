"""Hostile input through the Flask test client: uploads, simple/JSON API and doc zips never 500.

Every property runs FUZZ_EXAMPLES cases (30 in `make test`; `make test-robustness` sets more).
After any rejected upload nothing is stored: no File or DocSet row, no new blob, no temp file.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import unicodedata
import zipfile
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from app.core.config import Settings
from app.data.models import DocSet, File
from tests.builders import make_sdist, make_wheel, tar_gz_bytes, zip_bytes
from tests.conftest import basic_auth
from tests.test_upload import (  # noqa: F401 - autouse fixture
    count_rows,
    fast_password_hashes,
    files_under,
    upload_form,
)

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
FUZZ = hypothesis_settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis directory in the repo
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,  # the app is shared; state is compared per case
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
CASES: collections.Counter[str] = collections.Counter()  # cases run per property

WHEEL, WHEEL_BYTES = make_wheel("fuzz-pkg", "1.0.0")
SDIST, SDIST_BYTES = make_sdist("fuzz-pkg", "1.0.0")
STAGE = "/admin/dev/"
CYRILLIC_A = "\u0430"  # looks like 'a'
# RFC 9112 section 4: the reason phrase is HTAB / SP / VCHAR / obs-text (gunicorn's own check,
# stricter by C1 controls, which clean_reason escapes too).
STATUS_LINE = re.compile(r"[0-9]{3}(?: [\t\x20-\x7e\xa0-\xff]*)?")

HOSTILE_STRINGS = [
    "",
    " ",
    "UNKNOWN",
    "../../../etc/passwd",
    "/etc/passwd",
    "..\\..\\windows\\system32",
    "C:\\evil",
    "fuzz\x00pkg",
    "\x00",
    "\x7f\x1b[31m",
    f"fuzz-pkg{CYRILLIC_A}",
    f"fuzz-pk{CYRILLIC_A}",
    "fuzz-pkg\u200b",
    "\uff46uzz-pkg",  # fullwidth f
    "fuzz-\u212apg",  # Kelvin sign
    "\u017f",  # long s
    "x" * 70_000,
    "9" * 10_000,
    "1" + ".0" * 5000,
    "1.0.0+" + "a" * 5000,
    "v1.0.0",
    "1.0.0\n",
    "1.0.0\r\nX-Injected: 1",
    "\ufeff1.0.0",
    "\u0661.\u0660",  # Arabic-Indic digits
    "1e999",
    "-1",
    "'; DROP TABLE file; --",
    "%s%s%n",
    "{{7*7}}",
    "<script>alert(1)</script>",
    "0" * 64,
    "bdist_wheel\x00",
    "py3\x00",
]
hostile_text = st.one_of(
    st.sampled_from(HOSTILE_STRINGS),
    st.text(max_size=200),
    st.text(alphabet=st.characters(codec="latin-1"), max_size=50),
)
# Text with control characters (C0 with NUL, CR and LF, DEL, C1) among ordinary ones.
control_text = st.text(
    alphabet=st.characters(categories=["Cc"]) | st.sampled_from("fuzz-pkg 1.0"),
    min_size=1,
    max_size=40,
).filter(lambda text: any(unicodedata.category(char) == "Cc" for char in text))
UPLOAD_FIELDS = [
    ":action",
    "protocol_version",
    "metadata_version",
    "name",
    "version",
    "filetype",
    "pyversion",
    "sha256_digest",
    "md5_digest",
    "blake2_256_digest",
    "summary",
    "description",
    "requires_python",
    "classifiers",
]


@dataclass(frozen=True)
class Snapshot:
    """What an upload can leave behind."""

    files: int
    docsets: int
    blobs: frozenset[str]
    temps: frozenset[str]


def snapshot(app: Any, settings: Settings) -> Snapshot:
    """Rows, blobs and temp files now (metrics files under tmp/ are not an upload's)."""
    temps = {p for p in files_under(settings.tmp_dir) if not p.startswith("metrics")}
    return Snapshot(
        count_rows(app, File),
        count_rows(app, DocSet),
        frozenset(files_under(settings.blob_dir)),
        frozenset(temps),
    )


def assert_status_line_is_valid(response: Any) -> None:
    """The status line is one a real server may send: gunicorn answers 500 for any other."""
    assert STATUS_LINE.fullmatch(response.status), f"not a valid status line: {response.status!r}"


def check_answer(response: Any, before: Snapshot, after: Snapshot, *, may_store: bool) -> None:
    """Never a 5xx, a valid status line, no temp file left; a rejection stores nothing."""
    detail = f"{response.status} {response.get_data()[:300]!r}"
    assert_status_line_is_valid(response)
    assert response.status_code < 500, detail
    assert after.temps == frozenset(), f"temp files left: {sorted(after.temps)[:5]}"
    if response.status_code == 200:
        assert may_store, f"a hostile upload was accepted: {detail}"
    else:
        assert 400 <= response.status_code < 500, detail
        assert after == before, f"stored after {detail}"


def post_form(client: Any, form: dict[str, Any], headers: dict[str, str]) -> Any:
    """POST a multipart form to the stage index."""
    return client.post(STAGE, data=form, headers=headers, content_type="multipart/form-data")


def stored_sha256(app: Any, filename: str) -> str | None:
    """The sha256 recorded for `filename`, if it is stored."""
    with app.extensions["pyshelf.db"].session() as session:
        row = session.query(File).filter(File.filename == filename).one_or_none()
        return row.sha256 if row else None


# --- (1) the upload endpoint -----------------------------------------------------------------


@FUZZ
@given(overrides=st.dictionaries(st.sampled_from(UPLOAD_FIELDS), hostile_text, max_size=4))
def test_upload_with_hostile_form_fields_never_fails_and_stores_only_the_real_wheel(
    app: Any, client: Any, settings: Settings, admin_auth: dict[str, str], overrides: dict
) -> None:
    CASES["upload form fields"] += 1
    before = snapshot(app, settings)
    response = post_form(client, upload_form(WHEEL, WHEEL_BYTES, **overrides), admin_auth)
    check_answer(response, before, snapshot(app, settings), may_store=True)
    if response.status_code == 200:  # only the wheel we built, as we built it
        assert stored_sha256(app, WHEEL) == hashlib.sha256(WHEEL_BYTES).hexdigest()


hostile_filename = st.one_of(
    st.sampled_from(
        [
            "../" + WHEEL,
            "../../../../tmp/" + WHEEL,
            "/etc/" + WHEEL,
            "/" + WHEEL,
            "..\\..\\" + WHEEL,
            "C:\\" + WHEEL,
            WHEEL.replace(".whl", "\x00.whl"),
            WHEEL + "\x00.exe",
            WHEEL.replace("fuzz", "fuzz\x00"),
            WHEEL.replace("fuzz", f"fuzz{CYRILLIC_A}"),
            WHEEL.replace("fuzz_pkg", "fuzz_p\u212ag"),
            "\uff46" + WHEEL[1:],
            "fuzz_pkg-" + "9" * 5000 + "-py3-none-any.whl",
            "fuzz_pkg-1.0.0-py3-none-any" + "-x" * 2000 + ".whl",
            "x" * 10_000 + ".whl",
            WHEEL.removesuffix(".whl") + ".exe",
            WHEEL.removesuffix(".whl") + ".tar.gz",
            WHEEL.removesuffix(".whl") + ".zip",
            WHEEL.upper(),
            ".whl",
            "-.whl",
            "--.tar.gz",
            "fuzz_pkg-1.0.0-py3-none-any.whl.",
            " " + WHEEL,
            "fuzz_pkg-1.0.0\n-py3-none-any.whl",
            "fuzz_pkg-1!0.0.0-py3-none-any.whl",
        ]
    ),
    st.text(min_size=1, max_size=300).map(lambda text: text + ".whl"),
    st.text(min_size=1, max_size=300).map(lambda text: text + ".tar.gz"),
    st.text(min_size=1, max_size=300),
)


@FUZZ
@given(filename=hostile_filename)
def test_upload_with_hostile_filename_is_refused_with_4xx_and_stores_nothing(
    app: Any, client: Any, settings: Settings, admin_auth: dict[str, str], filename: str
) -> None:
    CASES["upload filenames"] += 1
    before = snapshot(app, settings)
    form = upload_form(WHEEL, WHEEL_BYTES)
    form["content"] = (io.BytesIO(WHEEL_BYTES), filename)
    response = post_form(client, form, admin_auth)
    check_answer(response, before, snapshot(app, settings), may_store=False)


@FUZZ
@given(
    overrides=st.dictionaries(st.sampled_from(UPLOAD_FIELDS), control_text, min_size=1, max_size=3),
    filename=st.one_of(st.just(WHEEL), control_text.map(lambda text: text + ".whl")),
)
def test_upload_with_control_characters_in_any_form_field_answers_a_valid_status_line(
    app: Any,
    client: Any,
    settings: Settings,
    admin_auth: dict[str, str],
    overrides: dict[str, str],
    filename: str,
) -> None:
    """A NUL in `name` once reached the status line and gunicorn answered 500 (issue #15)."""
    CASES["upload control characters"] += 1
    before = snapshot(app, settings)
    form = upload_form(WHEEL, WHEEL_BYTES, **overrides)
    form["content"] = (io.BytesIO(WHEEL_BYTES), filename)
    response = post_form(client, form, admin_auth)
    check_answer(response, before, snapshot(app, settings), may_store=filename == WHEEL)


HEADER_TARGETS = [
    ("POST", STAGE),
    ("GET", "/admin/dev/+simple/fuzz-pkg/"),
    ("GET", "/admin/dev/"),
    ("PATCH", "/admin/dev"),
    ("POST", "/+login"),
]


@FUZZ
@given(
    header=st.sampled_from(
        [
            "Authorization",
            "X-Devpi-Auth",
            "Accept",
            "Content-Type",
            "Origin",
            "Sec-Fetch-Site",
            "X-Forwarded-For",
            "X-Forwarded-Host",
            "X-Forwarded-Proto",
            "X-Forwarded-Port",
            "X-Forwarded-Prefix",
        ]
    ),
    value=control_text,
    target=st.sampled_from(HEADER_TARGETS),
    peer=st.sampled_from(["127.0.0.1", "203.0.113.9"]),  # a trusted proxy, a stranger
)
def test_control_characters_in_headers_answer_a_valid_status_line(
    client: Any,
    admin_auth: dict[str, str],
    header: str,
    value: str,
    target: tuple[str, str],
    peer: str,
) -> None:
    """Control characters in a Basic username, Accept, Content-Type or X-Forwarded-* never
    make a 5xx or an invalid status line, whether the peer is a trusted proxy or not."""
    CASES["headers with control characters"] += 1
    headers = dict(admin_auth)
    if header == "Authorization":  # the username of Basic credentials
        headers[header] = basic_auth(value, "password")
    else:  # no CR or LF: they end a header line (the test client refuses them too)
        headers[header] = value.replace("\r", "\x00").replace("\n", "\x00")
    method, path = target
    body = json.dumps({"title": "fuzz"}) if method == "PATCH" else "{}"
    response = client.open(
        path,
        method=method,
        headers=headers,
        data=body,
        content_type=headers.pop("Content-Type", "application/json"),
        environ_base={"REMOTE_ADDR": peer},
    )
    _never_500(response)


@st.composite
def mutated_dist(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid wheel or sdist with flipped bytes, truncated, or with random bytes."""
    filename, data = draw(st.sampled_from([(WHEEL, WHEEL_BYTES), (SDIST, SDIST_BYTES)]))
    how = draw(st.sampled_from(["flip", "truncate", "random", "append", "swap"]))
    if how == "flip":
        buffer = bytearray(data)
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            buffer[position] ^= draw(st.integers(1, 255))
        data = bytes(buffer)
    elif how == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif how == "random":
        data = draw(st.binary(max_size=4096))
    elif how == "append":
        data += draw(st.binary(min_size=1, max_size=512))
    else:  # a wheel's bytes under the sdist's name and the other way round
        other = SDIST_BYTES if data == WHEEL_BYTES else WHEEL_BYTES
        data = other
    # A different version per case, so an earlier accepted mutation does not make this a 409.
    version = f"1.0.{draw(st.integers(1, 10**9))}"
    return filename.replace("1.0.0", version), data


@FUZZ
@given(dist=mutated_dist())
def test_upload_of_a_corrupted_distribution_never_fails_and_stores_nothing_when_refused(
    app: Any, client: Any, settings: Settings, admin_auth: dict[str, str], dist: tuple
) -> None:
    CASES["upload corrupted archives"] += 1
    filename, data = dist
    before = snapshot(app, settings)
    response = post_form(client, upload_form(filename, data), admin_auth)
    # The filename's version no longer matches the METADATA inside: nothing may be accepted.
    check_answer(response, before, snapshot(app, settings), may_store=False)


@st.composite
def hostile_sdist(draw: st.DrawFn) -> tuple[str, list[str], bytes]:
    """An sdist tarball with symlinks, hard links, devices, `..` or absolute member names:
    (what PKG-INFO is, the extra symlinks' names, the tarball)."""
    stem = "fuzz_pkg-1.0.0"
    pkg_info = b"Metadata-Version: 2.1\nName: fuzz-pkg\nVersion: 1.0.0\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        kind = draw(st.sampled_from(["symlink", "hardlink", "fifo", "chardev", "dir", "regular"]))
        target = draw(
            st.sampled_from(["/etc/passwd", "../../../etc/passwd", f"{stem}/x", "PKG-INFO", ""])
        )
        entry = tarfile.TarInfo(f"{stem}/PKG-INFO")
        types = {
            "symlink": tarfile.SYMTYPE,
            "hardlink": tarfile.LNKTYPE,
            "fifo": tarfile.FIFOTYPE,
            "chardev": tarfile.CHRTYPE,
            "dir": tarfile.DIRTYPE,
        }
        if kind == "regular":
            entry.size = len(pkg_info)
            archive.addfile(entry, io.BytesIO(pkg_info))
        else:
            entry.type, entry.linkname = types[kind], target
            archive.addfile(entry)
        extras = draw(
            st.lists(
                st.sampled_from(
                    [
                        "../escape",
                        "/abs/path",
                        f"{stem}/../../escape",
                        "other_top/file",
                        f"{stem}/\x00nul",
                        f"./{stem}/./PKG-INFO",
                    ]
                ),
                min_size=1 if kind == "regular" else 0,
                max_size=3,
            )
        )
        for name in extras:
            extra = tarfile.TarInfo(name)
            extra.type, extra.linkname = tarfile.SYMTYPE, target
            archive.addfile(extra)
    return kind, extras, buffer.getvalue()


@FUZZ
@given(sdist=hostile_sdist())
def test_upload_of_sdist_with_links_devices_or_escaping_members_is_refused(
    app: Any, client: Any, settings: Settings, admin_auth: dict[str, str], sdist: tuple
) -> None:
    CASES["upload hostile sdist members"] += 1
    kind, extras, data = sdist
    before = snapshot(app, settings)
    response = post_form(client, upload_form(SDIST, data), admin_auth)
    check_answer(response, before, snapshot(app, settings), may_store=True)
    if response.status_code == 200:
        # Nothing is ever unpacked, so a link inside the one top folder is harmless (tar cuts
        # "top/\x00nul" at the NUL); a linked PKG-INFO or an escaping name never is.
        assert kind == "regular", response.status
        assert set(extras) <= {"fuzz_pkg-1.0.0/\x00nul"}, extras


@FUZZ
@given(
    body=st.one_of(st.binary(max_size=2048), st.text(max_size=2048).map(str.encode)),
    boundary=st.one_of(
        st.just("xYzZY"),
        st.text(alphabet=st.characters(codec="ascii", exclude_characters="\r\n"), max_size=80),
    ),
    prefix=st.sampled_from([b"", b"--xYzZY\r\n", b"--xYzZY\r\nContent-Disposition: form-data"]),
)
def test_upload_with_a_random_multipart_body_never_fails_and_stores_nothing(
    app: Any,
    client: Any,
    settings: Settings,
    admin_auth: dict[str, str],
    body: bytes,
    boundary: str,
    prefix: bytes,
) -> None:
    CASES["upload raw multipart bodies"] += 1
    before = snapshot(app, settings)
    response = client.post(
        STAGE,
        data=prefix + body,
        headers=admin_auth,
        content_type=f"multipart/form-data; boundary={boundary}",
    )
    check_answer(response, before, snapshot(app, settings), may_store=False)


header_value = st.text(
    alphabet=st.characters(codec="latin-1", exclude_characters="\r\n\x00"), max_size=300
)


@FUZZ
@given(
    content_type=st.one_of(
        st.sampled_from(
            [
                "application/json",
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data",
                "multipart/form-data; boundary=",
                "multipart/mixed; boundary=x",
                "application/octet-stream",
                "",
            ]
        ),
        header_value,
    ),
    body=st.binary(max_size=2048),
    authorization=st.one_of(
        st.none(),
        header_value.map(lambda value: "Basic " + value),
        st.sampled_from(["Basic", "Basic !!!", "Bearer x", "Basic " + "A" * 20_000]),
    ),
    extra=st.dictionaries(
        st.sampled_from(["X-Devpi-Auth", "Accept", "Content-Encoding", "Transfer-Encoding"]),
        header_value,
        max_size=2,
    ),
)
def test_upload_with_wrong_content_type_or_malformed_headers_never_fails(
    app: Any,
    client: Any,
    settings: Settings,
    admin_auth: dict[str, str],
    content_type: str,
    body: bytes,
    authorization: str | None,
    extra: dict[str, str],
) -> None:
    CASES["upload content types and headers"] += 1
    headers = {**extra, **({"Authorization": authorization} if authorization else admin_auth)}
    headers.pop("Transfer-Encoding", None)  # the test client would stream forever
    before = snapshot(app, settings)
    response = client.post(STAGE, data=body, headers=headers, content_type=content_type)
    check_answer(response, before, snapshot(app, settings), may_store=False)


# Archive bombs are built once: deflating 70 MiB of zeros takes a moment.
BOMB_BYTES = 70 << 20  # past RATIO_MIN_BYTES (64 MiB), far past the 50:1 ratio


def _zip_bomb_wheel() -> bytes:
    _filename, data = make_wheel("fuzz-pkg", "2.0.0")
    buffer = io.BytesIO(data)
    with (
        zipfile.ZipFile(buffer, "a", zipfile.ZIP_DEFLATED) as archive,
        archive.open("fuzz_pkg/zeros.bin", "w", force_zip64=True) as member,
    ):
        chunk = bytes(1 << 20)
        for _ in range(BOMB_BYTES >> 20):
            member.write(chunk)
    return buffer.getvalue()


def _tar_bomb_sdist() -> bytes:
    stem = "fuzz_pkg-2.0.0"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        entry = tarfile.TarInfo(f"{stem}/zeros.bin")
        entry.size = BOMB_BYTES
        archive.addfile(entry, io.BytesIO(bytes(BOMB_BYTES)))
        pkg_info = b"Metadata-Version: 2.1\nName: fuzz-pkg\nVersion: 2.0.0\n"
        entry = tarfile.TarInfo(f"{stem}/PKG-INFO")
        entry.size = len(pkg_info)
        archive.addfile(entry, io.BytesIO(pkg_info))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("filename", "build"),
    [
        pytest.param("fuzz_pkg-2.0.0-py3-none-any.whl", _zip_bomb_wheel, id="zip-bomb-wheel"),
        pytest.param("fuzz_pkg-2.0.0.tar.gz", _tar_bomb_sdist, id="tar-bomb-sdist"),
    ],
)
def test_upload_of_an_archive_bomb_is_refused_for_its_compression_ratio(
    app: Any,
    client: Any,
    settings: Settings,
    admin_auth: dict[str, str],
    filename: str,
    build: Any,
) -> None:
    data = build()
    before = snapshot(app, settings)
    response = post_form(client, upload_form(filename, data), admin_auth)
    assert response.status == (
        "400 Invalid distribution file. File exceeds compression ratio of 50"
    )
    check_answer(response, before, snapshot(app, settings), may_store=False)


# --- (2) simple and JSON API reads -----------------------------------------------------------

path_text = st.one_of(
    st.sampled_from([*HOSTILE_STRINGS[:16], "fuzz-pkg", "Fuzz_Pkg", "%00", "%2e%2e", "+f", "."]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="/?#"), max_size=80),
)
accept = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/vnd.pypi.simple.v1+json",
            "application/vnd.pypi.simple.latest+json;q=0.5, text/html;q=0.1",
            "application/json",
            "*/*;q=NaN",
            "text/html;q=inf",
            "text/html;q=-1",
            ";;;,,,",
            "application/vnd.pypi.simple.v1+json;q=1e999",
        ]
    ),
    header_value,
)


def _get(client: Any, path: str, accept_header: str | None, query: dict[str, str]) -> Any:
    headers = {"Accept": accept_header} if accept_header is not None else {}
    return client.get(path, headers=headers, query_string=query)


def _never_500(response: Any) -> None:
    assert_status_line_is_valid(response)
    # root/pypi's upstream refuses connections here: 502/504 say so, as the style asks.
    assert response.status_code < 500 or response.status_code in (502, 504), (
        f"{response.status} {response.get_data()[:300]!r}"
    )


@FUZZ
@given(
    project=path_text,
    accept_header=accept,
    format_value=st.one_of(st.none(), header_value, st.sampled_from(["json", "v1+json", " "])),
    index=st.sampled_from(["admin/dev", "root/pypi", "admin/nope", "../..", "admin/dev%00"]),
)
def test_simple_pages_with_random_names_accept_headers_and_formats_never_fail(
    client: Any, project: str, accept_header: str | None, format_value: str | None, index: str
) -> None:
    CASES["simple and JSON API GETs"] += 1
    query = {"format": format_value} if format_value is not None else {}
    for path in (
        f"/{index}/+simple/{project}/",
        f"/{index}/+simple/{project}",
        f"/{index}/+simple/",
        f"/{index}/{project}",
        f"/{index}/fuzz-pkg/{project}/",
        f"/{index}/fuzz-pkg/{project}/+doc/",
        f"/{index}/fuzz-pkg/latest/+doc/{project}",
        f"/{index}/",
        f"/{project}",
    ):
        _never_500(_get(client, path, accept_header, query))


@FUZZ
@given(
    sha256=st.one_of(
        st.just(hashlib.sha256(WHEEL_BYTES).hexdigest()), st.text(max_size=70), path_text
    ),
    filename=st.one_of(st.just(WHEEL), st.just(WHEEL + ".metadata"), path_text, hostile_text),
    range_header=st.one_of(st.none(), header_value.map(lambda value: "bytes=" + value)),
    index=st.sampled_from(["admin/dev", "root/pypi"]),
)
def test_file_urls_with_random_hashes_filenames_and_ranges_never_fail(
    client: Any,
    admin_auth: dict[str, str],
    sha256: str,
    filename: str,
    range_header: str | None,
    index: str,
) -> None:
    CASES["+f file GETs"] += 1
    headers = {"Range": range_header} if range_header else {}
    if filename.strip("\x00"):
        _never_500(client.get(f"/{index}/+f/{sha256}/{filename}", headers=headers))


def test_file_urls_serve_an_uploaded_wheel_despite_random_ranges(
    client: Any, admin_auth: dict[str, str]
) -> None:
    assert post_form(client, upload_form(WHEEL, WHEEL_BYTES), admin_auth).status_code == 200
    sha256 = hashlib.sha256(WHEEL_BYTES).hexdigest()
    for range_header in ("bytes=0-", "bytes=-1", "bytes=999999-", "bytes=5-1", "bytes=a-b", ""):
        response = client.get(f"/admin/dev/+f/{sha256}/{WHEEL}", headers={"Range": range_header})
        assert response.status_code in (200, 206, 416), range_header


# --- (3) JSON API writes -----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | hostile_text,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.one_of(
                st.sampled_from(
                    [
                        "password",
                        "email",
                        "superuser",
                        "is_superuser",
                        "bases",
                        "volatile",
                        "acl_upload",
                        "acl_read",
                        "type",
                        "result",
                        "mirror_url",
                        "mirror_whitelist",
                        "yanked",
                        "reason",
                        "index",
                        "description",
                        "projects",
                    ]
                ),
                hostile_text,
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@st.composite
def api_body(draw: st.DrawFn) -> tuple[bytes, str]:
    """A JSON (or not JSON) body and a content type, right or wrong."""
    kind = draw(st.sampled_from(["json", "json", "operations", "bytes", "text"]))
    if kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "operations":
        body = json.dumps(draw(st.lists(hostile_text | st.sampled_from(OPERATIONS), max_size=4)))
        body = body.encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=512))
    else:
        body = draw(st.text(max_size=512)).encode()
    content_type = draw(
        st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""])
        | header_value
    )
    return body, content_type


OPERATIONS = [
    "volatile=maybe",
    "bases=admin/dev",
    "bases+=../../x",
    "bases-=",
    "acl_upload+=:ANONYMOUS:",
    "mirror_url=file:///etc/passwd",
    "=",
    "+=",
    "key",
    "bases=" + "x/" * 500,
]


@FUZZ
@given(
    method=st.sampled_from(["PUT", "PATCH", "POST", "DELETE"]),
    target=st.sampled_from(
        [
            "/fuzzuser",
            "/admin",
            "/admin/fuzzidx",
            "/admin/dev",
            "/admin/dev/fuzz-pkg/1.0.0",
            "/admin/dev/fuzz-pkg/not-a-version",
            "/admin/+tokens",
            "/fuzzuser/fuzzidx",
        ]
    ),
    body=api_body(),
)
def test_json_api_writes_with_random_bodies_and_content_types_never_fail(
    app: Any,
    client: Any,
    settings: Settings,
    admin_auth: dict[str, str],
    method: str,
    target: str,
    body: tuple[bytes, str],
) -> None:
    CASES["JSON API writes"] += 1
    data, content_type = body
    if method == "DELETE" and target in ("/admin", "/admin/dev"):
        method = "PATCH"  # deleting the stage would end the run's meaning, not find a bug
    response = client.open(
        target, method=method, data=data, headers=admin_auth, content_type=content_type
    )
    assert response.status_code < 500, f"{method} {target} {data[:200]!r}: {response.status}"
    assert_status_line_is_valid(response)


# --- (4) documentation uploads ---------------------------------------------------------------


def _symlink_member(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
    info.create_system = 3  # unix, so external_attr carries the mode
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    info.compress_type = zipfile.ZIP_STORED
    return info


@st.composite
def hostile_docs_zip(draw: st.DrawFn) -> bytes:
    """A docs zip with escaping names, symlinks, lies about sizes, or garbage."""
    kind = draw(st.sampled_from(["members", "symlinks", "garbage", "flipped", "encrypted"]))
    if kind == "garbage":
        return draw(st.binary(max_size=2048))
    names = draw(
        st.lists(
            st.sampled_from(
                [
                    "index.html",
                    "../index.html",
                    "/index.html",
                    "C:/index.html",
                    "..\\..\\index.html",
                    "html/index.html",
                    "a/../../index.html",
                    "nul\x00.html",
                    f"{CYRILLIC_A}/index.html",
                    "./././index.html",
                    "",
                    "/",
                ]
            )
            | hostile_text.filter(lambda text: len(text) < 1000),
            min_size=1,
            max_size=5,
        )
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            if kind == "symlinks":
                archive.writestr(_symlink_member(name, "/etc/passwd"), "/etc/passwd")
            else:
                info = zipfile.ZipInfo(name or "x", (2020, 1, 1, 0, 0, 0))
                if kind == "encrypted":
                    info.flag_bits |= 0x1
                archive.writestr(info, b"<html>hi</html>")
    data = buffer.getvalue()
    if kind == "flipped":
        mutated = bytearray(data)
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=6)):
            mutated[position] ^= 0xFF
        data = bytes(mutated)
    return data


@pytest.fixture
def released(client: Any, admin_auth: dict[str, str]) -> None:
    """fuzz-pkg 1.0.0 on admin/dev, so doc uploads get past the project check."""
    assert post_form(client, upload_form(WHEEL, WHEEL_BYTES), admin_auth).status_code == 200


@pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")  # duplicates are the point
@FUZZ
@given(
    data=hostile_docs_zip(),
    name=st.one_of(st.just("fuzz-pkg"), hostile_text),
    version=st.one_of(st.just("1.0.0"), hostile_text),
    filename=st.one_of(st.just("docs.zip"), hostile_text.filter(bool)),
)
def test_doc_upload_of_a_hostile_zip_never_fails_and_stores_nothing_when_refused(
    app: Any,
    client: Any,
    settings: Settings,
    admin_auth: dict[str, str],
    released: None,
    data: bytes,
    name: str,
    version: str,
    filename: str,
) -> None:
    CASES["doc uploads"] += 1
    form = {
        ":action": "doc_upload",
        "protocol_version": "1",
        "name": name,
        "version": version,
        "content": (io.BytesIO(data), filename),
    }
    before = snapshot(app, settings)
    response = post_form(client, form, admin_auth)
    # A zip with a top-level index.html and only symlinks is stored (never unpacked): allowed.
    check_answer(response, before, snapshot(app, settings), may_store=True)


def test_doc_upload_of_a_zip_bomb_is_refused_for_its_unpacked_size(
    app: Any, client: Any, settings: Settings, admin_auth: dict[str, str], released: None
) -> None:
    settings = dataclasses.replace(settings, docs_max_bytes=1 << 20)  # 1 MiB: a small bomb
    app.config["PYSHELF_SETTINGS"] = settings
    bomb = zip_bytes({"index.html": b"<html></html>", "zeros.bin": bytes(2 << 20)})
    form = {
        ":action": "doc_upload",
        "name": "fuzz-pkg",
        "version": "1.0.0",
        "content": (io.BytesIO(bomb), "docs.zip"),
    }
    before = snapshot(app, settings)
    response = post_form(client, form, admin_auth)
    assert response.status == (
        "400 Documentation zip unpacks to more than 1048576 bytes (DOCS_MAX_SIZE)."
    )
    check_answer(response, before, snapshot(app, settings), may_store=False)


def test_sdist_symlink_builder_output_is_refused_as_pkg_info(
    app: Any, client: Any, settings: Settings, admin_auth: dict[str, str]
) -> None:
    stem = "fuzz_pkg-1.0.0"
    data = tar_gz_bytes({}, symlinks={f"{stem}/PKG-INFO": "/etc/passwd"}, directories=[stem])
    before = snapshot(app, settings)
    response = post_form(client, upload_form(SDIST, data), admin_auth)
    assert response.status == (
        "400 Invalid distribution file. Link 'fuzz_pkg-1.0.0/PKG-INFO' points outside the sdist"
    )
    check_answer(response, before, snapshot(app, settings), may_store=False)


# --- regressions the properties found ----------------------------------------------------------

HUGE_RELEASE = "9" * 5000  # past int()'s 4300-digit limit: packaging's Version raised ValueError


@pytest.mark.parametrize(
    ("filename", "fields", "expected"),
    [
        pytest.param(
            f"fuzz_pkg-{HUGE_RELEASE}-py3-none-any.whl",
            {},
            f"400 Invalid wheel filename: 'fuzz_pkg-{'9' * 88}...'",
            id="wheel-filename",
        ),
        pytest.param(
            f"fuzz_pkg-{HUGE_RELEASE}.tar.gz",
            {},
            f"400 Invalid source distribution filename: 'fuzz_pkg-{'9' * 88}...'. "
            "Expected '<name>-<version>.tar.gz' with a PEP 440 version.",
            id="sdist-filename",
        ),
        pytest.param(
            WHEEL,
            {"version": HUGE_RELEASE},
            f"400 '{'9' * 296}...",  # the reason is cut at 300 characters
            id="form-version",
        ),
    ],
)
def test_upload_with_a_version_of_5000_digits_is_a_400_not_a_500(
    app: Any,
    client: Any,
    settings: Settings,
    admin_auth: dict[str, str],
    filename: str,
    fields: dict[str, str],
    expected: str,
) -> None:
    before = snapshot(app, settings)
    response = post_form(client, upload_form(filename, WHEEL_BYTES, **fields), admin_auth)
    assert response.status == expected
    check_answer(response, before, snapshot(app, settings), may_store=False)


def test_doc_upload_and_doc_pages_with_a_version_of_5000_digits_are_4xx(
    client: Any, admin_auth: dict[str, str], released: None
) -> None:
    form = {
        ":action": "doc_upload",
        "name": "fuzz-pkg",
        "version": HUGE_RELEASE,
        "content": (io.BytesIO(zip_bytes({"index.html": b"<html></html>"})), "docs.zip"),
    }
    response = post_form(client, form, admin_auth)
    assert response.status == f"400 '{'9' * 100}' is an invalid value for Version (PEP 440)."
    assert client.get(f"/admin/dev/fuzz-pkg/{HUGE_RELEASE}/+doc/").status_code == 404
    yank = client.patch(
        f"/admin/dev/fuzz-pkg/{HUGE_RELEASE}", json={"yanked": True}, headers=admin_auth
    )
    assert yank.status == f"400 '{'9' * 296}..."


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Authorization": "Basic \u00e9t\u00e9"}, id="authorization"),
        pytest.param({"X-Devpi-Auth": "\u00e9t\u00e9"}, id="x-devpi-auth"),
    ],
)
def test_credentials_with_non_ascii_base64_are_refused_not_a_500(
    client: Any, headers: dict[str, str]
) -> None:
    response = client.post(STAGE, data=upload_form(WHEEL, WHEEL_BYTES), headers=headers)
    if "Authorization" in headers:
        assert response.status == "400 Malformed Basic Authorization header."
    else:  # as devpi-server: an unreadable X-Devpi-Auth is no credentials at all
        assert response.status_code == 401


def test_doc_zip_with_a_nul_named_member_is_stored_and_served(
    client: Any, admin_auth: dict[str, str], released: None
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.html", b"<html>docs</html>")
        archive.writestr(zipfile.ZipInfo("\x00evil"), b"x")  # name cut at the NUL: ""
    form = {
        ":action": "doc_upload",
        "name": "fuzz-pkg",
        "version": "1.0.0",
        "content": (io.BytesIO(buffer.getvalue()), "docs.zip"),
    }
    assert post_form(client, form, admin_auth).status_code == 200
    page = client.get("/admin/dev/fuzz-pkg/1.0.0/+doc/index.html")
    assert page.status_code == 200
    assert page.get_data() == b"<html>docs</html>"


@pytest.mark.parametrize("project", ["%00", "x" * 300], ids=["nul", "300-characters"])
def test_simple_page_of_a_name_unfit_for_a_lock_file_says_upstream_failed(
    client: Any, project: str
) -> None:
    response = client.get(f"/admin/dev/+simple/{project}/")
    # normalized names are lowercase; upstream (nothing listens on port 9) is asked, and fails
    assert response.status_code in (404, 502), response.status


def test_hostile_input_properties_ran_their_cases(capsys: pytest.CaptureFixture) -> None:
    """Report the number of cases run (the last test in this file)."""
    total = sum(CASES.values())
    with capsys.disabled():
        lines = [f"  {count:6d}  {name}" for name, count in sorted(CASES.items())]
        print(f"\nhostile-input cases run: {total}", *lines, sep="\n")
    if CASES:
        from tests.robustness.support import record_figures

        record_figures("fuzz", {"cases": total, "properties": len(CASES)})
    if CASES:  # empty when run alone with -k
        assert total >= len(CASES)
