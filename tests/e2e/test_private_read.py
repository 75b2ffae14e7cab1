"""A read-restricted index with the real pip and twine against gunicorn: credentials in the URL
(RFC 7617), API tokens, pip's keyring after a 401 challenge (RFC 9110 §15.5.2), plain HTTP on
loopback, and uploads that still work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders import make_sdist, make_wheel, write_dist
from tests.conftest import LiveServer, clean_env
from tests.e2e.helpers import api, publish, twine_upload
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.e2e

PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "carol": "carol-password"}
SECRET_WHEEL = make_wheel("secretpkg", "1.0")
SECRET_SDIST = make_sdist("secretpkg", "1.0")
PIP_TIMEOUT_SECONDS = 180
# A keyring backend as a user would install one (keyring's entry point for a password store);
# pip imports keyring in-process with --keyring-provider import and asks it after a 401.
FAKE_KEYRING = '''\
"""A keyring that knows one password: bob's for 127.0.0.1."""

from keyring import backend, credentials


class Backend(backend.KeyringBackend):
    priority = 10

    def get_password(self, service, username):
        return "bob-password" if username == "bob" and "127.0.0.1" in service else None

    def get_credential(self, service, username):
        if "127.0.0.1" in service and username in (None, "bob"):
            return credentials.SimpleCredential("bob", "bob-password")
        return None

    def set_password(self, service, username, password):
        raise NotImplementedError

    def delete_password(self, service, username):
        raise NotImplementedError
