"""PEP 740 provenance (issue #18 item 5): twine uploads attestations, pyshelf checks them against
the file and serves them at the provenance URL named in both page formats, to readers only.

No Sigstore signature can be made offline: the attestations are valid-shaped (the library's
models accept them) with a real in-toto statement and placeholder signature material."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pypi_attestations import Attestation, AttestationType

from tests.builders import make_wheel, write_dist
from tests.conftest import LiveServer, basic_auth, clean_env
from tests.e2e.helpers import (
    ADMIN,
    MIME_HTML,
    api,
    raw_upload,
    run_twine,
    sha256,
    simple_json,
)
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.e2e

ALICE = ("alice", "alice-password")
MALLORY = ("mallory", "mallory-password")
MIME_PROVENANCE = "application/vnd.pypi.integrity.v1+json"
# The publish/v1 predicate type PEP 740 names, as the library spells it.
PUBLISH_V1 = AttestationType.PYPI_PUBLISH_V1.value
# uv comes with the test venv (requirements-dev.txt); PYSHELF_TEST_UV may name another one.
UV = os.environ.get("PYSHELF_TEST_UV") or shutil.which("uv", path=str(Path(sys.executable).parent))
UV_TIMEOUT_SECONDS = 120


def b64(data: bytes) -> str:
    """Standard base64 text."""
    return base64.b64encode(data).decode()


def attestation(filename: str, digest: str, predicate_type: str = PUBLISH_V1) -> dict[str, Any]:
    """A PEP 740 attestation object for (filename, digest), shaped as the library expects."""
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": filename, "digest": {"sha256": digest}}],
        "predicateType": predicate_type,
        "predicate": None,
    }
    document = {
        "version": 1,
        "verification_material": {
            "certificate": b64(b"placeholder DER certificate"),
            "transparency_entries": [{"logIndex": "1"}],
        },
        "envelope": {
            "statement": b64(json.dumps(statement).encode()),
            "signature": b64(b"placeholder signature"),
        },
    }
    Attestation.model_validate(document)  # the library takes it as a PEP 740 attestation
    return document


def twine_with_attestations(
    server: LiveServer, index: str, directory: Path, dist: tuple[str, bytes], sent: Any
) -> Any:
    """Write the wheel and its `.publish.attestation` next to it; `twine upload --attestations`
    of both (twine sends the attestation files it is given as one JSON list)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = write_dist(directory, *dist)
    attestation_path = Path(f"{path}.publish.attestation")
    attestation_path.write_text(json.dumps(sent))
    url = f"{server.url}/{index}/"
    return run_twine(
        "upload", "--attestations", "--repository-url", url, "-u", ALICE[0], "-p", ALICE[1],
        str(path), str(attestation_path),
    )  # fmt: skip


@pytest.fixture(scope="module")
def server(live_server: LiveServer) -> LiveServer:
    """alice owns alice/dev (public) and alice/private (only she reads); mallory exists."""
    for user, password in (ALICE, MALLORY):
        status, body, _ = api(live_server, "PUT", f"/{user}", {"password": password})
        assert status == 201, body
    for name, config in (("dev", {}), ("private", {"acl_read": ["alice"]})):
        status, body, _ = api(live_server, "PUT", f"/alice/{name}", config, auth=ALICE)
        assert status == 201, body
    return live_server


def test_twine_uploads_attestations_served_at_the_provenance_url(
    server: LiveServer, tmp_path: Path
) -> None:
    """The provenance URL in the JSON page and data-provenance in HTML give PEP 740's object."""
    filename, data = make_wheel("attested", "1.0")
    sent = attestation(filename, sha256(data))
    result = twine_with_attestations(server, "alice/dev", tmp_path, (filename, data), sent)
    assert result.returncode == 0, result.stdout + result.stderr

    (entry,) = simple_json(server, "alice/dev", "attested")["files"]
    url = entry["provenance"]
    assert url == f"/alice/dev/+provenance/{sha256(data)}/{filename}"
    status, headers, html_page, _ = server.get(
        "/alice/dev/+simple/attested/", headers={"Accept": MIME_HTML}
    )
    assert status == 200
    assert f'data-provenance="{url}"' in html_page.decode()
    status, headers, body, reason = server.get(url)
    assert (status, reason) == (200, "OK"), body
    assert headers["Content-Type"] == MIME_PROVENANCE
    assert json.loads(body) == {
        "version": 1,
        "attestation_bundles": [
            {
                "publisher": {"kind": "pyshelf-account", "claims": {"username": "alice"}},
                "attestations": [sent],
            }
        ],
    }


