"""Secrets sweep: a server with passwords, tokens, a SECRET_KEY and a mirror whose URL carries
credentials is exercised end to end (logins good and bad, uploads with a token, mirror
fetches, metrics, status, JSON API, web pages, backup, verify), in both log formats. No
secret may appear in any response, log line or command output; the database keeps passwords
and tokens only as hashes."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
import tarfile
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from tests.builders import make_wheel, write_dist
from tests.conftest import LiveServer, run_pip, run_twine
from tests.robustness.support import cli, record_figures

pytestmark = pytest.mark.e2e
ADMIN_SECRET = "Adm1n-pw-Sekr3t-7Q"
BOB_SECRET = "B0b-pw-Sekr3t-4K"
GUESS_SECRET = "Wr0ng-guess-Sekr3t-9Z"
MIRROR_SECRET = "M1rror-pw-Sekr3t-2X"
SECRET_KEY = "key-Sekr3t-0123456789abcdef0123456789"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
TIMEOUT_SECONDS = 60


class Recorder:
    """Every byte the outside world got from the server and its commands."""

    def __init__(self) -> None:
        self.outputs: list[tuple[str, str]] = []  # (where, text)

    def add(self, where: str, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.outputs.append((where, text))

    def response(self, where: str, response: requests.Response) -> requests.Response:
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        self.add(where, f"{response.status_code} {response.reason}\n{headers}\n{response.text}")
        return response

    def leaks(self, secrets: list[str]) -> list[str]:
        found = []
        for where, text in self.outputs:
            for secret in secrets:
                forms = {secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode()}
                if any(form in text for form in forms):
                    found.append(f"{secret[:6]}... in {where}")
        return found


def _csrf(session: requests.Session, url: str) -> str:
    match = CSRF_RE.search(session.get(url, timeout=TIMEOUT_SECONDS).text)
    assert match, url
    return match.group(1)


def _exercise(server: LiveServer, fake: Any, tmp: Path, seen: Recorder) -> str:
    """Everything a week of use does; returns bob's token (shown once, by design)."""
    base = server.url
    http = requests.Session()
    http.trust_env = False
    admin = ("admin", ADMIN_SECRET)

    def call(method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", TIMEOUT_SECONDS)
        response = http.request(method, base + path, allow_redirects=False, **kwargs)
        return seen.response(f"{method} {path}", response)

    # users, a token, JSON API
    assert call("PUT", "/bob", json={"password": BOB_SECRET}, auth=admin).status_code == 201
    assert call("PUT", "/bob/dev", json={"bases": ["root/pypi"]}, auth=("bob", BOB_SECRET)).ok
    made = http.post(
        f"{base}/bob/+tokens", json={"description": "ci"}, auth=admin, timeout=TIMEOUT_SECONDS
    )
    assert made.status_code == 201  # its body is the one place the token may appear
    token = made.json()["result"]["token"]
    for path in ("/", "/bob", "/bob/dev", "/root/pypi", "/admin/dev", "/+status"):
        call("GET", path, headers={"Accept": "application/json"}, auth=admin)
        call("GET", path, headers={"Accept": "text/html"})
    call("GET", "/+metrics")

    # failed logins: Basic, token-shaped, web form; then a good web login
    call("GET", "/bob/dev/+simple/", auth=("bob", GUESS_SECRET))
    call("GET", "/admin/dev/", auth=("__token__", "pyshelf-" + GUESS_SECRET))
    form = {
        "username": "bob",
        "password": GUESS_SECRET,
        "csrf_token": _csrf(http, base + "/+login"),
    }
    call("POST", "/+login", data=form)
    form = {"username": "bob", "password": BOB_SECRET, "csrf_token": _csrf(http, base + "/+login")}
    assert call("POST", "/+login", data=form).status_code == 303
    for path in ("/+account", "/bob/dev/", "/root/pypi/", "/+admin/indexes", "/+admin/users"):
        call("GET", path, headers={"Accept": "text/html"})

    # upload with the token (twine), install through the mirror (pip), read everything back
    filename, data = make_wheel("secret-pkg", "1.0", requires_dist=["mirrored-pkg"])
    path = write_dist(tmp, filename, data)
    result = run_twine(
        "upload",
        "--repository-url",
        f"{base}/bob/dev/",
        "-u",
        "__token__",
        "-p",
        token,
        str(path),
    )
    seen.add("twine upload", result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    with tempfile.TemporaryDirectory() as target:
        result = run_pip(
            "install", "--target", target, "--index-url", f"{base}/bob/dev/+simple/", "secret-pkg"
        )
    seen.add("pip install", result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert fake.count("/files/") >= 1  # the mirror really fetched, with its credentials
    for path in (
        "/bob/dev/+simple/secret-pkg/",
        "/bob/dev/+simple/mirrored-pkg/",
        "/root/pypi/+simple/mirrored-pkg/",
        "/bob/dev/secret-pkg/",
        "/bob/dev/mirrored-pkg/",
        "/root/pypi/mirrored-pkg/1.0/",
        "/+metrics",
        "/+status",
    ):
        call("GET", path, headers={"Accept": "text/html"})
        call("GET", path, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    # the upstream fails: its error must not show the credentials either
    fake.fail("503")
    call("POST", "/bob/dev/+simple/mirrored-pkg/refresh", auth=admin)  # the web form needs CSRF
    call("GET", "/root/pypi/+simple/other-pkg/")
    call("GET", "/root/pypi/other-pkg/", headers={"Accept": "text/html"})
    fake.fail(None)
    return token


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_no_secret_appears_in_responses_logs_or_command_output(
    server_factory: Any, fake_upstream: Any, tmp_path: Path, log_format: str
) -> None:
    fake_upstream.basic_auth = ("mirror-user", MIRROR_SECRET)
    fake_upstream.add_file("mirrored-pkg", *make_wheel("mirrored-pkg", "1.0"))
    mirror_url = fake_upstream.url.replace("http://", f"http://mirror-user:{MIRROR_SECRET}@")
    server: LiveServer = server_factory(
        ADMIN_PASSWORD=ADMIN_SECRET,
        MIRROR_URL=mirror_url,
        SECRET_KEY=SECRET_KEY,
        LOG_FORMAT=log_format,
        LOG_LEVEL="debug",
    )
    seen = Recorder()
    token = _exercise(server, fake_upstream, tmp_path, seen)

    archive = tmp_path / "backup.tar"
    for args in (("backup", str(archive)), ("verify",), ("index", "list"), ("user", "list")):
        # -vv: the commands' DEBUG log too (they log only warnings without -v)
        result = cli(server.data_dir, *args, "-vv", SECRET_KEY=SECRET_KEY, LOG_FORMAT=log_format)
        seen.add(f"entrypoint.sh {' '.join(args)}", result.stdout + result.stderr)
        assert result.returncode == 0, result.stdout + result.stderr
    with tarfile.open(archive) as tar:
        manifest = next(m for m in tar.getmembers() if m.name.endswith("manifest.json"))
        seen.add("backup manifest.json", tar.extractfile(manifest).read())  # type: ignore[union-attr]
    server.stop()
    seen.add("server log", server.log())

    secrets = [ADMIN_SECRET, BOB_SECRET, GUESS_SECRET, MIRROR_SECRET, SECRET_KEY, token]
    assert seen.leaks(secrets) == []
    # the masked mirror URL is what shows: the user name may, the password never
    assert any("mirror-user" in text or "***" in text for _, text in seen.outputs)

    database = sqlite3.connect(server.data_dir / "pyshelf.sqlite3")
    dump = "\n".join(database.iterdump())
    for secret in (ADMIN_SECRET, BOB_SECRET, GUESS_SECRET, SECRET_KEY, token):
        assert secret not in dump
    hashes = dict(database.execute("SELECT username, password_hash FROM users"))
    for username in ("admin", "bob"):
        assert hashes[username].startswith(("scrypt:", "pbkdf2:")), hashes[username][:12]
    stored = [row[0] for row in database.execute("SELECT secret_sha256 FROM tokens")]
    assert hashlib.sha256(token.encode()).hexdigest() in stored
    database.close()
    record_figures(
        f"secrets_{log_format}",
        {"outputs_checked": len(seen.outputs), "secrets": len(secrets), "leaks": 0},
    )


def test_the_status_and_metrics_pages_name_no_credentials_of_the_mirror(
    server_factory: Any,
) -> None:
    mirror_url = f"http://mirror-user:{MIRROR_SECRET}@127.0.0.1:9/simple/"
    server: LiveServer = server_factory(MIRROR_URL=mirror_url)
    for path in ("/+status", "/+metrics", "/root/pypi", "/root/pypi/+simple/nothing/"):
        _, headers, body, reason = server.get(path, {"Accept": "application/json"})
        text = json.dumps(headers) + reason + body.decode("utf-8", "replace")
        assert MIRROR_SECRET not in text, path
    assert MIRROR_SECRET not in server.log()
