"""entrypoint.sh bootstraps from the environment, idempotently, and refuses a bad data dir."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders import make_wheel
from tests.conftest import ROOT, LiveServer, clean_env, free_port
from tests.e2e.helpers import api, hosted_files, raw_upload, sha256

pytestmark = pytest.mark.e2e

GENERATED_RE = re.compile(r"Generated password for 'admin': (\S+)")
FAIL_TIMEOUT_SECONDS = 60


def _upload_status(server: LiveServer, password: str, version: str) -> tuple[int, str]:
    """Upload boot-pkg VERSION to admin/dev as admin with `password`: (status, reason)."""
    status, _headers, _body, reason = raw_upload(
        server, "admin/dev", *make_wheel("boot-pkg", version), auth=("admin", password)
    )
    return status, reason


def test_first_start_without_admin_password_prints_a_generated_one_until_it_is_used(
    server_factory: object,
) -> None:
    """The generated password is shown, works for uploads (which use it up: no restart shows it
    again), and survives restarts."""
    server = server_factory(ADMIN_PASSWORD="")  # type: ignore[operator]
    passwords = GENERATED_RE.findall(server.log())
    assert len(passwords) == 1, server.log()
    password = passwords[0]
    assert _upload_status(server, password, "1.0") == (200, "OK")
    status, body, reason = api(
        server, "PUT", "/bob", {"password": "bob-password-1"}, auth=("admin", password)
    )
    assert (status, reason) == (201, "CREATED"), body
    status, body, reason = api(
        server, "PUT", "/admin/extra", {"bases": []}, auth=("admin", password)
    )
    assert (status, reason) == (201, "CREATED"), body

    server.stop()
    first_log = server.log()
    server.start()  # the same environment: nothing to change

    second_log = server.log()[len(first_log) :]
    assert "Generated password" not in second_log
    assert "bootstrap:" not in second_log  # nothing was created or changed
    assert len(GENERATED_RE.findall(server.log())) == 1
    assert _upload_status(server, password, "1.1") == (200, "OK")
    wheels = [make_wheel("boot-pkg", v) for v in ("1.0", "1.1")]
    assert hosted_files(server, "admin/dev", "boot-pkg") == {f: sha256(d) for f, d in wheels}
    status, body, _reason = api(server, "GET", "/bob", auth=None)
    assert status == 200
    assert body["result"]["username"] == "bob"
    status, body, _reason = api(server, "GET", "/admin", auth=None)
    assert status == 200
    assert sorted(body["result"]["indexes"]) == ["dev", "extra"]
    assert body["result"]["indexes"]["dev"]["bases"] == ["root/pypi"]


def test_restart_with_a_new_admin_password_applies_it(server_factory: object) -> None:
    """A changed ADMIN_PASSWORD replaces the old one: old → 403, new → 200."""
    server = server_factory(ADMIN_PASSWORD="first-password")  # type: ignore[operator]
    assert _upload_status(server, "first-password", "2.0") == (200, "OK")

    server.stop()
    server.start(ADMIN_PASSWORD="second-password")

    assert "bootstrap: changed the password of admin (ADMIN_PASSWORD)" in server.log()
    assert _upload_status(server, "first-password", "2.1") == (
        403,
        "Invalid credentials: wrong username, password or token.",
    )
    assert _upload_status(server, "second-password", "2.1") == (200, "OK")


def test_restart_with_a_new_mirror_url_keeps_root_pypi_and_says_how_to_apply_it(
    server_factory: object,
) -> None:
    """After the first start the database wins: a changed MIRROR_URL is logged once with the
    command that applies it, and root/pypi keeps its upstream until then."""
    server = server_factory(MIRROR_URL="http://127.0.0.1:9/simple/")  # type: ignore[operator]
    status, body, _reason = api(server, "GET", "/root/pypi", auth=None)
    assert status == 200
    assert body["type"] == "indexconfig"
    assert body["result"]["type"] == "mirror"
    assert body["result"]["mirror_url"] == "http://127.0.0.1:9/simple/"
    status, body, _reason = api(server, "GET", "/admin/dev", auth=None)
    assert status == 200
    assert body["result"]["type"] == "stage"
    assert body["result"]["bases"] == ["root/pypi"]

    server.stop()
    first_log = server.log()
    server.start(MIRROR_URL="http://127.0.0.1:10/other/simple/")

    second_log = server.log()[len(first_log) :]
    assert second_log.count("MIRROR_URL=") == 1, second_log
    assert (
        "MIRROR_URL=http://127.0.0.1:10/other/simple/ differs from the mirror_url of root/pypi,"
        " http://127.0.0.1:9/simple/: the database wins (MIRROR_URL only seeds the first"
        ' start); to use MIRROR_URL: entrypoint.sh index modify root/pypi mirror_url="$MIRROR_URL"'
    ) in second_log
    status, body, _reason = api(server, "GET", "/root/pypi", auth=None)
    assert status == 200
    assert body["result"]["mirror_url"] == "http://127.0.0.1:9/simple/"
    assert body["result"]["type"] == "mirror"
    status, body, _reason = api(server, "GET", "/admin/dev", auth=None)
    assert body["result"]["bases"] == ["root/pypi"]


def test_a_deleted_admin_dev_stays_deleted_after_a_restart(server_factory: object) -> None:
    """The first start made admin/dev; the admin deletes it; later starts do not bring it back."""
    server = server_factory()  # type: ignore[operator]
    status, body, _reason = api(server, "DELETE", "/admin/dev")
    assert status == 200, body

    server.stop()
    first_log = server.log()
    server.start()

    assert "bootstrap:" not in server.log()[len(first_log) :]
    status, _body, _reason = api(server, "GET", "/admin/dev", auth=None)
    assert status == 404
    status, body, _reason = api(server, "GET", "/admin", auth=None)
    assert status == 200
    assert body["result"]["indexes"] == {}


def test_entrypoint_refuses_a_data_dir_it_cannot_create_and_names_it(tmp_path: Path) -> None:
    """DATA_DIR below a regular file: exit 2 with the directory in the message.

    The tests run as root, which ignores permission bits, so a file in the way stands in for
    an unwritable volume.
    """
    blocker = tmp_path / "file"
    blocker.write_text("not a directory\n")
    data_dir = blocker / "data"

    result = subprocess.run(
        [str(ROOT / "entrypoint.sh"), "serve"],
        cwd=ROOT,
        env=clean_env(
            DATA_DIR=str(data_dir),
            PORT=str(free_port()),
            HOST="127.0.0.1",
            ADMIN_PASSWORD="unused-password",
            MIRROR_URL="http://127.0.0.1:9/simple/",
            PYSHELF_PYTHON=sys.executable,
        ),
        capture_output=True,
        text=True,
        timeout=FAIL_TIMEOUT_SECONDS,
        check=False,
    )

    assert result.returncode == 2
    assert f"DATA_DIR={data_dir} cannot be made: {blocker} is a file" in result.stderr
    assert "Listening at" not in result.stdout + result.stderr  # gunicorn never started


def test_entrypoint_refuses_bad_gunicorn_variables_one_line_each(tmp_path: Path) -> None:
    """WEB_CONCURRENCY=abc, THREADS=0, ...: `prepare` names each, and gunicorn never starts."""
    result = subprocess.run(
        [str(ROOT / "entrypoint.sh"), "serve"],
        cwd=ROOT,
        env=clean_env(
            DATA_DIR=str(tmp_path / "data"),
            PORT=str(free_port()),
            HOST="127.0.0.1",
            MIRROR_URL="http://127.0.0.1:9/simple/",
            PYSHELF_PYTHON=sys.executable,
            WEB_CONCURRENCY="abc",
            THREADS="0",
            GRACEFUL_TIMEOUT="soon",
            TLS_KEY="/etc/pyshelf/key.pem",
        ),
        capture_output=True,
        text=True,
        timeout=FAIL_TIMEOUT_SECONDS,
        check=False,
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "pyshelf: invalid configuration:",
        "  WEB_CONCURRENCY='abc' is not a number",
        "  THREADS='0': at least 1",
        "  GRACEFUL_TIMEOUT='soon' is not a number",
        "  TLS_CERT and TLS_KEY go together: set both, or neither",
        "  TLS_KEY=/etc/pyshelf/key.pem is not a file readable by uid "
        f"{os.getuid()}: fix the path or the file's owner and mode",
    ]
    assert "Listening at" not in result.stdout  # gunicorn never started
