"""Promoting a release between stages with the JSON API and devpi's push body (issue #22), on a
live server: what is copied, what is refused, and that the target's rules all hold."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.blobs import server_blob
from tests.builders import make_wheel, wheel_metadata
from tests.conftest import ADMIN_PASSWORD, LiveServer, basic_auth, run_pip
from tests.e2e.helpers import api, raw_upload, sha256, simple_json
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.e2e

PASSWORDS = {"alice": "alice-password", "bob": "bob-password-1", "mallory": "mallory-password"}
ALICE = ("alice", PASSWORDS["alice"])
BOB = ("bob", PASSWORDS["bob"])
MALLORY = ("mallory", PASSWORDS["mallory"])
ADMIN = ("admin", ADMIN_PASSWORD)

StartServer = Callable[..., LiveServer]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    """One fake upstream for the module's server."""
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream
) -> Iterator[LiveServer]:
    """alice (dev, prod, a volatile scratch, a read-restricted private), bob (in nobody's
    acl_upload), mallory (her own stage); each test uses its own project names."""
    live = LiveServer(
        tmp_path_factory.mktemp("promote") / "data",
        {"ADMIN_PASSWORD": ADMIN_PASSWORD, "MIRROR_URL": upstream.url, "WEB_CONCURRENCY": "2"},
    )
    live.start()
    try:
        for user, password in PASSWORDS.items():
            status, body, _ = api(live, "PUT", f"/{user}", {"password": password})
            assert status == 201, body
        for path, config, auth in (
            ("alice/dev", {"bases": ["root/pypi"]}, ALICE),
            ("alice/prod", {"bases": ["root/pypi"]}, ALICE),
            ("alice/scratch", {"volatile": True}, ALICE),
            ("alice/private", {"acl_read": ["alice"]}, ALICE),
            ("mallory/stage", {}, MALLORY),
        ):
            status, body, _ = api(live, "PUT", f"/{path}", config, auth=auth)
            assert status == 201, body
        yield live
    finally:
        live.stop()


def upload(server: LiveServer, index: str, dist: tuple[str, bytes], auth: Any = ALICE) -> None:
    """twine's upload form; must succeed."""
    status, _headers, body, reason = raw_upload(server, index, *dist, auth=auth)
    assert status == 200, (reason, body)


def upload_docs(server: LiveServer, index: str, name: str, version: str) -> bytes:
    """devpi-client's doc_upload of a one-page zip; returns the zip."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.html", f"<!DOCTYPE html><title>{name}</title><p>{name} docs")
    data = buffer.getvalue()
    boundary = "promote-docs"
    body = (
        "".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
            for k, v in ((":action", "doc_upload"), ("name", name), ("version", version))
        ).encode()
        + f'--{boundary}\r\nContent-Disposition: form-data; name="content"; '
        f'filename="{name}.zip"\r\n\r\n'.encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, _headers, answer, reason = server.get(
        f"/{index}/",
        headers={
            "Authorization": basic_auth(*ALICE),
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
        method="POST",
        data=body,
    )
    assert status == 200, (reason, answer)
    return data


def promote(
    server: LiveServer, source: str, name: str, version: str, target: str, auth: Any = ALICE
) -> tuple[int, Any, str]:
    """POST /SOURCE/+promote {"name", "version", "target"}: (status, JSON, reason)."""
    body = {"name": name, "version": version, "target": target}
    return api(server, "POST", f"/{source}/+promote", body, auth=auth)


def push(
    server: LiveServer,
    source: str,
    body: dict[str, Any],
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, str]:
    """devpi push's JSON body to /SOURCE/ (POST, as devpi-server also takes it, or PUSH)."""
    sent = {
        "Accept": "application/json",
        "Content-Type": "application/json",
        "Authorization": basic_auth(*ALICE),
        **(headers or {}),
    }
    status, _h, raw, reason = server.get(
        f"/{source}/", headers=sent, method=method, data=json.dumps(body).encode()
    )
    return status, json.loads(raw) if raw else None, reason


def blob_keys(server: LiveServer) -> set[str]:
    """Every key in the server's blob store (its directory or its bucket)."""
    return {item.key for item in server_blob(server, "0" * 64).storage.objects()}


def projects(server: LiveServer, index: str) -> list[str]:
    """The projects an index holds itself (as admin)."""
    status, body, _ = api(server, "GET", f"/{index}", auth=ADMIN)
    assert status == 200, body
    return body["result"]["projects"]


