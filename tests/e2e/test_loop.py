"""Stored files and pages of public indexes answered on the worker's event loop (app/http/loop.py),
on a live server: the same answer as a thread gives (pages: every Accept and Accept-Encoding,
HEAD, 304), keep-alive, pipelining, ranges; a private index's files, sidecars and pages still
refused to anonymous readers, other accounts and tokens scoped elsewhere, also on a connection
the loop has just served; a page due for a check goes to a thread, which stores it again."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import random
import re
import secrets
import socket
import sqlite3
import struct
import time
from collections.abc import Iterator

import pytest

from tests.builders import make_wheel
from tests.conftest import ADMIN_PASSWORD, TEST_DATABASE, TEST_STORAGE, LiveServer, basic_auth
from tests.e2e.helpers import api, file_url, raw_upload
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.e2e

ALICE = ("alice", "alice-password")
MALLORY = ("mallory", "mallory-password")
# 4 MB that do not compress: more than a socket takes at once, so a thread sends the rest
NOISE = random.Random(7).randbytes(4 << 20)  # noqa: S311 - test data, not a secret
PUBLIC = make_wheel("open-pkg", "1.0", files={"open_pkg/data.bin": NOISE})
SECRET = make_wheel("secret-pkg", "1.0", summary="alice's secret")
MIRRORED = make_wheel("mirrored-pkg", "2.0")
# A mirrored project with enough files for a page past GZIP_MIN_BYTES (a gzipped twin)
MANY_FILES = 60
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
UV_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
# A thread answers a request with a proxy's header (CachedPages and CachedFiles answer there).
TO_A_THREAD = {"X-Forwarded-For": "192.0.2.1"}
LOOP_LINE_RE = re.compile(r"sent on the event loop: \S+ \S+ \(([0-9a-f]+)\)")
# The loop sends files on SQLite + disk; elsewhere threads do, and the answers are the same.
LOOP = int(TEST_DATABASE == "sqlite" and TEST_STORAGE == "local")
TIMEOUT_SECONDS = 30
LOG_WAIT_SECONDS = 10
# Headers a thread's answer and the loop's may differ in: when, and which request it was.
PER_REQUEST = {"date", "x-request-id"}


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A server (debug log) with alice/public, alice/private (alice alone reads it), a wheel
    on each, mallory, a token of alice's for alice/public, and a mirror file cached once."""
    with FakeUpstream() as upstream:
        upstream.add_file("mirrored-pkg", *MIRRORED)
        for number in range(MANY_FILES):
            upstream.add_file("many-pkg", f"many_pkg-1.{number}-py3-none-any.whl", b"%d" % number)
        server = LiveServer(
            tmp_path_factory.mktemp("loop") / "data",
            {
                "ADMIN_PASSWORD": ADMIN_PASSWORD,
                "MIRROR_URL": upstream.url,
                "WEB_CONCURRENCY": "2",
                "THREADS": "2",
                "LOG_LEVEL": "DEBUG",
            },
        )
        server.start()
        try:
            for user in (ALICE, MALLORY):
                assert api(server, "PUT", f"/{user[0]}", {"password": user[1]})[0] == 201
            for name, config in (("public", {}), ("private", {"acl_read": ["alice"]})):
                config["bases"] = []
                status, body, _ = api(server, "PUT", f"/alice/{name}", config, auth=ALICE)
                assert status == 201, body
            for index, (filename, data) in (("public", PUBLIC), ("private", SECRET)):
                status, _, answer, _ = raw_upload(
                    server, f"alice/{index}", filename, data, auth=ALICE
                )
                assert status == 200, answer
            status, body, _ = api(
                server, "POST", "/alice/+tokens", {"index": "alice/public"}, auth=ALICE
            )
            assert status == 201, body
            paths = {
                "public": file_url(server, "alice/public", "open-pkg", PUBLIC[0]),
                "mirrored": file_url(server, "root/pypi", "mirrored-pkg", MIRRORED[0]),
            }
            status, _, data, _ = server.get(paths["mirrored"])  # cached now, by a thread
            assert (status, data) == (200, MIRRORED[1])
            status, _, _, _ = server.get(
                "/alice/private/+simple/secret-pkg/", headers={"Authorization": auth(ALICE)}
            )
            sha256 = hashlib.sha256(SECRET[1]).hexdigest()
            paths["private"] = f"/alice/private/+f/{sha256}/{SECRET[0]}"
            pages = {
                "hosted": "/alice/public/+simple/open-pkg/",
                "large": "/root/pypi/+simple/many-pkg/",
                "private": "/alice/private/+simple/secret-pkg/",
            }
            yield {
                "server": server,
                "paths": paths,
                "pages": pages,
                "token": body["result"]["token"],
                "data_dir": server.data_dir,
            }
        finally:
            server.stop()


