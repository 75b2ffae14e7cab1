"""`entrypoint.sh serve` checks every setting before it touches anything: bad values are all
reported at once, one line each naming the variable, exit 2, DATA_DIR left as it was."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, clean_env, free_port

pytestmark = pytest.mark.e2e

FAIL_TIMEOUT_SECONDS = 60


def serve(data_dir: Path, port: int | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `entrypoint.sh serve` with `env`; it must give up on its own."""
    return subprocess.run(
        [str(ROOT / "entrypoint.sh"), "serve"],
        cwd=ROOT,
        env=clean_env(
            **{
                "DATA_DIR": str(data_dir),
                "PORT": str(port or free_port()),
                "HOST": "127.0.0.1",
                "ADMIN_PASSWORD": "",
                "MIRROR_URL": "http://127.0.0.1:9/simple/",
                "PYSHELF_PYTHON": sys.executable,
                **env,
            }
        ),
        capture_output=True,
        text=True,
        timeout=FAIL_TIMEOUT_SECONDS,
        check=False,
    )


def listing(folder: Path) -> list[tuple[str, int]]:
    """Every path below `folder` with its size, to compare before and after."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


BAD_VALUES = [
    pytest.param({"WEB_CONCURRENCY": "abc"}, "WEB_CONCURRENCY='abc' is not a number", id="workers"),
    pytest.param({"WORKER_TIMEOUT": "x"}, "WORKER_TIMEOUT='x' is not a number", id="timeout"),
    pytest.param({"THREADS": "0"}, "THREADS='0': at least 1", id="threads"),
    pytest.param({"PORT": "abc"}, "PORT='abc' is not a number", id="port"),
    pytest.param({"PORT": "70000"}, "PORT='70000': a port is 1 to 65535", id="port-range"),
    pytest.param(
        {"HOST": "192.0.2.1"}, "HOST=192.0.2.1: not an address of this machine", id="host"
    ),
    pytest.param(
        {"DATABASE_URL": "mysql://x"}, "DATABASE_URL: use postgresql+psycopg://", id="mysql"
    ),
    pytest.param(
        {"TLS_CERT": "/nonexistent/cert.pem", "TLS_KEY": "/nonexistent/key.pem"},
        "TLS_CERT=/nonexistent/cert.pem is not a file readable by uid",
        id="tls-missing",
    ),
    pytest.param(
        {"TLS_CERT": str(ROOT / "README.md"), "TLS_KEY": str(ROOT / "README.md")},
        f"TLS_CERT={ROOT / 'README.md'}, TLS_KEY={ROOT / 'README.md'}: not a PEM certificate",
        id="tls-not-pem",
    ),
    pytest.param(
        {
            "STORAGE_URL": "s3://pyshelf-bucket/blobs",
            "S3_ENDPOINT_URL": "http://127.0.0.1:9",
            "AWS_ACCESS_KEY_ID": "key",
            "AWS_SECRET_ACCESS_KEY": "secret",
        },
        "STORAGE_URL=s3://pyshelf-bucket/blobs: cannot reach the bucket",
        id="s3-down",
    ),
]


@pytest.mark.parametrize(("env", "expected"), BAD_VALUES)
def test_serve_refuses_a_bad_value_before_it_creates_the_data_dir(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    """Each bad value: exit 2, one line naming it, no traceback, no DATA_DIR made."""
    data_dir = tmp_path / "data"

    result = serve(data_dir, **env)

    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert result.stderr.startswith("pyshelf: invalid configuration:\n"), output
    assert expected in output
    assert not data_dir.exists()


def test_serve_names_a_database_server_that_is_down_in_one_line(tmp_path: Path) -> None:
    """PostgreSQL not answering: one line with the masked URL, no SQLAlchemy traceback."""
    data_dir = tmp_path / "data"
    url = f"postgresql+psycopg://pyshelf:db-secret-pw@127.0.0.1:{free_port()}/pyshelf"

    result = serve(data_dir, DATABASE_URL=url, SECRET_KEY="k" * 32)

    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert "db-secret-pw" not in output
    assert len(result.stderr.splitlines()) == 2, output
    assert "DATABASE_URL=postgresql+psycopg://***:***@127.0.0.1:" in output
    assert "cannot connect" in output
    assert not data_dir.exists()


def test_serve_with_mysql_says_only_what_is_wrong_with_the_url(tmp_path: Path) -> None:
    """DATABASE_URL=mysql://x is one problem, not also a missing SECRET_KEY."""
    result = serve(tmp_path / "data", DATABASE_URL="mysql://x")

    assert result.returncode == 2
    assert "SECRET_KEY" not in result.stderr
    assert len(result.stderr.splitlines()) == 2, result.stderr


def test_serve_refuses_a_data_dir_that_is_a_file_without_suggesting_chown(tmp_path: Path) -> None:
    """DATA_DIR naming a file: say so and how to fix it; the file stays as it was."""
    data_file = tmp_path / "data"
    data_file.write_text("not a folder\n")
    before = listing(tmp_path)

    result = serve(data_file)

    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert f"DATA_DIR={data_file} is a file, not a folder" in output
    assert "chown" not in output
    assert listing(tmp_path) == before
    assert data_file.read_text() == "not a folder\n"


def test_serve_refuses_a_port_in_use_before_it_creates_the_database(
    tmp_path: Path, busy_port: int
) -> None:
    """Another program on PORT: exit 2 before the database (and a password) is made."""
    data_dir = tmp_path / "data"

    result = serve(data_dir, port=busy_port)

    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"PORT={busy_port}: 127.0.0.1:{busy_port} is already in use" in output
    assert "Generated password" not in output
    assert not data_dir.exists()


def test_serve_leaves_an_existing_data_dir_unchanged_when_a_value_is_bad(
    tmp_path: Path, busy_port: int
) -> None:
    """A data dir from an earlier start is not touched (no migration, no temp cleanup)."""
    data_dir = tmp_path / "data"
    (data_dir / "tmp").mkdir(parents=True)
    (data_dir / "tmp" / "old-upload.part").write_bytes(b"x" * 10)
    before = listing(data_dir)

    result = serve(data_dir, port=busy_port, THREADS="0")

    assert result.returncode == 2
    assert listing(data_dir) == before


def test_serve_reports_every_problem_at_once(tmp_path: Path, busy_port: int) -> None:
    """Bad table values, a data dir below a file and a busy port: all in one answer."""
    blocker = tmp_path / "file"
    blocker.write_text("x")

    result = serve(blocker / "data", port=busy_port, WORKER_TIMEOUT="x", THREADS="0")

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "pyshelf: invalid configuration:",
        "  THREADS='0': at least 1",
        "  WORKER_TIMEOUT='x' is not a number",
        f"  DATA_DIR={blocker / 'data'} cannot be made: {blocker} is a file, not a folder;"
        " point DATA_DIR at a folder",
        f"  PORT={busy_port}: 127.0.0.1:{busy_port} is already in use by another program"
        " (another pyshelf?): stop it, or choose another PORT",
    ]
