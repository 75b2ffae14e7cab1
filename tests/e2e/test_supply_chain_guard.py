"""The supply-chain guard on a live server (issue #18 items 1 and 2): a release cooldown on the
mirror and block rules, enforced for real pip and uv, through stage bases, on pages and file URLs
alike; only owners and superusers may change them."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.builders import make_wheel
from tests.conftest import LiveServer, basic_auth, clean_env, run_pip
from tests.e2e.helpers import ADMIN, MIME_JSON, api
from tests.e2e.test_mirror import start_mirror, wheel_metadata
from tests.e2e.test_mirror_metadata import UV
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.e2e

ALICE = ("alice", "alice-password-1")
HTML = {"Accept": "text/html"}


def publish(upstream: FakeUpstream, name: str, version: str, age: timedelta | None) -> str:
    """A wheel upstream whose PEP 700 upload-time is `age` ago (None: no upload time)."""
    filename, data = make_wheel(name, version)
    when = datetime.now(UTC) - age if age is not None else None
    upstream.add_file(name, filename, data, metadata=wheel_metadata(data), upload_time=when)
    return filename


def releases(upstream: FakeUpstream) -> dict[str, str]:
    """guarded-app 1.0 (ten days old), 1.1 (four days) and 2.0 (one hour): version -> file."""
    return {
        "1.0": publish(upstream, "guarded-app", "1.0", timedelta(days=10)),
        "1.1": publish(upstream, "guarded-app", "1.1", timedelta(days=4)),
        "2.0": publish(upstream, "guarded-app", "2.0", timedelta(hours=1)),
    }


def pages(server: LiveServer, index: str, project: str) -> tuple[dict[str, Any], set[str]]:
    """The JSON page and the filenames the HTML page links, checking both are 200s."""
    status, _headers, body, _reason = server.get(
        f"/{index}/+simple/{project}/", headers={"Accept": MIME_JSON}
    )
    assert status == 200, body
    document = json.loads(body)
    status, _headers, body, _reason = server.get(f"/{index}/+simple/{project}/", headers=HTML)
    assert status == 200, body
    return document, set(re.findall(r">([^<>]+\.whl)</a>", body.decode()))


def listed(server: LiveServer, index: str, project: str) -> set[str]:
    """Filenames on the project page; the JSON and HTML pages must list the same ones."""
    document, html_files = pages(server, index, project)
    json_files = {f["filename"] for f in document["files"]}
    assert json_files == html_files
    return json_files


def mirror_file_path(upstream: FakeUpstream, filename: str) -> str:
    """The root/pypi `+f` path of an upstream file (known without any page listing it)."""
    fake = next(
        f
        for project in upstream._projects.values()
        for f in project.files
        if f.filename == filename
    )
    return f"/root/pypi/+f/{fake.sha256}/{filename}"


def resolve(client: str, server: LiveServer, index: str, requirement: str, tmp: Path) -> str:
    """The version of guarded-app that real pip or uv resolves from `index`."""
    index_url = f"{server.url}/{index}/+simple/"
    if client == "pip":
        report = tmp / "report.json"
        result = run_pip(
            "install", "--dry-run", "--ignore-installed", "--report", str(report),
            "--index-url", index_url, requirement,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        (found,) = json.loads(report.read_text())["install"]
        return str(found["metadata"]["version"])
    assert UV is not None, "uv is missing from the venv: make test installs it"
    result = subprocess.run(
        [UV, "pip", "compile", "--no-config", "--no-cache", "--index-url", index_url, "-"],
        input=f"{requirement}\n",
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"^guarded-app==(\S+)", result.stdout, re.MULTILINE)
    assert match, result.stdout
    return match[1]


@pytest.mark.parametrize("client", ["pip", "uv"])
def test_installers_resolve_the_newest_release_old_enough(
    server_factory, fake_upstream, tmp_path, client
):
    """With MIRROR_MIN_AGE=3d and a newest release one hour old, real pip and uv resolve the
    newest one old enough, from the mirror and from a stage built on it; the young file's URL
    and .metadata answer 404 saying when it becomes available."""
    files = releases(fake_upstream)
    server = start_mirror(server_factory, fake_upstream, MIRROR_MIN_AGE="3d")

    assert resolve(client, server, "root/pypi", "guarded-app", tmp_path) == "1.1"
    assert resolve(client, server, "admin/dev", "guarded-app", tmp_path) == "1.1"

    for index in ("root/pypi", "admin/dev"):
        document, _ = pages(server, index, "guarded-app")
        assert document["versions"] == ["1.0", "1.1"]
        assert listed(server, index, "guarded-app") == {files["1.0"], files["1.1"]}
    young = mirror_file_path(fake_upstream, files["2.0"])
    for path in (young, young + ".metadata"):
        status, _headers, body, reason = server.get(path)
        assert status == 404
        assert re.match(
            rf"{re.escape(files['2.0'])} is held back until \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ: "
            r"root/pypi serves files once they are 3d old \(mirror_min_age\)$",
            reason,
        ), reason
        assert reason in body.decode()
    status, _headers, _body, _reason = server.get(mirror_file_path(fake_upstream, files["1.1"]))
    assert status == 200
    # The request lines say what the guard did: a page with a file left out, a refused URL.
    log = server.log()
    assert 'guard=cooldown guard_detail="1 files not listed"' in log
    assert re.search(r'"GET /root/pypi/\+f/\S+ HTTP/1\.1" 404 .* guard=cooldown', log), log[-3000:]


def test_an_exemption_lets_a_young_release_through_and_records_who_and_when(
    server_factory, fake_upstream, tmp_path
):
    """The owner exempts guarded-app==2.0: pip gets it at once; the config says who and when."""
    files = releases(fake_upstream)
    server = start_mirror(server_factory, fake_upstream, MIRROR_MIN_AGE="3d")
    assert files["2.0"] not in listed(server, "admin/dev", "guarded-app")

    status, body, reason = api(
        server, "PATCH", "/root/pypi", ["mirror_min_age_exempt+=guarded-app==2.0"]
    )
    assert status == 200, reason
    assert body["result"]["mirror_min_age"] == "3d"
    assert body["result"]["mirror_min_age_exempt"] == ["guarded-app==2.0"]
    (record,) = body["result"]["guard_log"]
    match = re.fullmatch(r"mirror_min_age_exempt guarded-app==2\.0 by admin at (\S+)", record)
    assert match, record
    at = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(at - datetime.now(UTC)) < timedelta(hours=1)

    assert files["2.0"] in listed(server, "admin/dev", "guarded-app")
    assert resolve("pip", server, "admin/dev", "guarded-app", tmp_path) == "2.0"
    status, *_ = server.get(mirror_file_path(fake_upstream, files["2.0"]))
    assert status == 200


def test_without_upload_times_a_file_counts_from_when_the_mirror_first_saw_it(
    server_factory, fake_upstream
):
    """A plain upstream gives no upload-time: files of the first fetch count as old, a file
    that appears on a later refresh is held back from then on."""
    fake_upstream.html_only = True
    old = publish(fake_upstream, "guarded-app", "1.0", None)
    server = start_mirror(server_factory, fake_upstream, MIRROR_MIN_AGE="3d")
    assert listed(server, "root/pypi", "guarded-app") == {old}

    new = publish(fake_upstream, "guarded-app", "1.1", None)
    status, _body, reason = api(server, "POST", "/root/pypi/+simple/guarded-app/refresh")
    assert status == 200, reason
    assert listed(server, "root/pypi", "guarded-app") == {old}
    status, _headers, _body, reason = server.get(mirror_file_path(fake_upstream, new))
    assert status == 404
    assert "is held back until" in reason


def test_a_project_whose_every_file_is_young_shows_an_empty_page_with_the_reason(
    server_factory, fake_upstream
):
    """Installers get an empty page (not an error); the web page greys the files with why."""
    young = publish(fake_upstream, "fresh-app", "1.0", timedelta(minutes=5))
    server = start_mirror(server_factory, fake_upstream, MIRROR_MIN_AGE="12h")

    document, html_files = pages(server, "admin/dev", "fresh-app")
    assert (document["files"], document["versions"], html_files) == ([], [], set())
    status, _headers, body, _reason = server.get("/admin/dev/fresh-app/", headers=HTML)
    assert status == 200
    web = body.decode()
    assert "No files." in web
    assert re.search(
        rf'class="muted withheld cooldown"><span class="badge">cooldown</span> '
        rf"{re.escape(young)}: {re.escape(young)} is held back until ",
        web,
    ), web


def test_block_rules_hide_files_and_refuse_their_urls_through_a_stage(
    server_factory, fake_upstream, tmp_path
):
    """A block rule on the mirror hides the file from the stage built on it; its URL and its
    .metadata answer 403 with the rule's reason, which pip prints; a rule on the stage hides
    files there only; a server rule applies everywhere."""
    files = releases(fake_upstream)
    other = publish(fake_upstream, "other-app", "1.0", timedelta(days=30))
    server = start_mirror(server_factory, fake_upstream)
    assert listed(server, "admin/dev", "guarded-app") == set(files.values())

    status, _body, reason = api(
        server, "PATCH", "/root/pypi", ["blocked+=guarded-app>=1.1,<2: compromised maintainer"]
    )
    assert status == 200, reason
    assert listed(server, "admin/dev", "guarded-app") == {files["1.0"], files["2.0"]}
    document, _ = pages(server, "admin/dev", "guarded-app")
    assert document["versions"] == ["1.0", "2.0"]
    blocked = mirror_file_path(fake_upstream, files["1.1"])
    expected = (
        f"{files['1.1']} is blocked by root/pypi (guarded-app>=1.1,<2): compromised maintainer"
    )
    for path in (blocked, blocked + ".metadata"):
        status, _headers, _body, reason = server.get(path)
        assert (status, reason) == (403, expected)
    result = run_pip("download", "--no-deps", "--dest", str(tmp_path), f"{server.url}{blocked}")
    assert result.returncode != 0
    assert "compromised maintainer" in result.stdout + result.stderr

    # A stage's own rule: its page hides the file, the mirror's page still lists it.
    status, _body, reason = api(server, "PATCH", "/admin/dev", ["blocked+=other-app: not here"])
    assert status == 200, reason
    assert listed(server, "admin/dev", "other-app") == set()
    assert listed(server, "root/pypi", "other-app") == {other}

    # A server rule: on every index, and an index owner cannot lift it.
    status, body, reason = api(server, "PUT", "/+blocked", {"blocked": ["guarded-app==1.0: bad"]})
    assert status == 200, reason
    assert [(r["spec"], r["reason"], r["by"]) for r in body["blocked"]] == [
        ("guarded-app==1.0", "bad", "admin")
    ]
    assert listed(server, "root/pypi", "guarded-app") == {files["2.0"]}
    assert listed(server, "admin/dev", "guarded-app") == {files["2.0"]}
    status, _headers, _body, reason = server.get(mirror_file_path(fake_upstream, files["1.0"]))
    assert (status, reason) == (
        403,
        f"{files['1.0']} is blocked by this server (guarded-app==1.0): bad",
    )
    status, _body, reason = api(server, "PATCH", "/admin/dev", ["blocked-="])
    assert status == 200, reason
    assert listed(server, "admin/dev", "guarded-app") == {files["2.0"]}

    status, _headers, body, _reason = server.get("/root/pypi/guarded-app/", headers=HTML)
    assert "withheld blocked" in body.decode()
    status, _headers, body, _reason = server.get(
        "/+metrics", headers={"Authorization": basic_auth(*ADMIN)}
    )
    assert re.search(
        r'pyshelf_guard_decisions_total\{kind="blocked",where="file"\} [1-9]', body.decode()
    )


def test_strangers_anonymous_callers_and_scoped_tokens_cannot_change_the_guard(
    server_factory, fake_upstream
):
    """Anonymous callers, another account and admin's token limited to admin/dev can change
    neither a mirror's cooldown, exemptions and block rules nor the server's block rules."""
    files = releases(fake_upstream)
    server = start_mirror(server_factory, fake_upstream, MIRROR_MIN_AGE="3d")
    status, _body, reason = api(server, "PUT", "/alice", {"password": ALICE[1]})
    assert status == 201, reason
    status, body, reason = api(server, "POST", "/admin/+tokens", {"index": "admin/dev"})
    assert status in (200, 201), reason
    token = ("__token__", body["result"]["token"])

    changes = [
        ("PATCH", "/root/pypi", ["mirror_min_age=0"]),
        ("PATCH", "/root/pypi", ["mirror_min_age_exempt+=guarded-app"]),
        ("PATCH", "/root/pypi", {"mirror_min_age": "0"}),
        ("PATCH", "/admin/dev", ["blocked+=other: x"]),
        ("PUT", "/+blocked", {"blocked": []}),
    ]
    for auth in (None, ALICE, token):
        for method, path, change in changes:
            status, _body, reason = api(server, method, path, change, auth=auth)
            assert status in (401, 403), (auth, method, path, status, reason)
    status, _body, reason = api(server, "GET", "/+blocked", auth=ALICE)
    assert status == 403, reason

    status, body, _reason = api(server, "GET", "/root/pypi")
    assert body["result"]["mirror_min_age"] == "3d"
    assert body["result"]["mirror_min_age_exempt"] == []
    assert files["2.0"] not in listed(server, "admin/dev", "guarded-app")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (["mirror_min_age=soon"], "mirror_min_age must be a duration such as 3d, 12h or 0 (off)"),
        (["blocked+=not a spec!: x"], "is not a rule: write name, name==1.2.3"),
        (["mirror_min_age_exempt+=a[extra]"], "a rule takes a name and versions only"),
    ],
)
def test_bad_guard_settings_are_refused_with_a_reason(
    server_factory, fake_upstream, change, reason
):
    """A bad duration or rule is a 400 that says what to write; nothing changes."""
    server = start_mirror(server_factory, fake_upstream)
    status, _body, got = api(server, "PATCH", "/root/pypi", change)
    assert status == 400
    assert reason in got
    status, body, _ = api(server, "GET", "/root/pypi")
    assert (body["result"]["mirror_min_age"], body["result"]["blocked"]) == ("0", [])


def test_the_cached_file_fast_path_does_not_bypass_the_guard(server_factory, fake_upstream):
    """A file the mirror cached before a rule was set is refused from then on (the WSGI fast
    path for cached files steps aside while the index has rules)."""
    files = releases(fake_upstream)
    server = start_mirror(server_factory, fake_upstream)
    listed(server, "root/pypi", "guarded-app")
    path = mirror_file_path(fake_upstream, files["2.0"])
    assert server.get(path)[0] == 200
    assert server.get(path)[0] == 200  # cached now
    status, _body, reason = api(server, "PATCH", "/root/pypi", ["mirror_min_age=1d"])
    assert status == 200, reason
    status, _headers, _body, reason = server.get(path)
    assert status == 404
    assert "is held back until" in reason