def test_promote_copies_files_sidecars_and_docs_as_they_are_without_storing_a_byte(
    server: LiveServer,
) -> None:
    """The copy points at the same blobs: same hashes, upload times, sidecar, docs; the blob
    store holds no new key; the target's page says who promoted it from where."""
    wheel = make_wheel("staged-pkg", "1.0", summary="staged")
    upload(server, "alice/dev", wheel)
    docs = upload_docs(server, "alice/dev", "staged-pkg", "1.0")
    before = blob_keys(server)
    source = simple_json(server, "alice/dev", "staged-pkg")["files"]

    status, body, reason = promote(server, "alice/dev", "staged-pkg", "1.0", "alice/prod")

    assert (status, reason) == (200, "OK"), body
    result = body["result"]
    assert (result["source"], result["target"], result["promoted_by"]) == (
        "alice/dev",
        "alice/prod",
        "alice",
    )
    assert (result["copied"], result["unchanged"], result["docs"]) == ([wheel[0]], [], "copied")
    assert blob_keys(server) == before
    target = simple_json(server, "alice/prod", "staged-pkg")["files"]
    for key in ("filename", "hashes", "size", "upload-time", "core-metadata"):
        assert target[0][key] == source[0][key], key
    assert target[0]["url"].startswith("/alice/prod/+f/")
    status, _h, sidecar, _r = server.get(target[0]["url"] + ".metadata")
    assert (status, sidecar) == (200, wheel_metadata(wheel[1]))
    status, _h, page, _r = server.get("/alice/prod/staged-pkg/1.0/+doc/index.html")
    assert (status, b"staged-pkg docs" in page) == (200, True)
    assert sha256(docs) in before
    status, _h, found, _r = server.get(
        "/+search?q=" + quote('docs:"staged-pkg docs"'), headers={"Accept": "application/json"}
    )
    assert status == 200
    docs_hits = {(h["index"], h["url"].split("/+doc/")[-1]) for h in json.loads(found)["hits"]}
    assert ("alice/prod", "index.html") in docs_hits  # the copy's pages are searchable too
    status, _h, page, _r = server.get(
        "/alice/prod/staged-pkg/1.0/", headers={"Accept": "text/html"}
    )
    assert status == 200
    text = page.decode()
    assert 'copied from <a href="/alice/dev/staged-pkg/1.0/">alice/dev</a>' in text
    assert f'by alice: <span class="mono">{wheel[0]}</span> and the docs' in text
    assert "promote staged-pkg 1.0 from alice/dev to alice/prod by alice" in server.log()


def test_an_identical_copy_is_a_noop_and_other_bytes_are_a_409_on_a_non_volatile_target(
    server: LiveServer,
) -> None:
    """Again: 200, nothing copied; other bytes under the filename: 409, prod keeps its bytes;
    a volatile target takes the other bytes, as an upload would."""
    wheel = make_wheel("conflict-pkg", "1.0", summary="first")
    upload(server, "alice/dev", wheel)
    assert promote(server, "alice/dev", "conflict-pkg", "1.0", "alice/prod")[0] == 200
    assert promote(server, "alice/dev", "conflict-pkg", "1.0", "alice/scratch")[0] == 200

    status, body, reason = push(
        server,
        "alice/dev",
        {"name": "conflict-pkg", "version": "1.0", "targetindex": "alice/prod"},
    )
    assert (status, reason) == (200, "OK"), body
    assert body["type"] == "actionlog"
    assert body["result"] == [
        [200, "unchanged_releasefile", f"alice/prod/+f/{sha256(wheel[1])}/{wheel[0]}"]
    ]

    other = make_wheel("conflict-pkg", "1.0", summary="other bytes")
    upload(server, "mallory/stage", other, auth=MALLORY)
    status, body, reason = promote(
        server, "mallory/stage", "conflict-pkg", "1.0", "alice/prod", auth=ADMIN
    )
    assert status == 409, body
    assert reason == (
        f"File already exists on alice/prod ('{other[0]}', with sha256 hash "
        f"'{sha256(wheel[1])}'), with other bytes than on mallory/stage. Index alice/prod is "
        "not volatile: promote a new version instead."
    )
    assert [
        f["hashes"]["sha256"] for f in simple_json(server, "alice/prod", "conflict-pkg")["files"]
    ] == [sha256(wheel[1])]

    status, body, reason = promote(
        server, "mallory/stage", "conflict-pkg", "1.0", "alice/scratch", auth=ADMIN
    )
    assert (status, body["result"]["copied"]) == (200, [other[0]]), body
    assert [
        f["hashes"]["sha256"] for f in simple_json(server, "alice/scratch", "conflict-pkg")["files"]
    ] == [sha256(other[1])]