def test_a_file_without_attestations_has_no_provenance(server: LiveServer) -> None:
    """PEP 740: no key in the JSON page, no attribute in HTML, 404 at the would-be URL."""
    filename, data = make_wheel("plain", "1.0")
    status, _headers, body, reason = raw_upload(server, "alice/dev", filename, data, auth=ALICE)
    assert status == 200, (reason, body)
    (entry,) = simple_json(server, "alice/dev", "plain")["files"]
    assert "provenance" not in entry
    status, _headers, page, _ = server.get("/alice/dev/+simple/plain/")
    assert "data-provenance" not in page.decode()
    assert server.get(f"/alice/dev/+provenance/{sha256(data)}/{filename}")[0] == 404


@pytest.mark.parametrize(
    ("case", "reason_part"),
    [
        ("digest", "its subject's sha256 does not match the uploaded file"),
        ("subject", "is not the uploaded file"),
        ("garbage", "The 'attestations' field is not JSON"),
        ("not-a-list", "must be a non-empty JSON list"),
        ("malformed", "Attestation 1 is malformed: envelope"),
        ("predicate", "unsupported predicate type"),
    ],
)
def test_a_bad_attestation_is_refused_and_nothing_is_stored(
    server: LiveServer, case: str, reason_part: str
) -> None:
    """400 naming what is wrong; the project page does not list the file afterwards."""
    project = f"refused-{case}"
    filename, data = make_wheel(project, "1.0")
    good = attestation(filename, sha256(data))
    field = {
        "digest": json.dumps([attestation(filename, sha256(b"other bytes"))]),
        "subject": json.dumps([attestation(filename.replace("1.0", "2.0"), sha256(data))]),
        "garbage": "{not json",
        "not-a-list": json.dumps(good),
        "malformed": json.dumps([{**good, "envelope": {"statement": "%%%"}}]),
        "predicate": json.dumps([attestation(filename, sha256(data), "https://x.example/p")]),
    }[case]
    status, _headers, body, reason = raw_upload(
        server, "alice/dev", filename, data, auth=ALICE, attestations=field
    )
    assert status == 400, (reason, body)
    assert reason.startswith(f"Invalid attestations for {filename}: ")
    assert reason_part in reason
    status, *_ = server.get(f"/alice/dev/+simple/{project}/", headers={"Accept": MIME_HTML})
    assert status == 404  # the project was never created: nothing stored


def test_provenance_of_a_private_file_is_refused_to_other_readers(
    server: LiveServer, tmp_path: Path
) -> None:
    """Anonymous: 401; mallory: 403; alice's token for alice/dev: 403; alice: 200."""
    filename, data = make_wheel("secret-attested", "1.0")
    sent = attestation(filename, sha256(data))
    result = twine_with_attestations(server, "alice/private", tmp_path, (filename, data), sent)
    assert result.returncode == 0, result.stdout + result.stderr
    path = f"/alice/private/+provenance/{sha256(data)}/{filename}"
    status, body, _ = api(server, "POST", "/alice/+tokens", {"index": "alice/dev"}, auth=ALICE)
    assert status == 201, body
    token = ("__token__", body["result"]["token"])
    for auth, expected in ((None, 401), (MALLORY, 403), (token, 403), (ADMIN, 200)):
        headers = {"Authorization": basic_auth(*auth)} if auth else {}
        status, _headers, answer, _ = server.get(path, headers=headers)
        assert status == expected, (auth, answer)
        assert (b"attestation_bundles" in answer) == (status == 200)
    headers = {"Authorization": basic_auth(*ALICE)}
    status, _headers, answer, _ = server.get(path, headers=headers)
    assert status == 200
    assert json.loads(answer)["attestation_bundles"][0]["attestations"] == [sent]


def provenance_bytes(filename: str, digest: str) -> bytes:
    """An upstream's provenance object for (filename, digest), as a Trusted Publisher made it."""
    publisher = {"kind": "GitHub", "repository": "owner/repo", "workflow": "release.yml"}
    bundle = {"publisher": publisher, "attestations": [attestation(filename, digest)]}
    return json.dumps({"version": 1, "attestation_bundles": [bundle]}).encode()


