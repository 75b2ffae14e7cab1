"""Advisories against a live server (issue 18, section 4): an OSV export imported through
entrypoint.sh, block_vulnerable hiding affected releases from real pip on a mirror of the
loopback fake upstream and through a stage's bases, the 403 at file URLs, the web UI and JSON
marks, /USER/INDEX/+advisories, and attacks on the setting and the listing.

One server for the module: root/pypi mirrors a FakeUpstream with vuln-pkg 1.0.0, 1.1.0 and
2.0.0 (GHSA-vuln-0001, high, affects < 2.0.0; PYSEC-2026-2, no severity, lists 1.1.0) and
other-pkg 1.0.0 (PYSEC-2026-4, critical); alice/private (acl_read alice) holds secret-pkg 1.0.0
(GHSA-secret-0006); alice/open is public with bases alice/private and root/pypi.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.builders import make_wheel
from tests.conftest import ADMIN_PASSWORD, LiveServer, basic_auth, clean_env
from tests.e2e.test_mirror import FAST_UPSTREAM, add_wheel, cli, upload
from tests.fake_upstream import FakeUpstream
from tests.osv import export, fixture_records, record
from tests.web.helpers import CSRF_RE

ADMIN = {"Authorization": basic_auth("admin", ADMIN_PASSWORD)}
PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-1"}
ALICE = {"Authorization": basic_auth("alice", PASSWORDS["alice"])}
BOB = {"Authorization": basic_auth("bob", PASSWORDS["bob"])}
JSON_API = {"Accept": "application/json", "Content-Type": "application/json"}
PEP691 = {"Accept": "application/vnd.pypi.simple.v1+json"}
HTML = {"Accept": "text/html"}
SECRET = make_wheel("secret-pkg", "1.0.0")


def call(
    server: LiveServer, method: str, path: str, body: Any = None, auth: dict[str, str] | None = None
) -> tuple[int, Any, str]:
    """A JSON API call: (status, decoded body or None, reason)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {**JSON_API, **(auth or {})}
    status, _headers, raw, reason = server.get(path, headers=headers, method=method, data=data)
    try:
        return status, json.loads(raw), reason
    except ValueError:
        return status, None, reason


def setting(server: LiveServer, path: str) -> Any:
    """An index's block_vulnerable as the JSON API shows it."""
    status, body, reason = call(server, "GET", f"/{path}", auth=ADMIN)
    assert status == 200, reason
    return body["result"]["block_vulnerable"]


def configure(server: LiveServer, path: str, value: str, auth: dict[str, str] = ADMIN) -> None:
    """Set block_vulnerable as devpi-client does (a list of operations)."""
    status, _body, reason = call(server, "PATCH", f"/{path}", [f"block_vulnerable={value}"], auth)
    assert status == 200, reason


def page_versions(server: LiveServer, path: str, project: str) -> tuple[list[str], list[str]]:
    """A PEP 691 page's `versions` and filenames."""
    status, _headers, body, reason = server.get(f"/{path}/+simple/{project}/", headers=PEP691)
    assert status == 200, reason
    document = json.loads(body)
    return document["versions"], [f["filename"] for f in document["files"]]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    """The fake upstream with vuln-pkg (three versions) and other-pkg."""
    with FakeUpstream() as fake:
        for version in ("1.0.0", "1.1.0", "2.0.0"):
            add_wheel(fake, "vuln-pkg", version)
        add_wheel(fake, "other-pkg", "1.0.0")
        yield fake


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream
) -> Iterator[LiveServer]:
    """The server, its users and indexes, and the fixture advisories imported with the CLI."""
    base = tmp_path_factory.mktemp("advisories")
    live = LiveServer(
        base / "data",
        {
            "ADMIN_PASSWORD": ADMIN_PASSWORD,
            "MIRROR_URL": upstream.url,
            "WEB_CONCURRENCY": "2",
            "THREADS": "4",
            **FAST_UPSTREAM,
        },
    )
    live.start()
    try:
        for name, password in PASSWORDS.items():
            assert call(live, "PUT", f"/{name}", {"password": password}, ADMIN)[0] == 201
        auth = ALICE
        assert call(live, "PUT", "/alice/private", {"acl_read": ["alice"]}, auth)[0] == 201
        assert call(live, "PUT", "/alice/other", {}, auth)[0] == 201
        bases = {"bases": ["alice/private", "root/pypi"]}
        assert call(live, "PUT", "/alice/open", bases, auth)[0] == 201
        upload(live, "alice/private", *SECRET)
        archive = base / "osv.zip"
        secret = record("GHSA-secret-0006", "secret-pkg", versions=["1.0.0"], label="LOW")
        archive.write_bytes(export(*fixture_records(), secret))
        result = cli(live, "advisories", "import", str(archive))
        assert result.returncode == 0, result.stderr
        assert "loaded 4 records" in result.stdout
        yield live
    finally:
        live.stop()


