"""Shared by the load, fault and secrets tests: sizes from the environment, figures written to
test-output/robustness.json, uploads that can be cut off half-way, and the damage checks."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.builders import make_wheel
from tests.conftest import ADMIN_PASSWORD, ROOT, LiveServer, basic_auth
from tests.e2e.helpers import MIME_JSON, cli, multipart, upload_fields

# `make test` runs short versions; `make test-robustness` sets these higher.
LOAD_SECONDS = float(os.environ.get("LOAD_SECONDS", "15"))
LOAD_CLIENTS = int(os.environ.get("LOAD_CLIENTS", "32"))
FAULT_ROUNDS = int(os.environ.get("FAULT_ROUNDS", "1"))
FIGURES = ROOT / "test-output" / "robustness.json"
ADMIN_AUTH = basic_auth("admin", ADMIN_PASSWORD)


def record_figures(section: str, figures: dict[str, Any]) -> None:
    """Merge `figures` under `section` into test-output/robustness.json and print them."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    with open(FIGURES.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(FIGURES.read_text())
        except (OSError, ValueError):
            data = {}
        data.setdefault(section, {}).update(figures)
        data[section]["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        tmp = FIGURES.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, FIGURES)
    print(f"\n{section}: {json.dumps(figures, sort_keys=True)}")


def assert_verify_clean(data_dir: Path) -> None:
    """`entrypoint.sh verify` finds no row without its blob and no blob with a wrong hash."""
    result = cli(data_dir, "verify")
    assert result.returncode == 0, result.stdout + result.stderr


def wheel(name: str, version: str, payload_bytes: int = 0) -> tuple[str, bytes]:
    """A real wheel, with `payload_bytes` of random (incompressible) data inside."""
    files = {f"{name.replace('-', '_')}/payload.bin": os.urandom(payload_bytes)}
    return make_wheel(name, version, files=files if payload_bytes else None)


def upload_body(filename: str, content: bytes) -> tuple[bytes, str]:
    """A twine-like multipart body for `filename`: (body, content type)."""
    return multipart(upload_fields(filename, content), filename, content)


def seed(server: LiveServer, index: str, project: str) -> dict[str, str]:
    """Upload a first small file, so the project is the stage's own (its page never asks the
    mirror, which points at nothing in these tests): {filename: sha256}."""
    from tests.e2e.helpers import raw_upload

    filename, content = wheel(project, "0.0.1")
    status, _, body, _ = raw_upload(server, index, filename, content)
    assert status == 200, body[:300]
    return {filename: hashlib.sha256(content).hexdigest()}


def listed_files(server: LiveServer, index: str, project: str) -> dict[str, str]:
    """filename -> sha256 on the project's simple page ({} when the project is not there)."""
    status, _, body, _ = server.get(f"/{index}/+simple/{project}/", headers={"Accept": MIME_JSON})
    if status == 404:
        return {}
    assert status == 200, (status, body[:300])
    return {f["filename"]: f["hashes"]["sha256"] for f in json.loads(body)["files"]}


def download(server: LiveServer, index: str, project: str, filename: str) -> bytes:
    """The file as the simple page links it (asserts a 200)."""
    status, _, body, _ = server.get(f"/{index}/+simple/{project}/", headers={"Accept": MIME_JSON})
    assert status == 200, body[:300]
    url = next(f["url"] for f in json.loads(body)["files"] if f["filename"] == filename)
    if url.startswith("http"):
        url = "/" + url.split("/", 3)[3]
    elif not url.startswith("/"):
        url = f"/{index}/+simple/{project}/{url}"
    status, _, data, _ = server.get(url)
    assert status == 200, (status, data[:300])
    return data


class SlowUpload:
    """An upload sent over a raw socket: headers and the first bytes of the body now, the rest
    only when asked (so a test can kill what is receiving it half-way)."""

    def __init__(self, server: LiveServer, index: str, filename: str, content: bytes) -> None:
        self.body, content_type = upload_body(filename, content)
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        head = (
            f"POST /{index}/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Authorization: {ADMIN_AUTH}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n"
        )
        self.sock.sendall(head.encode())
        self.sent = 0

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def send_part(self, fraction: float) -> None:
        """Send the body up to `fraction` of its length."""
        end = int(len(self.body) * fraction)
        if end > self.sent:
            self.sock.sendall(self.body[self.sent : end])
            self.sent = end

    def finish(self) -> tuple[int | None, bytes]:
        """Send the rest and read the answer: (status, raw response), status None when the
        connection was cut without an HTTP response."""
        with contextlib.suppress(OSError):
            self.send_part(1.0)
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := self.sock.recv(65536):
                chunks.append(chunk)
        self.sock.close()
        raw = b"".join(chunks)
        if not raw.startswith(b"HTTP/1."):
            return None, raw
        return int(raw.split(b" ", 2)[1]), raw


def _socket_inode(local_port: int, peer_port: int) -> str | None:
    """The inode of the server side of the TCP connection 127.0.0.1:local -> :peer."""
    want_local = f"0100007F:{peer_port:04X}"
    want_remote = f"0100007F:{local_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == want_local and fields[2] == want_remote:
            return fields[9]
    return None


def worker_serving(server: LiveServer, client_port: int) -> int:
    """The pid of the gunicorn worker that holds the connection from `client_port`."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        inode = _socket_inode(client_port, server.port)
        for pid in server.worker_pids() if inode else ():
            with contextlib.suppress(OSError):
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):
                        if os.readlink(fd) == f"socket:[{inode}]":
                            return pid
        time.sleep(0.05)
    raise AssertionError(f"no worker holds the connection from port {client_port}")


def wait_for_workers(server: LiveServer, count: int, timeout_seconds: float = 30) -> None:
    """Wait until the master has `count` workers again (after one was killed)."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if len(server.worker_pids()) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"gunicorn did not restart its workers within {timeout_seconds} s")


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A size-limited filesystem mounted at `path` (skips the test where mounting is refused)."""
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