def auth(user: tuple[str, str]) -> str:
    """An Authorization header's value."""
    return basic_auth(*user)


def loop_sent(
    server: LiveServer,
    connection: http.client.HTTPConnection,
    path: str,
    headers: dict[str, str] | None = None,
) -> set[str]:
    """Fetch `path` (which the loop answers) and wait for its line: then the request ids of
    every answer the loop has sent. A connection stays with one worker, whose loop logs each
    answer before it reads the next request: none of the earlier ones on `connection` is
    missing then. Elsewhere than SQLite + disk: no wait, no ids."""
    answer = fetch(connection, path, headers)
    assert answer[0] == 200, answer[2]
    last = request_id(answer)
    deadline = time.monotonic() + LOG_WAIT_SECONDS
    while True:
        ids = set(LOOP_LINE_RE.findall(server.log()))
        if not LOOP or last in ids or time.monotonic() > deadline:
            return ids
        time.sleep(0.05)


def request_id(answer: tuple[int, dict[str, str], bytes]) -> str:
    """The X-Request-ID an answer echoed (fetch sends a new one with every request)."""
    return answer[1]["x-request-id"]


def fetch(
    connection: http.client.HTTPConnection,
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> tuple[int, dict[str, str], bytes]:
    """One request on a kept-alive connection, read to its end: (status, headers, body); it
    carries a new X-Request-ID unless `headers` have one."""
    headers = {"X-Request-ID": secrets.token_hex(8), **(headers or {})}
    connection.request(method, path, headers=headers)
    response = connection.getresponse()
    body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


@pytest.mark.parametrize("kind", ["public", "mirrored"])
def test_a_stored_file_is_sent_by_the_loop_as_a_thread_sends_it(shelf: dict, kind: str) -> None:
    """Byte for byte and header for header (Date and X-Request-ID aside), the sidecar too."""
    server, path = shelf["server"], shelf["paths"][kind]
    expected = PUBLIC[1] if kind == "public" else MIRRORED[1]
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_SECONDS)
    try:
        for target in (path, path + ".metadata"):
            by_loop = fetch(connection, target)
            by_thread = fetch(connection, target, TO_A_THREAD)
            ids = loop_sent(server, connection, target)
            assert [request_id(a) in ids for a in (by_loop, by_thread)] == [bool(LOOP), False]
            assert by_loop[0] == by_thread[0] == 200
            assert by_loop[2] == by_thread[2]
            drop = PER_REQUEST.__contains__
            assert {k: v for k, v in by_loop[1].items() if not drop(k)} == {
                k: v for k, v in by_thread[1].items() if not drop(k)
            }
            assert by_loop[1]["connection"] == "keep-alive"
        assert fetch(connection, path)[2] == expected
    finally:
        connection.close()


def test_head_ranges_and_revalidations(shelf: dict) -> None:
    """HEAD is the loop's (no body); a range and an If-None-Match are a thread's, as before."""
    server, path = shelf["server"], shelf["paths"]["public"]
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_SECONDS)
    try:
        head = fetch(connection, path, method="HEAD")
        assert (head[0], head[2], head[1]["content-length"]) == (200, b"", str(len(PUBLIC[1])))
        ranged = fetch(connection, path, {"Range": "bytes=10-19"})
        assert (ranged[0], ranged[2]) == (206, PUBLIC[1][10:20])
        revalidated = fetch(connection, path, {"If-None-Match": head[1]["etag"]})
        assert (revalidated[0], revalidated[2]) == (304, b"")
        ids = loop_sent(server, connection, path)
        answers = (head, ranged, revalidated)
        assert [request_id(a) in ids for a in answers] == [bool(LOOP), False, False]
        assert fetch(connection, path)[2] == PUBLIC[1]
    finally:
        connection.close()


def test_pipelined_requests_and_connection_close(shelf: dict) -> None:
    """Two requests in one packet get two answers in order; `Connection: close` closes."""
    server, path = shelf["server"], shelf["paths"]["public"]
    head = f"GET {path}.metadata HTTP/1.1\r\nHost: x\r\n\r\n"
    last = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_SECONDS) as sock:
        sock.sendall((head + last).encode())
        received = bytearray()
        for _ in range(10_000):  # until the server closes
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert b"Connection: close\r\n" in received
    assert received.endswith(PUBLIC[1])


