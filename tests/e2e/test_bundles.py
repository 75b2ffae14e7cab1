"""Air-gapped sites (issue #20): a connected pyshelf exports a bundle, a second one with no
upstream imports it while it serves, and pip and uv install from it with --require-hashes;
damaged, tampered and replayed bundles are refused and leave the server as it was."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from app.core.config import Settings
from app.ops import bundle_import
from tests.builders import make_sdist, make_wheel
from tests.conftest import ADMIN_PASSWORD, LiveServer, basic_auth, clean_env, run_pip
from tests.e2e.helpers import cli, publish, simple_json
from tests.e2e.test_mirror import file_entry, page, pip_install, start_mirror, wheel_metadata
from tests.e2e.test_mirror_metadata import UV
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.e2e

ADMIN = {"Authorization": basic_auth("admin", ADMIN_PASSWORD)}
OFFLINE = "root/offline"
PROJECTS = ("air-app", "air-lib", "air-base")
UPLOAD_TIME = "2026-01-02T03:04:05.000000Z"


def add_wheel(
    upstream: FakeUpstream, name: str, version: str, *, with_metadata: bool = True, **options: Any
) -> tuple[str, bytes]:
    """A wheel published upstream with a PEP 700 upload time (and a PEP 658 sidecar)."""
    filename, data = make_wheel(name, version, **options)
    metadata = wheel_metadata(data) if with_metadata else None
    upstream.add_file(name, filename, data, metadata=metadata, upload_time=UPLOAD_TIME)
    return filename, data


def fill_upstream(upstream: FakeUpstream) -> dict[str, tuple[str, bytes]]:
    """A two-level tree: air-app needs air-lib, which needs air-base (no PEP 658 upstream)."""
    return {
        "air-app": add_wheel(upstream, "air-app", "1.0", requires_dist=["air-lib>=1"]),
        "air-lib": add_wheel(upstream, "air-lib", "1.0", requires_dist=["air-base"]),
        "air-base": add_wheel(upstream, "air-base", "1.0", with_metadata=False),
    }


def connected(server_factory, upstream: FakeUpstream, tmp_path: Path) -> LiveServer:
    """The connected server, with the tree cached by one pip install through it."""
    server = start_mirror(server_factory, upstream)
    pip_install(server, "root/pypi", tmp_path / "warm", "air-app")
    return server


def cache_later(server: LiveServer, upstream: FakeUpstream, tmp_path: Path) -> tuple[str, bytes]:
    """Publish air-lib 1.1 upstream after the first export and cache it on the server."""
    wheel = add_wheel(upstream, "air-lib", "1.1", requires_dist=["air-base"])
    assert cli(server.data_dir, "refresh", "root/pypi", "air-lib").returncode == 0
    pip_install(server, "root/pypi", tmp_path / "warm2", "air-lib==1.1")
    return wheel


def export(server: LiveServer, target: Path, *projects: str) -> str:
    """`bundle export` on the server's data dir; returns its output."""
    args = [arg for project in projects for arg in ("--project", project)]
    result = cli(server.data_dir, "bundle", "export", "-o", str(target), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def import_(server: LiveServer, bundle: Path) -> subprocess.CompletedProcess[str]:
    """`bundle import --into root/offline` on the (running) server's data dir."""
    return cli(server.data_dir, "bundle", "import", str(bundle), "--into", OFFLINE)


def offline_state(server: LiveServer) -> dict[str, object]:
    """What clients see of the offline mirror: each project's JSON page (or its status)."""
    state: dict[str, object] = {}
    for project in PROJECTS:
        status, _headers, document = page(server, OFFLINE, project)
        state[project] = document if status == 200 else status
    return state


def repack(source: Path, target: Path, old: str, new: str) -> None:
    """Write `source` again with sha256 `old` replaced by `new` in the manifest and names."""
    with tarfile.open(source) as archive, tarfile.open(target, "w") as out:
        for member in archive.getmembers():
            data = archive.extractfile(member).read()
            if member.name.endswith("manifest.json"):
                data = data.replace(old.encode(), new.encode())
            member.name, member.size = member.name.replace(old, new), len(data)
            out.addfile(member, io.BytesIO(data))


def requirements_with_hashes(files: dict[str, tuple[str, bytes]], path: Path) -> Path:
    lines = [
        f"{name}==1.0 --hash=sha256:{hashlib.sha256(data).hexdigest()}"
        for name, (_filename, data) in files.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_bundle_carries_a_tree_to_a_server_without_upstream_that_pip_and_uv_install(
    server_factory, fake_upstream, tmp_path
):
    """Export on the connected server, import into a running server that has no upstream, then
    real pip and uv install the whole tree from it with --require-hashes; nothing reaches the
    upstream, a re-import changes nothing, and the web page names the bundle."""
    assert UV is not None, "uv is missing from the venv: make test installs it"
    files = fill_upstream(fake_upstream)
    # Nothing cached yet: export resolves air-app's tree (air-base's dependency metadata only
    # from its wheel: the upstream has no PEP 658 sidecar for it) and fetches it first.
    source = start_mirror(server_factory, fake_upstream)
    bundle = tmp_path / "site.tar"
    wanted = tmp_path / "wanted.txt"
    wanted.write_text("air-app==1.0\n")
    result = cli(source.data_dir, "bundle", "export", "-o", str(bundle), "-r", str(wanted))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "3 files" in out, out
    bundle_id = re.search(r"bundle ([0-9a-f]{32})", out).group(1)
    fake_upstream.reset_counts()

    offline = server_factory()  # its root/pypi points at a port where nothing listens
    assert page(offline, OFFLINE, "air-app")[0] == 404
    result = import_(offline, bundle)  # while it serves
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 projects imported (3 files)" in result.stdout

    for name, (filename, data) in files.items():
        status, _headers, document = page(offline, OFFLINE, name)
        assert status == 200
        entry = file_entry(document, filename)
        assert entry["hashes"] == {"sha256": hashlib.sha256(data).hexdigest()}  # upstream's
        assert entry["size"] == len(data)
        assert entry["upload-time"] == UPLOAD_TIME
        # Every wheel's sidecar, air-base's too (read from the wheel: upstream had none).
        metadata = entry["core-metadata"]["sha256"]
        status, _h, served, _r = offline.get(entry["url"] + ".metadata")
        assert (status, hashlib.sha256(served).hexdigest()) == (200, metadata)

    requirements = requirements_with_hashes(files, tmp_path / "requirements.txt")
    index_url = f"{offline.url}/{OFFLINE}/+simple/"
    result = run_pip(
        "install", "--target", str(tmp_path / "pip"), "--index-url", index_url,
        "--require-hashes", "-r", str(requirements),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "pip" / "air_base").is_dir()
    uv = [UV, "pip", "install", "--no-config", "--no-cache", "--python", sys.executable]
    uv += ["--target", str(tmp_path / "uv"), "--index-url", index_url]
    result = subprocess.run(
        [*uv, "--require-hashes", "-r", str(requirements)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "uv" / "air_base").is_dir()

    # Offline: an unknown name is a 404 that says so, and no network is tried.
    status, _headers, _body, reason = offline.get(f"/{OFFLINE}/+simple/not-here/")
    assert (status, reason) == (404, f"Project not-here is not in this offline mirror {OFFLINE}.")
    assert fake_upstream.count() == 0

    before = offline_state(offline)
    result = import_(offline, bundle)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 projects imported (0 files), 3 already imported" in result.stdout
    assert offline_state(offline) == before

    status, _headers, body, _reason = offline.get(f"/{OFFLINE}/", headers={"Accept": "text/html"})
    web = body.decode()
    assert status == 200
    assert 'id="offline"' in web
    row = next(line for line in web.split("<tr") if ">air-base<" in line)
    assert f'from bundle <code title="{bundle_id}">{bundle_id[:12]}</code>' in row


def test_damaged_tampered_and_replayed_bundles_are_refused_and_change_nothing(
    server_factory, fake_upstream, tmp_path
):
    """A cut bundle, one byte changed in a file, a hash changed in the manifest, and an
    older bundle after a newer one: each refused with a reason, the server as it was."""
    files = fill_upstream(fake_upstream)
    source = connected(server_factory, fake_upstream, tmp_path)
    old = tmp_path / "old.tar"
    export(source, old, "air-lib==1.0")
    lib2 = cache_later(source, fake_upstream, tmp_path)
    new = tmp_path / "new.tar"
    export(source, new, "air-app", "air-lib", "air-base")

    offline = server_factory()
    raw = new.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(raw[: len(raw) // 2])
    flipped = tmp_path / "flipped.tar"
    data = files["air-app"][1]
    at = raw.index(data) + len(data) // 2
    flipped.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :])
    rehashed = tmp_path / "rehashed.tar"
    good = hashlib.sha256(data).hexdigest()
    bad = hashlib.sha256(b"other bytes").hexdigest()
    repack(new, rehashed, good, bad)  # a repacked bundle claiming other bytes for air-app

    empty = offline_state(offline)
    for bundle, reason in (
        (cut, "truncated"),
        (flipped, "does not match the sha256 its manifest lists"),
        (rehashed, "does not match the sha256 its manifest lists"),
    ):
        result = import_(offline, bundle)
        assert result.returncode == 1, result.stdout
        assert reason in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert offline_state(offline) == empty

    # The newer bundle, then the older one: a replay, refused, air-lib 1.1 stays listed.
    assert import_(offline, new).returncode == 0
    after_new = offline_state(offline)
    assert lib2[0] in {f["filename"] for f in after_new["air-lib"]["files"]}
    result = import_(offline, old)
    assert result.returncode == 1
    assert "bundle refused, nothing imported" in result.stderr
    assert "is a replay" in result.stderr
    assert offline_state(offline) == after_new


def test_a_newer_bundle_adds_versions_and_keeps_the_ones_installed_before(
    server_factory, fake_upstream, tmp_path
):
    """Old bundle (air-lib 1.0) then a newer one with only 1.1: both versions stay listed."""
    fill_upstream(fake_upstream)
    source = connected(server_factory, fake_upstream, tmp_path)
    old = tmp_path / "old.tar"
    export(source, old, "air-lib==1.0")
    lib2 = cache_later(source, fake_upstream, tmp_path)
    new = tmp_path / "new.tar"
    export(source, new, "air-lib==1.1")

    offline = server_factory()
    assert import_(offline, old).returncode == 0
    assert import_(offline, new).returncode == 0
    _status, _headers, document = page(offline, OFFLINE, "air-lib")
    assert {f["filename"] for f in document["files"]} == {
        "air_lib-1.0-py3-none-any.whl",
        lib2[0],
    }
    pip_install(offline, OFFLINE, tmp_path / "both", "--no-deps", "air-lib==1.0")


def test_an_interrupted_import_resumes_and_reuses_the_blobs_it_stored(
    server_factory, fake_upstream, tmp_path, monkeypatch
):
    """An import that fails after its first project leaves that project whole and the others
    invisible; the next import finishes, storing no blob twice."""
    fill_upstream(fake_upstream)
    source = connected(server_factory, fake_upstream, tmp_path)
    bundle = tmp_path / "site.tar"
    export(source, bundle, *PROJECTS)
    offline = server_factory()

    real = bundle_import.import_project
    calls = []

    def failing(*args, **kwargs):
        if calls:
            raise RuntimeError("killed")  # as a kill after the first project's commit
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(bundle_import, "import_project", failing)
    url = clean_env(DATA_DIR=str(offline.data_dir)).get("DATABASE_URL", "")
    settings = Settings(data_dir=offline.data_dir, database_url=url)
    with pytest.raises(RuntimeError):
        bundle_import.import_bundle(settings, bundle, into=OFFLINE, progress=False)
    state = offline_state(offline)
    assert sum(isinstance(value, dict) for value in state.values()) == 1
    assert sorted(v for v in state.values() if not isinstance(v, dict)) == [404, 404]
    monkeypatch.setattr(bundle_import, "import_project", real)

    result = import_(offline, bundle)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 projects imported (2 files), 1 already imported" in result.stdout
    assert all(isinstance(value, dict) for value in offline_state(offline).values())
    with tarfile.open(bundle) as archive:
        manifest = json.load(archive.extractfile("pyshelf-bundle/manifest.json"))
    assert len(manifest["blobs"]) == 6  # three wheels, three sidecars


def test_an_offline_mirror_answers_404_and_never_asks_its_upstream(
    server_factory, fake_upstream, tmp_path
):
    """offline=true on a mirror (JSON API): what it cached is served, an unknown project and a
    listed file it never cached are 404 "not in this offline mirror", with zero upstream
    requests; turned online again it fetches."""
    fill_upstream(fake_upstream)
    sdist = make_sdist("air-app", "1.0")  # listed, never downloaded (pip takes the wheel)
    fake_upstream.add_file("air-app", *sdist)
    extra = add_wheel(fake_upstream, "air-extra", "1.0")
    server = connected(server_factory, fake_upstream, tmp_path)
    status, _json, body = _patch(server, {"offline": True})
    assert status == 200, body
    fake_upstream.reset_counts()

    pip_install(server, "root/pypi", tmp_path / "offline", "air-app")  # cached: still served
    status, _headers, _body, reason = server.get("/root/pypi/+simple/air-extra/")
    assert (status, reason) == (404, "Project air-extra is not in this offline mirror root/pypi.")
    _status, _headers, document = page(server, "root/pypi", "air-app")
    status, _headers, _body, reason = server.get(file_entry(document, sdist[0])["url"])
    assert (status, reason) == (404, f"{sdist[0]} is not in this offline mirror root/pypi.")
    assert fake_upstream.count() == 0

    # A new mirror needs an upstream URL unless it is offline (JSON API, as devpi-client).
    for path, config, expected in (
        ("/root/airgap", {"type": "mirror", "offline": True}, 201),
        ("/root/nowhere", {"type": "mirror"}, 400),
    ):
        status, _headers, body, reason = server.get(
            path,
            headers={**ADMIN, "Content-Type": "application/json"},
            method="PUT",
            data=json.dumps(config).encode(),
        )
        assert status == expected, body
    assert "or offline=true" in reason
    status, _headers, _body, reason = server.get("/root/airgap/+simple/air-app/")
    assert (status, reason) == (404, "Project air-app is not in this offline mirror root/airgap.")
    assert fake_upstream.count() == 0

    status, _json, _body = _patch(server, {"offline": False})
    assert status == 200
    assert page(server, "root/pypi", "air-extra")[0] == 200
    assert extra[0] in {f["filename"] for f in page(server, "root/pypi", "air-extra")[2]["files"]}
    assert fake_upstream.count() > 0


def _patch(server: LiveServer, changes: dict[str, object]) -> tuple[int, object, bytes]:
    """PATCH root/pypi's settings as the admin (the JSON API)."""
    status, _headers, body, _reason = server.get(
        "/root/pypi",
        headers={**ADMIN, "Content-Type": "application/json", "Accept": "application/json"},
        method="PATCH",
        data=json.dumps(changes).encode(),
    )
    return status, None, body


def upload_docs(server: LiveServer, index: str, name: str, version: str) -> bytes:
    """devpi-client's doc_upload of a one-page zip as the admin; returns the zip."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.html", f"<!DOCTYPE html><title>{name}</title><p>{name} docs")
    data = buffer.getvalue()
    boundary = "bundle-docs"
    fields = ((":action", "doc_upload"), ("name", name), ("version", version))
    body = (
        "".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
            for k, v in fields
        ).encode()
        + f'--{boundary}\r\nContent-Disposition: form-data; name="content"; '
        f'filename="{name}.zip"\r\n\r\n'.encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, _headers, answer, reason = server.get(
        f"/{index}/",
        headers={**ADMIN, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        method="POST",
        data=body,
    )
    assert status == 200, (reason, answer)
    return data


def test_a_stage_bundle_carries_its_releases_and_docs(server_factory, tmp_path):
    """`bundle export --index admin/dev` on one server, import on another: the release is
    listed with the same hashes and sidecar, pip installs it, its docs are served; a second
    import changes nothing."""
    source = server_factory()
    wheel = make_wheel("stage-pkg", "1.0")
    publish(source, "admin/dev", tmp_path / "dist", wheel)
    upload_docs(source, "admin/dev", "stage-pkg", "1.0")
    bundle = tmp_path / "stage.tar"
    result = cli(source.data_dir, "bundle", "export", "-o", str(bundle), "--index", "admin/dev")
    assert result.returncode == 0, result.stdout + result.stderr
    expected = simple_json(source, "admin/dev", "stage-pkg")

    target = server_factory()
    assert page(target, "admin/dev", "stage-pkg")[0] != 200  # 502: its base root/pypi fails
    result = cli(target.data_dir, "bundle", "import", str(bundle))
    assert result.returncode == 0, result.stdout + result.stderr
    document = simple_json(target, "admin/dev", "stage-pkg")
    for key in ("hashes", "size", "upload-time", "core-metadata", "filename"):
        assert file_entry(document, wheel[0])[key] == file_entry(expected, wheel[0])[key]
    pip_install(target, "admin/dev", tmp_path / "installed", "--no-deps", "stage-pkg==1.0")
    status, _headers, body, _reason = target.get("/admin/dev/stage-pkg/1.0/+doc/index.html")
    assert status == 200
    assert b"stage-pkg docs" in body

    result = cli(target.data_dir, "bundle", "import", str(bundle))
    assert "0 projects imported (0 files), 1 already imported" in result.stdout
    assert simple_json(target, "admin/dev", "stage-pkg") == document