@pytest.mark.parametrize(
    ("auth", "target", "status", "reason"),
    [
        (None, "alice/prod", 401, "Authentication required: log in or pass credentials."),
        (
            BOB,
            "alice/prod",
            403,
            "The user 'bob' isn't allowed to upload to index 'alice/prod': ask its owner to "
            "add you to its acl_upload.",
        ),
        (
            ALICE,
            "root/pypi",
            400,
            "Target index root/pypi is a mirror and takes no uploads: promote to a stage.",
        ),
        (
            ALICE,
            "alice/nothing",
            400,
            "Target index alice/nothing does not exist: create it first, or check its name.",
        ),
        (
            ALICE,
            "alice/dev",
            400,
            "refused-pkg 1.0 is on alice/dev already: choose another target index.",
        ),
        (
            ALICE,
            "pypi:elsewhere",
            400,
            "pyshelf does not push to other servers (pypi: targets): it never sends packages "
            "or credentials elsewhere for you. Download the files and upload them there with "
            "twine upload --repository-url URL.",
        ),
        (
            ALICE,
            "prod",
            400,
            "The target must be an index of this server as USER/INDEX, not 'prod'.",
        ),
    ],
)
def test_promotions_the_target_does_not_allow_are_refused_with_what_to_do(
    server: LiveServer, auth: Any, target: str, status: int, reason: str
) -> None:
    """Anonymous, a stranger, a mirror, an unknown index, the source itself, another server, a
    bare name: refused, saying why; nothing reaches the target."""
    upload(server, "alice/dev", make_wheel("refused-pkg", "1.0"))

    got = promote(server, "alice/dev", "refused-pkg", "1.0", target, auth=auth)

    assert (got[0], got[2]) == (status, reason), got[1]
    assert "refused-pkg" not in projects(server, "alice/prod")


def test_devpi_push_to_another_server_is_refused_without_touching_its_credentials(
    server: LiveServer,
) -> None:
    """devpi-client's body for a `pypi:` target carries the .pypirc password: 400, and the
    password is in no answer and no log line."""
    upload(server, "alice/dev", make_wheel("external-pkg", "1.0"))
    body = {
        "name": "external-pkg",
        "version": "1.0",
        "posturl": "http://127.0.0.1:9/legacy/",
        "username": "alice",
        "password": "pypirc-secret-pw",
    }
    for method in ("POST", "PUSH"):
        status, answer, reason = push(server, "alice/dev", body, method=method)
        assert status == 400, answer
        assert reason.startswith("pyshelf does not push to other servers (pypi: targets)")
        assert "pypirc-secret-pw" not in json.dumps(answer)
    assert "pypirc-secret-pw" not in server.log()


def test_a_release_on_an_index_the_caller_may_not_read_is_answered_as_a_missing_one(
    server: LiveServer,
) -> None:
    """mallory names alice's read-restricted release as the source of a copy into her own
    stage: the answer is word for word that of a release that does not exist, through the API
    and devpi's push, and nothing is copied."""
    upload(server, "alice/private", make_wheel("secret-pkg", "1.0", summary="alice's secret"))
    answers = []
    for name in ("secret-pkg", "absent-pkg"):
        via_api = promote(server, "alice/private", name, "1.0", "mallory/stage", auth=MALLORY)
        via_push = push(
            server,
            "alice/private",
            {"name": name, "version": "1.0", "targetindex": "mallory/stage"},
            method="PUSH",
            headers={"Authorization": basic_auth(*MALLORY)},
        )
        answers.append(json.dumps([via_api, via_push]).replace(name, "NAME"))

    assert answers[0] == answers[1]
    assert json.loads(answers[0])[0][:1] == [400]
    assert json.loads(answers[0])[0][2] == (
        "There is no release NAME 1.0 on index alice/private that you may read: check the "
        "name, the version and the source index."
    )
    assert "secret-pkg" not in projects(server, "mallory/stage")
    # alice may read her index: the same request of hers goes through.
    assert promote(server, "alice/private", "secret-pkg", "1.0", "alice/prod")[0] == 200