def test_a_client_gone_mid_body_costs_only_its_own_answer(shelf: dict) -> None:
    """Clients that reset the connection after the first bytes of a file larger than a socket
    takes at once (the rest still being sent): the workers go on, the next downloads are whole
    and nothing is logged as an error."""
    server, path = shelf["server"], shelf["paths"]["public"]
    for _ in range(4):  # both workers, twice
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_SECONDS) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert sock.recv(1 << 16).startswith(b"HTTP/1.1 200 OK\r\n")
            # close with a RST (SO_LINGER 0): the server's next send fails
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_SECONDS)
    try:
        for _ in range(3):
            status, _headers, body = fetch(connection, path)
            assert (status, body) == (200, PUBLIC[1])
    finally:
        connection.close()
    assert not [line for line in server.log().splitlines() if "Traceback" in line]


@pytest.mark.parametrize("suffix", ["", ".metadata"])
@pytest.mark.parametrize(
    ("who", "status"),
    [("anonymous", 401), ("mallory", 403), ("scoped token", 403), ("alice", 200)],
)
def test_a_private_index_refuses_its_files_on_a_connection_the_loop_served(
    shelf: dict, suffix: str, who: str, status: int
) -> None:
    """acl_read decides in the view, as ever: the loop never answers for a private index."""
    server, paths = shelf["server"], shelf["paths"]
    headers = {
        "anonymous": {},
        "mallory": {"Authorization": auth(MALLORY)},
        "scoped token": {"Authorization": basic_auth("__token__", shelf["token"])},
        "alice": {"Authorization": auth(ALICE)},
    }[who]
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_SECONDS)
    try:
        loop_sent(server, connection, paths["public"] + suffix)
        answer = fetch(connection, paths["private"] + suffix, headers)
        assert answer[0] == status, answer[2]
        assert request_id(answer) not in loop_sent(server, connection, paths["public"] + suffix)
        body = answer[2]
        if status != 200:
            assert b"alice's secret" not in body
            assert not body.startswith(b"PK")
    finally:
        connection.close()


def without_per_request(headers: dict[str, str]) -> dict[str, str]:
    """The headers but Date and X-Request-ID."""
    return {k: v for k, v in headers.items() if k not in PER_REQUEST}


def unzipped(answer: tuple[int, dict[str, str], bytes]) -> bytes:
    """An answer's body, gunzipped if it came gzipped."""
    is_gzip = answer[1].get("content-encoding") == "gzip"
    return gzip.decompress(answer[2]) if is_gzip else answer[2]


