"""The test harness itself: a server started for a test answers on a port of its own."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ADMIN_PASSWORD, LiveServer

pytestmark = pytest.mark.e2e


class Impostor(http.server.BaseHTTPRequestHandler):
    """Another test's server, as far as a readiness probe can tell: 200 to everything."""

    def do_GET(self) -> None:
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def test_a_server_whose_port_was_taken_meanwhile_starts_on_another(tmp_path: Path) -> None:
    """free_port() hands out a port that is free then; another process may bind it before
    the server does. Its answers must not pass for the server's: the server starts again on
    another port, and the one the test talks to is ours."""
    impostor = http.server.HTTPServer(("127.0.0.1", 0), Impostor)
    taken = impostor.server_address[1]
    thread = threading.Thread(target=impostor.serve_forever, daemon=True)
    thread.start()
    server = LiveServer(
        tmp_path / "data",
        {"ADMIN_PASSWORD": ADMIN_PASSWORD, "MIRROR_URL": "http://127.0.0.1:9/simple/"},
        port=taken,
    )
    try:
        server.start()

        assert server.port != taken
        assert "already in use" in (tmp_path / f"server-{taken}.log").read_text()
        with urllib.request.urlopen(f"{server.url}/+api", timeout=10) as response:
            assert "login" in json.loads(response.read())["result"]
    finally:
        server.stop()
        impostor.shutdown()
        thread.join(timeout=5)