def test_pip_resolves_to_the_newest_release_no_advisory_affects(
    server: LiveServer, tmp_path: Path
) -> None:
    """block_vulnerable=high on the mirror: pip gets vuln-pkg 2.0.0, and 1.1.0 is not offered."""
    configure(server, "root/pypi", "high")
    index_url = f"{server.url}/root/pypi/+simple/"
    result = pip_download(tmp_path / "a", index_url, "vuln-pkg")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["vuln_pkg-2.0.0-py3-none-any.whl"]
    pinned = pip_download(tmp_path / "b", index_url, "vuln-pkg==1.1.0")
    assert pinned.returncode != 0
    assert "No matching distribution found for vuln-pkg==1.1.0" in pinned.stderr
    configure(server, "root/pypi", "off")
    allowed = pip_download(tmp_path / "c", index_url, "vuln-pkg==1.1.0")
    assert allowed.returncode == 0, allowed.stderr  # off (the default): served as before


def pip_download(
    target: Path, index_url: str, requirement: str
) -> subprocess.CompletedProcess[str]:
    """Real pip, no configuration of the machine, from `index_url` only."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "-d",
            str(target),
            "-i",
            index_url,
            requirement,
        ],
        env=clean_env(PIP_CONFIG_FILE="/dev/null"),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_pages_leave_out_refused_releases_and_their_urls_answer_403_naming_the_advisory(
    server: LiveServer,
) -> None:
    """HTML and JSON pages (PEP 691/700 `versions` too) lose 1.0.0 and 1.1.0; the file and
    .metadata URLs, cached or not, answer 403 with GHSA-vuln-0001 in the status line."""
    configure(server, "root/pypi", "off")
    status, _headers, body, _reason = server.get("/root/pypi/+simple/vuln-pkg/", headers=PEP691)
    assert status == 200
    urls = {f["filename"]: f["url"] for f in json.loads(body)["files"]}
    cached = urls["vuln_pkg-1.0.0-py3-none-any.whl"]
    assert server.get(cached)[0] == 200  # cached now: the fast path would send it

    configure(server, "root/pypi", "high")
    versions, filenames = page_versions(server, "root/pypi", "vuln-pkg")
    assert versions == ["2.0.0"]
    assert filenames == ["vuln_pkg-2.0.0-py3-none-any.whl"]
    html = server.get("/root/pypi/+simple/vuln-pkg/", headers=HTML)[2].decode()
    assert "vuln_pkg-2.0.0" in html
    assert "vuln_pkg-1." not in html
    expected = (
        "Vulnerable: vuln-pkg 1.1.0 is affected by GHSA-vuln-0001 (high); this index refuses it "
        "(block_vulnerable=high)."
    )
    for version in ("1.1.0", "1.0.0"):  # 1.0.0 is cached
        for suffix in ("", ".metadata"):
            path = urls[f"vuln_pkg-{version}-py3-none-any.whl"] + suffix
            status, _headers, _body, reason = server.get(path)
            assert status == 403, (path, reason)
            assert reason == expected.replace("1.1.0", version)
    assert server.get(urls["vuln_pkg-2.0.0-py3-none-any.whl"])[0] == 200
    # other-pkg 1.0.0 is critical: refused under high too
    assert page_versions(server, "root/pypi", "other-pkg")[0] == []

    configure(server, "root/pypi", "critical")
    assert page_versions(server, "root/pypi", "vuln-pkg")[0] == ["1.0.0", "1.1.0", "2.0.0"]
    assert server.get(cached)[0] == 200
    configure(server, "root/pypi", "off")

    metrics = server.get("/+metrics", headers=ADMIN)[2].decode()
    refused = re.search(
        r'^pyshelf_guard_decisions_total\{kind="vulnerable",where="file"\} (\S+)$', metrics, re.M
    )
    assert refused is not None
    assert float(refused[1]) >= 4
    assert 'guard=vulnerable guard_detail="GHSA-vuln-0001"' in server.log()
    assert 'guard=vulnerable guard_detail="2 files not listed"' in server.log()


def test_a_stage_setting_hides_its_mirror_bases_releases_and_all_refuses_unrated_ones(
    server: LiveServer,
) -> None:
    """alice/open (stage on root/pypi) with block_vulnerable=all: vuln-pkg 1.0.0 and 1.1.0
    are gone from its pages while root/pypi (off) still lists them; a mirror's own setting
    follows its files into the stage."""
    configure(server, "root/pypi", "off")
    configure(server, "alice/open", "all", ALICE)
    try:
        assert page_versions(server, "alice/open", "vuln-pkg")[0] == ["2.0.0"]
        assert page_versions(server, "root/pypi", "vuln-pkg")[0] == ["1.0.0", "1.1.0", "2.0.0"]
        configure(server, "alice/open", "off", ALICE)
        configure(server, "root/pypi", "high")
        assert page_versions(server, "alice/open", "vuln-pkg")[0] == ["2.0.0"]
    finally:
        configure(server, "alice/open", "off", ALICE)
        configure(server, "root/pypi", "off")


def test_devpi_client_sets_block_vulnerable(server: LiveServer, tmp_path: Path) -> None:
    """`devpi index alice/other block_vulnerable=moderate` as the owner."""
    devpi_bin = Path(__file__).resolve().parents[2] / ".venv-devpi" / "bin" / "devpi"
    if not devpi_bin.exists():
        pytest.skip("devpi-client is not installed: make .venv-devpi/.installed")
    env = clean_env(HOME=str(tmp_path), PATH="/usr/bin:/bin")
    env.pop("PYTHONPATH", None)

    def devpi(*args: str) -> str:
        result = subprocess.run(
            [str(devpi_bin), "--clientdir", str(tmp_path / "client"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    devpi("use", f"{server.url}/alice/other")
    devpi("login", "alice", "--password", PASSWORDS["alice"])
    devpi("index", "alice/other", "block_vulnerable=moderate")
    assert setting(server, "alice/other") == "moderate"
    devpi("index", "alice/other", "block_vulnerable-=")
    assert setting(server, "alice/other") is None


def _token(server: LiveServer, user: dict[str, str], name: str, index: str) -> dict[str, str]:
    status, body, reason = call(server, "POST", f"/{name}/+tokens", {"index": index}, user)
    assert status == 201, reason
    return {"Authorization": basic_auth("__token__", body["result"]["token"])}


def test_only_the_owner_may_change_block_vulnerable(server: LiveServer) -> None:
    """Another account, an anonymous caller and the owner's token for another index cannot
    turn the setting off; a bad value is a 400 that lists the choices."""
    configure(server, "alice/open", "high", ALICE)
    scoped = _token(server, ALICE, "alice", "alice/other")
    try:
        for auth, statuses in ((BOB, {403}), (None, {401}), (scoped, {401, 403})):
            status, _body, reason = call(
                server, "PATCH", "/alice/open", ["block_vulnerable=off"], auth
            )
            assert status in statuses, reason
            assert setting(server, "alice/open") == "high"
        status, _body, reason = call(
            server, "PATCH", "/alice/open", {"block_vulnerable": "meh"}, ALICE
        )
        assert status == 400
        assert reason == (
            "Cannot change alice/open: block_vulnerable must be off, all, or a minimum severity "
            "(low, moderate, high, critical), not 'meh'."
        )
    finally:
        configure(server, "alice/open", "off", ALICE)


def test_the_web_edit_page_sets_block_vulnerable(server: LiveServer) -> None:
    """The owner's edit form (with its CSRF token) stores the choice; the index page says it."""
    with requests.Session() as browser:
        login = browser.get(server.url + "/+login", timeout=30)
        browser.post(
            server.url + "/+login",
            data={
                "username": "alice",
                "password": PASSWORDS["alice"],
                "csrf_token": CSRF_RE.search(login.text).group(1),
            },
            timeout=30,
        )
        edit = browser.get(server.url + "/alice/other/+edit", timeout=30)
        assert edit.status_code == 200
        assert 'name="block_vulnerable"' in edit.text
        saved = browser.post(
            server.url + "/alice/other/+edit",
            data={
                "csrf_token": CSRF_RE.search(edit.text).group(1),
                "title": "",
                "description": "",
                "acl_read": ":ANONYMOUS:",
                "bases": "",
                "acl_upload": "alice",
                "mirror_whitelist": "",
                "block_vulnerable": "critical",
            },
            timeout=30,
        )
        assert saved.status_code == 200, saved.reason
        assert setting(server, "alice/other") == "critical"
        assert (
            "severity critical or above"
            in browser.get(server.url + "/alice/other/", headers=HTML, timeout=30).text
        )
    configure(server, "alice/other", "off", ALICE)