'''


def pip_download(
    target: Path, index_url: str, *extra: str, requirement: str = "secretpkg", **env: str
) -> subprocess.CompletedProcess[str]:
    """`pip download --no-deps REQUIREMENT` from `index_url`, never prompting (stdin closed)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-input",
            "-d",
            str(target),
            "-i",
            index_url,
            *extra,
            requirement,
        ],
        env=clean_env(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_SECONDS,
        check=False,
    )


def with_credentials(server: LiveServer, userinfo: str, index: str = "alice/private") -> str:
    """`http://USERINFO@127.0.0.1:PORT/INDEX/+simple/` (no --trusted-host on loopback)."""
    return f"http://{userinfo}@127.0.0.1:{server.port}/{index}/+simple/"


@pytest.fixture
def private(server_factory: object, fake_upstream: FakeUpstream, tmp_path: Path) -> LiveServer:
    """A server where alice/private (readable by bob) holds secretpkg 1.0, uploaded by twine;
    upstream offers an attacker's secretpkg 9.9."""
    server = server_factory(MIRROR_URL=fake_upstream.url)  # type: ignore[operator]
    fake_upstream.add_file("secretpkg", *make_wheel("secretpkg", "9.9", summary="attacker's"))
    for user, password in PASSWORDS.items():
        status, body, _ = api(server, "PUT", f"/{user}", {"password": password})
        assert status == 201, body
    status, body, _ = api(
        server,
        "PUT",
        "/alice/private",
        {"acl_read": ["bob"], "bases": ["root/pypi"]},
        auth=("alice", PASSWORDS["alice"]),
    )
    assert status == 201, body
    status, body, _ = api(
        server,
        "PUT",
        "/alice/open",
        {"bases": ["alice/private", "root/pypi"]},
        auth=("alice", PASSWORDS["alice"]),
    )
    assert status == 201, body
    publish(
        server,
        "alice/private",
        tmp_path / "dist",
        SECRET_WHEEL,
        SECRET_SDIST,
        user="alice",
        password=PASSWORDS["alice"],
    )
    return server


def test_pip_downloads_with_a_password_in_the_url(private: LiveServer, tmp_path: Path) -> None:
    """pip turns `http://bob:PASSWORD@host/...` into Basic credentials for the page and the
    file (RFC 7617); plain HTTP on 127.0.0.1 needs no --trusted-host."""
    result = pip_download(tmp_path / "d", with_credentials(private, "bob:bob-password"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert [p.name for p in (tmp_path / "d").iterdir()] == [SECRET_WHEEL[0]]
    assert (tmp_path / "d" / SECRET_WHEEL[0]).read_bytes() == SECRET_WHEEL[1]


def test_pip_downloads_with_an_index_token_in_the_url(private: LiveServer, tmp_path: Path) -> None:
    """`__token__:TOKEN@` with bob's token limited to alice/private (RFC 7617)."""
    status, body, _ = api(
        private, "POST", "/bob/+tokens", {"index": "alice/private"}, auth=("bob", "bob-password")
    )
    assert status == 201, body
    token = body["result"]["token"]

    result = pip_download(tmp_path / "d", with_credentials(private, f"__token__:{token}"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "d" / SECRET_WHEEL[0]).read_bytes() == SECRET_WHEEL[1]


@pytest.mark.parametrize(
    ("userinfo", "status", "reason"),
    [
        pytest.param(
            None,
            401,
            "Authentication required: index alice/private is not public",
            id="no-credentials",
        ),
        pytest.param(
            "bob:not-the-password",
            401,
            "Invalid credentials: wrong username, password or token.",
            id="wrong-password",
        ),
        pytest.param(
            "carol:carol-password",
            403,
            "The user 'carol' may not read index 'alice/private'.",
            id="not-a-reader",
        ),
    ],
)
def test_pip_without_read_access_fails_with_the_status(
    private: LiveServer, tmp_path: Path, userinfo: str | None, status: int, reason: str
) -> None:
    """No or wrong credentials: 401 (pip would ask keyring or prompt); a user not in
    acl_read: 403. pip names the status; the server logged it; nothing was downloaded."""
    url = (
        f"{private.url}/alice/private/+simple/"
        if userinfo is None
        else with_credentials(private, userinfo)
    )

    result = pip_download(tmp_path / "d", url, "-vv")  # -vv: pip names the failed fetch

    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, output
    assert f"{status} Client Error: {reason}" in output
    assert "No matching distribution found for secretpkg" in output
    assert f'"GET /alice/private/+simple/secretpkg/ HTTP/1.1" {status}' in private.log()
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_pip_asks_its_keyring_after_the_401_challenge(private: LiveServer, tmp_path: Path) -> None:
    """No credentials in the URL: the 401 + WWW-Authenticate makes pip ask keyring, which
    knows bob's password (the server needs nothing more)."""
    keyring_dir = tmp_path / "keyring"
    keyring_dir.mkdir()
    (keyring_dir / "fake_keyring.py").write_text(FAKE_KEYRING)

    result = pip_download(
        tmp_path / "d",
        f"{private.url}/alice/private/+simple/",
        "--keyring-provider",
        "import",
        PYTHONPATH=str(keyring_dir),
        PYTHON_KEYRING_BACKEND="fake_keyring.Backend",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "d" / SECRET_WHEEL[0]).read_bytes() == SECRET_WHEEL[1]
    log = private.log()
    assert '"GET /alice/private/+simple/secretpkg/ HTTP/1.1" 401' in log
    assert '"GET /alice/private/+simple/secretpkg/ HTTP/1.1" 200' in log


def test_a_stranger_gets_neither_the_private_nor_the_upstream_package(
    private: LiveServer, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Through the public alice/open, carol finds no secretpkg at all: the private name still
    hides upstream's 9.9 (dependency confusion), and upstream is never asked."""
    fake_upstream.reset_counts()
    url = with_credentials(private, "carol:carol-password", "alice/open")

    stranger = pip_download(tmp_path / "carol", url)
    reader = pip_download(
        tmp_path / "bob", with_credentials(private, "bob:bob-password", "alice/open")
    )

    assert stranger.returncode != 0, stranger.stdout + stranger.stderr
    assert "No matching distribution found for secretpkg" in stranger.stdout + stranger.stderr
    assert reader.returncode == 0, reader.stdout + reader.stderr
    assert [p.name for p in (tmp_path / "bob").iterdir()] == [SECRET_WHEEL[0]]
    assert fake_upstream.count("/simple/secretpkg") == 0
    assert fake_upstream.count("/files/") == 0


def test_twine_uploads_to_a_restricted_index_as_before(private: LiveServer, tmp_path: Path) -> None:
    """Uploading needs acl_upload, not acl_read: alice uploads, bob (a reader) may not."""
    newer = make_wheel("secretpkg", "1.1")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    alice = twine_upload(
        private,
        "alice/private",
        [write_dist(tmp_path / "a", *newer)],
        user="alice",
        password=PASSWORDS["alice"],
    )
    bob = twine_upload(
        private,
        "alice/private",
        [write_dist(tmp_path / "b", *make_wheel("secretpkg", "1.2"))],
        user="bob",
        password=PASSWORDS["bob"],
    )

    assert alice.returncode == 0, alice.stdout + alice.stderr
    assert bob.returncode != 0
    assert "isn't allowed to upload to index 'alice/private'" in " ".join(
        (bob.stdout + bob.stderr).split()
    )
    result = pip_download(
        tmp_path / "d", with_credentials(private, "bob:bob-password"), requirement="secretpkg==1.1"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert [p.name for p in (tmp_path / "d").iterdir()] == [newer[0]]
