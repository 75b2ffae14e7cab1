"""The generated first admin password survives a failed start: DATA_DIR/initial-admin-password
(0600) holds it, every start prints it, and the admin's first login removes it."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.builders import make_wheel
from tests.conftest import ROOT, LiveServer, clean_env, free_port
from tests.e2e.helpers import cli, raw_upload
from tests.web.helpers import CSRF_RE

pytestmark = pytest.mark.e2e

GENERATED_RE = re.compile(r"Generated password for 'admin': (\S+)")
FAIL_TIMEOUT_SECONDS = 90
HTML = {"Accept": "text/html"}


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def kept_password(data_dir: Path) -> str:
    """The password in DATA_DIR/initial-admin-password, which must be for its owner only."""
    path = data_dir / "initial-admin-password"
    assert path.stat().st_mode & 0o777 == 0o600
    return path.read_text().strip()


def upload_status(server: LiveServer, user: str, password: str, version: str) -> int:
    """Upload boot-pkg VERSION to admin/dev with Basic auth: the status."""
    wheel = make_wheel("boot-pkg", version)
    return raw_upload(server, "admin/dev", *wheel, auth=(user, password))[0]


def web_login(server: LiveServer, username: str, password: str) -> int:
    """Post the login form as a browser would (CSRF token included): the status."""
    with requests.Session() as browser:
        browser.trust_env = False  # no proxy for loopback
        page = browser.get(server.url + "/+login", headers=HTML, timeout=30)
        token = CSRF_RE.search(page.text).group(1)
        answer = browser.post(
            server.url + "/+login",
            data={"username": username, "password": password, "csrf_token": token},
            headers=HTML,
            allow_redirects=False,
            timeout=30,
        )
        return answer.status_code


def test_the_generated_password_survives_a_start_whose_server_cannot_listen(
    tmp_path: Path, busy_port: int, server_factory: object
) -> None:
    """gunicorn fails after the bootstrap (its port taken): the password is in DATA_DIR, the
    next start prints it again, it works, and once used it is neither kept nor printed."""
    data_dir = tmp_path / "data"
    failed = subprocess.run(
        [str(ROOT / "entrypoint.sh"), "serve"],
        cwd=ROOT,
        env=clean_env(
            DATA_DIR=str(data_dir),
            PORT=str(free_port()),
            HOST="127.0.0.1",
            ADMIN_PASSWORD="",
            MIRROR_URL="http://127.0.0.1:9/simple/",
            PYSHELF_PYTHON=sys.executable,
            # gunicorn's own variable: it binds the taken port after `prepare` is done.
            GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{busy_port}",
        ),
        capture_output=True,
        text=True,
        timeout=FAIL_TIMEOUT_SECONDS,
        check=False,
    )
    assert failed.returncode != 0
    assert "Connection in use" in failed.stderr, failed.stdout + failed.stderr
    (password,) = GENERATED_RE.findall(failed.stdout)
    assert kept_password(data_dir) == password

    server = server_factory(data_dir=data_dir, ADMIN_PASSWORD="")  # type: ignore[operator]

    assert GENERATED_RE.findall(server.log()) == [password]
    assert str((data_dir / "initial-admin-password").resolve()) in server.log()
    assert upload_status(server, "admin", "wrong-password", "1.0") == 403
    assert kept_password(data_dir) == password  # a failed login is not the admin's login
    assert upload_status(server, "admin", password, "1.0") == 200
    assert not (data_dir / "initial-admin-password").exists()

    server.stop()
    first_log = server.log()
    server.start()

    assert "Generated password" not in server.log()[len(first_log) :]
    assert upload_status(server, "admin", password, "1.1") == 200


def test_the_kept_password_goes_when_the_admin_logs_in_on_the_web_only(
    tmp_path: Path, server_factory: object
) -> None:
    """Another user's login leaves the file; the admin's web login removes it."""
    data_dir = tmp_path / "data"
    server = server_factory(data_dir=data_dir, ADMIN_PASSWORD="")  # type: ignore[operator]
    (password,) = GENERATED_RE.findall(server.log())
    made = cli(data_dir, "user", "create", "bob", "--password", "bob-password-1", "--superuser")
    assert made.returncode == 0, made.stderr

    assert web_login(server, "bob", "bob-password-1") == 303
    assert web_login(server, "admin", "not-the-password") == 200  # the form again, with an error
    assert kept_password(data_dir) == password

    assert web_login(server, "admin", password) == 303
    assert not (data_dir / "initial-admin-password").exists()


def test_user_passwd_admin_works_offline_and_ends_the_kept_password(
    tmp_path: Path, server_factory: object
) -> None:
    """Lost it anyway: `user passwd admin` with the server stopped is the way back in."""
    data_dir = tmp_path / "data"
    server = server_factory(data_dir=data_dir, ADMIN_PASSWORD="")  # type: ignore[operator]
    (password,) = GENERATED_RE.findall(server.log())
    server.stop()

    changed = cli(data_dir, "user", "passwd", "admin", "--password", "a-new-admin-pw")
    assert changed.returncode == 0, changed.stderr
    first_log = server.log()
    server.start(ADMIN_PASSWORD="")

    assert "Generated password" not in server.log()[len(first_log) :]
    assert not (data_dir / "initial-admin-password").exists()
    assert upload_status(server, "admin", password, "2.0") == 403
    assert upload_status(server, "admin", "a-new-admin-pw", "2.0") == 200
