"""The gunicorn floor: the upstream's pages and files served by the smallest WSGI app, under
the same gunicorn, worker class, workers and threads as pyshelf. What a replay takes there is
what any Python app behind this gunicorn takes at least; pyshelf's time above it is its own.

The app mirrors the nginx upstream (bench/compare/upstream.py): /simple/NAME/ answers
index.json for a PEP 691 Accept and index.html otherwise, the gzipped twin when the client
accepts gzip; /files/PATH answers the file through the server's file wrapper (sendfile).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

JSON_ACCEPT_RE = re.compile(r"application/vnd\.pypi\.simple\.(v1|latest)\+json", re.IGNORECASE)
START_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 10
WWW = Path(os.environ.get("FLOOR_WWW", "."))
FILES = Path(os.environ.get("FLOOR_FILES", "."))


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Static pages and files, as nginx serves them upstream."""
    path = environ.get("PATH_INFO", "")
    headers: list[tuple[str, str]] = []
    if path.startswith("/simple/") and ".." not in path:
        is_json = bool(JSON_ACCEPT_RE.search(environ.get("HTTP_ACCEPT", "")))
        stem = "index.json" if is_json else "index.html"
        target = WWW / path.lstrip("/") / stem
        content_type = "application/vnd.pypi.simple.v1+json" if is_json else "text/html"
        headers += [("Vary", "Accept"), ("Cache-Control", "max-age=600, public")]
        zipped = target.with_name(stem + ".gz")
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "") and zipped.is_file():
            target = zipped
            headers.append(("Content-Encoding", "gzip"))
    elif path.startswith("/files/") and ".." not in path:
        target = FILES / path.removeprefix("/files/")
        content_type = "application/octet-stream"
        headers.append(("Cache-Control", "max-age=365000000, immutable, public"))
    else:
        start_response("404 Not Found", [("Content-Length", "0")])
        return []
    try:
        source = open(target, "rb")  # noqa: SIM115 - closed by the server
    except (FileNotFoundError, IsADirectoryError):
        start_response("404 Not Found", [("Content-Length", "0")])
        return []
    size = os.fstat(source.fileno()).st_size
    start_response(
        "200 OK", [("Content-Type", content_type), ("Content-Length", str(size)), *headers]
    )
    return environ["wsgi.file_wrapper"](source, 1 << 20)


class Floor:
    """gunicorn running `app` on a loopback port over the upstream's directories."""

    def __init__(self, www: Path, files: Path, port: int, workers: int, threads: int) -> None:
        self.www, self.files, self.port = www, files, port
        self.workers, self.threads = workers, threads
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start gunicorn and wait for its first answer."""
        root = Path(__file__).resolve().parents[2]
        env = {
            **os.environ,
            "FLOOR_WWW": str(self.www),
            "FLOOR_FILES": str(self.files),
            "PYTHONPATH": str(root),
        }
        self.process = subprocess.Popen(  # noqa: S603 - this venv's gunicorn, our own app
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--worker-class",
                "gthread",
                "--workers",
                str(self.workers),
                "--threads",
                str(self.threads),
                "--log-level",
                "warning",
                "bench.compare.floor:app",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/simple/", timeout=2):  # noqa: S310
                    return
            except urllib.error.HTTPError:
                return  # it answers (404 for the bare prefix)
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        raise RuntimeError(f"the gunicorn floor did not answer on {self.url}")

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