PAGE_REQUESTS = {
    "no accept": {},
    "pip": {"Accept": PIP_ACCEPT, "Accept-Encoding": "gzip, deflate"},
    "uv": {"Accept": UV_ACCEPT, "Accept-Encoding": "gzip, deflate, br"},
    "json": {"Accept": "application/vnd.pypi.simple.v1+json"},
    "latest json": {"Accept": "application/vnd.pypi.simple.latest+json"},
    "v1 html": {"Accept": "application/vnd.pypi.simple.v1+html"},
    "html preferred": {"Accept": "application/vnd.pypi.simple.v1+json;q=0.5, text/html"},
    "json refused": {"Accept": "application/vnd.pypi.simple.v1+json;q=0, */*"},
    "nothing acceptable": {"Accept": "image/png"},
    "gzip": {"Accept-Encoding": "gzip"},
    "gzip refused": {"Accept": PIP_ACCEPT, "Accept-Encoding": "gzip;q=0, deflate"},
}


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("request_name", list(PAGE_REQUESTS))
@pytest.mark.parametrize("page", ["hosted", "large"])
def test_a_stored_page_is_answered_by_the_loop_as_a_thread_answers_it(
    shelf: dict, page: str, request_name: str, method: str
) -> None:
    """Status, headers (Date and X-Request-ID aside) and body; then a 304 for its ETag."""
    server, path = shelf["server"], shelf["pages"][page]
    headers = PAGE_REQUESTS[request_name]
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_SECONDS)
    try:
        stored = fetch(connection, path, {**headers, **TO_A_THREAD})  # built and stored
        assert stored[0] == 200, stored[2]
        by_loop = fetch(connection, path, headers, method)
        by_thread = fetch(connection, path, {**headers, **TO_A_THREAD}, method)
        ids = loop_sent(server, connection, path, headers)
        assert [request_id(a) in ids for a in (by_loop, by_thread)] == [bool(LOOP), False]
        assert (by_loop[0], by_loop[2]) == (by_thread[0], by_thread[2])
        assert without_per_request(by_loop[1]) == without_per_request(by_thread[1])
        is_gzip = page == "large" and "gzip" in headers.get("Accept-Encoding", "").split(", ")
        assert by_loop[1].get("content-encoding") == ("gzip" if is_gzip else None)
        if method == "GET":  # the thread that built the page sent it as it was, not gzipped
            assert unzipped(by_loop) == unzipped(stored)
        else:
            assert by_loop[2] == b""
        assert by_loop[1]["connection"] == "keep-alive"
        revalidate = {**headers, "If-None-Match": by_loop[1]["etag"]}
        by_loop = fetch(connection, path, revalidate, method)
        by_thread = fetch(connection, path, {**revalidate, **TO_A_THREAD}, method)
        ids = loop_sent(server, connection, path, headers)
        assert [request_id(a) in ids for a in (by_loop, by_thread)] == [bool(LOOP), False]
        assert (by_loop[0], by_loop[2]) == (by_thread[0], by_thread[2]) == (304, b"")
        assert without_per_request(by_loop[1]) == without_per_request(by_thread[1])
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"If-None-Match": "*"}, 304),  # the view answers it (RFC 9110 section 13.1.2)
        ({"Range": "bytes=0-9"}, 200),
        ({"X_Anything": "1"}, 200),  # gunicorn's header_map judges "_" (SCRIPT_NAME, ...)
        ({"Accept-Encoding": "gzip"}, 200),  # with ?format= below: a query is the view's
    ],
)
def test_a_page_request_the_loop_leaves_to_a_thread(
    shelf: dict, headers: dict[str, str], status: int
) -> None:
    """What the loop does not answer is answered by a thread, as before."""
    server, path = shelf["server"], shelf["pages"]["hosted"]
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_SECONDS)
    try:
        loop_sent(server, connection, path)
        if "Accept-Encoding" in headers:
            path += "?format=application/vnd.pypi.simple.v1%2Bjson"
        answer = fetch(connection, path, headers)
        assert answer[0] == status, answer[2]
        assert request_id(answer) not in loop_sent(server, connection, shelf["pages"]["hosted"])
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("who", "status"),
    [("anonymous", 401), ("mallory", 403), ("scoped token", 403), ("alice", 200)],
)
def test_a_private_page_is_never_the_loops(shelf: dict, who: str, status: int) -> None:
    """acl_read decides in the view: a stored private page goes to a thread for everyone."""
    server, pages = shelf["server"], shelf["pages"]
    headers = {
        "anonymous": {},
        "mallory": {"Authorization": auth(MALLORY)},
        "scoped token": {"Authorization": basic_auth("__token__", shelf["token"])},
        "alice": {"Authorization": auth(ALICE)},
    }[who]
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_SECONDS)
    try:
        for _ in range(2):  # the first one as alice stores the page
            answer = fetch(connection, pages["private"], headers)
            assert answer[0] == status, answer[2]
            assert request_id(answer) not in loop_sent(server, connection, pages["hosted"])
            assert (b"secret_pkg-1.0" in answer[2]) == (status == 200)
    finally:
        connection.close()


@pytest.mark.skipif(not LOOP, reason="the loop answers on SQLite + disk only")
def test_a_page_due_for_a_check_goes_to_a_thread_that_stores_it_again(shelf: dict) -> None:
    """A stored mirror page past its max-age is not the loop's: the view checks and stores it."""
    server, path = shelf["server"], shelf["pages"]["large"]
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_SECONDS)
    database = sqlite3.connect(shelf["data_dir"] / "pyshelf.sqlite3")
    query = "SELECT count(*) FROM cached_pages WHERE index_path = 'root/pypi' AND {}"
    try:
        expected = fetch(connection, path)
        assert request_id(expected) in loop_sent(server, connection, path)
        with database:
            database.execute(
                "UPDATE cached_pages SET expires_epoch_seconds = 1 WHERE index_path = 'root/pypi'"
            )
        answer = fetch(connection, path)
        assert (answer[0], answer[2]) == (200, expected[2])
        ids = loop_sent(server, connection, path)  # stored again: the loop's once more
        assert request_id(answer) not in ids
        fresh = f"expires_epoch_seconds > {int(time.time())}"
        assert database.execute(query.format(fresh)).fetchone()[0] >= 1
    finally:
        database.close()
        connection.close()