@pytest.mark.parametrize("html_only", [False, True], ids=["json-upstream", "html-upstream"])
def test_a_mirror_passes_the_upstream_provenance_through(
    server_factory: Any, fake_upstream: FakeUpstream, html_only: bool
) -> None:
    """The mirror's pages name its own +provenance URL, which serves the upstream's object;
    one that does not describe the file is refused (502), and a file without one has none."""
    fake_upstream.html_only = html_only
    good_name, good = make_wheel("upattested", "1.0")
    fake_upstream.add_file(
        "upattested", good_name, good, provenance=provenance_bytes(good_name, sha256(good))
    )
    bad_name, bad = make_wheel("upattested", "1.1")
    fake_upstream.add_file(
        "upattested", bad_name, bad, provenance=provenance_bytes(bad_name, sha256(b"other"))
    )
    plain_name, plain = make_wheel("upattested", "1.2")
    fake_upstream.add_file("upattested", plain_name, plain)
    # PUBLIC_URL makes the links absolute, as PEP 740 asks (a proxy would serve that origin).
    public = "https://pyshelf.example/pypi"
    server = server_factory(MIRROR_URL=fake_upstream.url, PUBLIC_URL=public + "/")

    entries = {f["filename"]: f for f in simple_json(server, "root/pypi", "upattested")["files"]}
    url = entries[good_name]["provenance"]
    assert url == f"{public}/root/pypi/+provenance/{sha256(good)}/{good_name}"
    assert "provenance" not in entries[plain_name]
    status, _headers, page, _ = server.get(
        "/root/pypi/+simple/upattested/", headers={"Accept": MIME_HTML}
    )
    assert status == 200
    assert f'data-provenance="{url}"' in page.decode()

    status, headers, body, reason = server.get(url.removeprefix(public))
    assert (status, reason) == (200, "OK"), body
    assert headers["Content-Type"] == MIME_PROVENANCE
    assert json.loads(body) == json.loads(provenance_bytes(good_name, sha256(good)))

    status, _headers, body, reason = server.get(
        entries[bad_name]["provenance"].removeprefix(public)
    )
    assert status == 502, body
    assert reason.startswith(f"Upstream's provenance of {bad_name} refused: ")
    assert "sha256 does not match" in reason
    plain_url = f"/root/pypi/+provenance/{sha256(plain)}/{plain_name}"
    assert server.get(plain_url)[0] == 404


def test_a_promoted_copy_keeps_its_provenance(server: LiveServer, tmp_path: Path) -> None:
    """Promotion copies the file's row: its attestations describe the same bytes and go along."""
    filename, data = make_wheel("promoted-attested", "1.0")
    sent = attestation(filename, sha256(data))
    result = twine_with_attestations(server, "alice/dev", tmp_path, (filename, data), sent)
    assert result.returncode == 0, result.stdout + result.stderr
    status, body, _ = api(server, "PUT", "/alice/prod", {}, auth=ALICE)
    assert status == 201, body
    request = {"name": "promoted-attested", "version": "1.0", "target": "alice/prod"}
    status, body, reason = api(server, "POST", "/alice/dev/+promote", request, auth=ALICE)
    assert status == 200, (reason, body)
    (entry,) = simple_json(server, "alice/prod", "promoted-attested")["files"]
    assert entry["provenance"] == f"/alice/prod/+provenance/{sha256(data)}/{filename}"
    status, _headers, answer, _ = server.get(entry["provenance"])
    assert status == 200, answer
    assert json.loads(answer)["attestation_bundles"][0]["attestations"] == [sent]


def test_uv_publish_uploads_attestations(server: LiveServer, tmp_path: Path) -> None:
    """uv publish sends a `.publish.attestation` that is among the files it is given (its
    default `dist/*` includes them): served back."""
    assert UV is not None, "uv is missing from the venv: make test installs it"
    filename, data = make_wheel("uv-attested", "1.0")
    sent = attestation(filename, sha256(data))
    path = write_dist(tmp_path, filename, data)
    attestation_path = Path(f"{path}.publish.attestation")
    attestation_path.write_text(json.dumps(sent))
    result = subprocess.run(
        [UV, "publish", "--publish-url", f"{server.url}/alice/dev/", "--username", ALICE[0],
         "--password", ALICE[1], "--trusted-publishing", "never", "--no-progress", str(path),
         str(attestation_path)],
        env=clean_env(UV_CACHE_DIR=str(tmp_path / "uv-cache")),
        capture_output=True, text=True, timeout=UV_TIMEOUT_SECONDS, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (entry,) = simple_json(server, "alice/dev", "uv-attested")["files"]
    status, _headers, answer, _ = server.get(entry["provenance"])
    assert status == 200, answer
    assert json.loads(answer)["attestation_bundles"][0]["attestations"] == [sent]