def test_version_and_project_pages_mark_affected_versions(server: LiveServer) -> None:
    """The version page names each advisory with its summary, fixed versions and link; the
    JSON API carries the same under `advisories`; 2.0.0 has none."""
    html = server.get("/root/pypi/vuln-pkg/1.1.0/", headers=HTML)[2].decode()
    assert 'href="https://advisories.example/GHSA-vuln-0001"' in html
    assert "Remote code execution in vuln-pkg" in html
    assert "PYSEC-2026-2" in html
    assert "2.0.0" in html  # fixed in
    assert "GHSA-gone-0003" not in html  # withdrawn
    status, body, _reason = call(server, "GET", "/root/pypi/vuln-pkg/1.1.0/")
    assert status == 200
    found = body["result"]["advisories"]
    assert [(a["id"], a["severity"], a["fixed"]) for a in found] == [
        ("GHSA-vuln-0001", "high", ["2.0.0"]),
        ("PYSEC-2026-2", None, []),
    ]
    assert found[0]["aliases"] == ["CVE-2026-0001"]
    project = call(server, "GET", "/root/pypi/vuln-pkg/")[1]["result"]
    assert "advisories" not in project["2.0.0"]
    assert [a["id"] for a in project["1.0.0"]["advisories"]] == ["GHSA-vuln-0001"]
    page = server.get("/root/pypi/vuln-pkg/", headers=HTML)[2].decode()
    assert page.count('class="badge vulnerable"') == 3  # 1.0.0 once, 1.1.0 twice
    assert 'id="refused"' not in html  # block_vulnerable is off
    configure(server, "alice/open", "high", ALICE)
    try:
        through = server.get("/alice/open/vuln-pkg/1.1.0/", headers=HTML)[2].decode()
        assert "block_vulnerable=high refuses it" in through
        assert "GHSA-vuln-0001" in through
    finally:
        configure(server, "alice/open", "off", ALICE)