def test_a_token_limited_to_one_index_cannot_promote_out_of_it(server: LiveServer) -> None:
    """alice's token for alice/dev may upload there; it copies nothing into alice/prod, by
    devpi's POST to alice/dev (an upload URL it may use) or by the API."""
    upload(server, "alice/dev", make_wheel("scoped-pkg", "1.0"))
    status, body, _ = api(server, "POST", "/alice/+tokens", {"index": "alice/dev"}, auth=ALICE)
    assert status == 201, body
    token = ("__token__", body["result"]["token"])
    request = {"name": "scoped-pkg", "version": "1.0", "targetindex": "alice/prod"}

    by_post = push(server, "alice/dev", request, headers={"Authorization": basic_auth(*token)})
    by_api = promote(server, "alice/dev", "scoped-pkg", "1.0", "alice/prod", auth=token)

    assert (by_post[0], by_post[2]) == (
        403,
        "The user 'alice' isn't allowed to upload to index 'alice/prod': ask its owner to add "
        "you to its acl_upload.",
    )
    assert by_api[0] == 403
    assert by_api[2].startswith("This token is limited to index alice/dev")
    assert "scoped-pkg" not in projects(server, "alice/prod")


def test_a_promoted_name_hides_the_mirrors_project_of_that_name_from_then_on(
    server: LiveServer, upstream: FakeUpstream
) -> None:
    """Dependency confusion: before the copy, alice/prod shows the upstream's confused-pkg
    9.9; once confused-pkg 1.0 is promoted into it, only 1.0, as after an upload."""
    upstream.add_file("confused-pkg", *make_wheel("confused-pkg", "9.9", summary="upstream's"))
    assert simple_json(server, "alice/prod", "confused-pkg")["versions"] == ["9.9"]
    upload(server, "alice/dev", make_wheel("confused-pkg", "1.0"))

    assert promote(server, "alice/dev", "confused-pkg", "1.0", "alice/prod")[0] == 200

    assert simple_json(server, "alice/prod", "confused-pkg")["versions"] == ["1.0"]


def test_push_options_and_bad_bodies_get_reasons(server: LiveServer) -> None:
    """devpi's --no-docs and --only-docs; unknown options, a bad version, a text body."""
    wheel = make_wheel("options-pkg", "1.0")
    upload(server, "alice/dev", wheel)
    upload_docs(server, "alice/dev", "options-pkg", "1.0")
    base = {"name": "options-pkg", "version": "1.0", "targetindex": "alice/prod"}

    status, body, _ = push(server, "alice/dev", {**base, "no_docs": True}, method="PUSH")
    assert (status, [line[1] for line in body["result"]]) == (
        200,
        ["register", "store_releasefile"],
    )
    status, body, _ = push(server, "alice/dev", {**base, "only_docs": True}, method="PUSH")
    assert (status, [line[1] for line in body["result"]]) == (200, ["register", "store_doczip"])

    cases = [
        ({**base, "flavour": "x"}, "Unknown push option(s): flavour; known: :action, name, "),
        ({**base, "no_docs": True, "only_docs": True}, "Use either 'no_docs' or 'only_docs'"),
        ({**base, "version": "not a version"}, "'not a version' is not a valid version"),
        ({**base, ":action": "yank"}, "Unknown ':action' 'yank': expected 'push'."),
        ({"name": "options-pkg"}, 'A push needs "name", "version" and "targetindex"'),
    ]
    for request, reason in cases:
        status, _body, got = push(server, "alice/dev", request, method="PUSH")
        assert (status, got[: len(reason)]) == (400, reason)
    status, _h, _b, reason = server.get(
        "/alice/dev/+promote",
        headers={"Authorization": basic_auth(*ALICE), "Content-Type": "text/plain"},
        method="POST",
        data=json.dumps({**base, "target": "alice/prod"}).encode(),
    )
    assert status == 415, reason


def test_the_pushed_release_installs_from_the_target(server: LiveServer, tmp_path: Path) -> None:
    """pip, with nothing but the target index, installs what was promoted into it."""
    upload(server, "alice/dev", make_wheel("install-pkg", "2.0"))
    assert promote(server, "alice/dev", "install-pkg", "2.0", "alice/prod")[0] == 200

    result = run_pip(
        "download",
        "--no-deps",
        "-d",
        str(tmp_path),
        "-i",
        f"{server.url}/alice/prod/+simple/",
        "install-pkg",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["install_pkg-2.0-py3-none-any.whl"]
