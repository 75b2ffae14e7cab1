"""Stored files of public indexes sent on the worker's event loop (app/http/loopfiles.py), on a
live server: the same answer as a thread gives, keep-alive, pipelining, HEAD, ranges; and a
private index's files and sidecars still refused to anonymous readers, other accounts and
tokens scoped elsewhere, also on a connection the loop has just served."""

from __future__ import annotations

import hashlib
import http.client
import random
import socket
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
LOOP_LINE = "sent on the event loop"
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
        server = LiveServer(
            tmp_path_factory.mktemp("loop") / "data",
            {
                "ADMIN_PASSWORD": ADMIN_PASSWORD,
                "MIRROR_URL": upstream.url,
                "WEB_CONCURRENCY": "1",
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
            yield {"server": server, "paths": paths, "token": body["result"]["token"]}
        finally:
            server.stop()


def auth(user: tuple[str, str]) -> str:
    """An Authorization header's value."""
    return basic_auth(*user)


def loop_lines(server: LiveServer, at_least: int = 0) -> int:
    """How many answers the loop has sent so far (it logs each just after sending it: waits
    until there are `at_least`)."""
    deadline = time.monotonic() + LOG_WAIT_SECONDS
    while (count := server.log().count(LOOP_LINE)) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def by_the_loop(server: LiveServer, connection: http.client.HTTPConnection, path: str) -> int:
    """Fetch `path` (which the loop answers) and wait for its line: the loop's count after it.
    One worker logs in order, so a count one above the last says nobody else was the loop's."""
    before = loop_lines(server)
    assert fetch(connection, path)[0] == 200
    return loop_lines(server, before + LOOP)


def fetch(
    connection: http.client.HTTPConnection,
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> tuple[int, dict[str, str], bytes]:
    """One request on a kept-alive connection, read to its end: (status, headers, body)."""
    connection.request(method, path, headers=headers or {})
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
            before = loop_lines(server)
            by_loop = fetch(connection, target)
            assert loop_lines(server, before + LOOP) == before + LOOP
            # a proxy's header sends the request to a thread (CachedFiles answers there)
            by_thread = fetch(connection, target, {"X-Forwarded-For": "192.0.2.1"})
            assert by_the_loop(server, connection, target) == before + 2 * LOOP
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
        before = loop_lines(server)
        status, headers, body = fetch(connection, path, method="HEAD")
        assert (status, body, headers["content-length"]) == (200, b"", str(len(PUBLIC[1])))
        assert loop_lines(server, before + LOOP) == before + LOOP
        status, headers, body = fetch(connection, path, {"Range": "bytes=10-19"})
        assert (status, body) == (206, PUBLIC[1][10:20])
        status, _, body = fetch(connection, path, {"If-None-Match": headers["etag"]})
        assert (status, body) == (304, b"")
        assert by_the_loop(server, connection, path) == before + 2 * LOOP
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
        before = by_the_loop(server, connection, paths["public"] + suffix)
        answer, _, body = fetch(connection, paths["private"] + suffix, headers)
        assert answer == status, body
        assert by_the_loop(server, connection, paths["public"] + suffix) == before + LOOP
        if status != 200:
            assert b"alice's secret" not in body
            assert not body.startswith(b"PK")
    finally:
        connection.close()