def test_the_advisories_listing_shows_what_the_index_serves_that_is_affected(
    server: LiveServer,
) -> None:
    """root/pypi's listing as JSON and HTML, with which ones the setting refuses."""
    configure(server, "root/pypi", "high")
    try:
        status, body, reason = call(server, "GET", "/root/pypi/+advisories")
        assert status == 200, reason
        rows = {
            (r["project"], r["version"], r["refused"], tuple(a["id"] for a in r["advisories"]))
            for r in body["result"]["affected"]
        }
        assert rows == {
            ("vuln-pkg", "1.0.0", True, ("GHSA-vuln-0001",)),
            ("vuln-pkg", "1.1.0", True, ("GHSA-vuln-0001", "PYSEC-2026-2")),
            ("other-pkg", "1.0.0", True, ("PYSEC-2026-4",)),
        }
        html = server.get("/root/pypi/+advisories", headers=HTML)[2].decode()
        assert "GHSA-vuln-0001" in html
        assert "refused" in html
    finally:
        configure(server, "root/pypi", "off")


@pytest.mark.parametrize(
    ("who", "statuses"),
    [("anonymous", {401}), ("bob", {403}), ("bob-token", {403}), ("alice-other-token", {401, 403})],
)
def test_a_private_index_listing_shows_nothing_to_those_who_may_not_read_it(
    server: LiveServer, who: str, statuses: set[int]
) -> None:
    """Anonymous, another account, its token, and the owner's token for another index get an
    error without the project; through a public stage, the private base's project is left out."""
    auth = {
        "anonymous": None,
        "bob": BOB,
        "bob-token": _token(server, BOB, "bob", "alice/open") if who == "bob-token" else None,
        "alice-other-token": (
            _token(server, ALICE, "alice", "alice/other") if who == "alice-other-token" else None
        ),
    }[who]
    for accept in (JSON_API, HTML):
        status, _headers, body, _reason = server.get(
            "/alice/private/+advisories", headers={**accept, **(auth or {})}
        )
        assert status in statuses
        assert b"secret-pkg" not in body
        assert b"GHSA-secret-0006" not in body
    status, _headers, body, _reason = server.get(
        "/alice/open/+advisories", headers={**JSON_API, **(auth or {})}
    )
    if who != "alice-other-token":  # a token scoped elsewhere may be refused outright
        assert status == 200
    assert b"secret-pkg" not in body
    assert b"vuln-pkg" in body or status != 200


def test_the_owner_sees_the_private_projects_advisories(server: LiveServer) -> None:
    """The control for the attacks: alice reads alice/private's and alice/open's listing."""
    for path in ("alice/private", "alice/open"):
        status, body, reason = call(server, "GET", f"/{path}/+advisories", auth=ALICE)
        assert status == 200, reason
        rows = {(r["project"], r["index"]) for r in body["result"]["affected"]}
        assert ("secret-pkg", "alice/private") in rows
