"""Operations on the live server through entrypoint.sh: backup under load and restore, verify,
the cache cap, prefetch, /+status on a read-only volume, /+metrics across workers, JSON logs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.blobs import StoredBlob, data_dir_blob
from tests.builders import make_wheel, write_dist
from tests.conftest import ADMIN_PASSWORD, LiveServer, basic_auth, run_pip
from tests.e2e.helpers import (
    api,
    cli,
    multipart,
    raw_upload,
    sha256,
    simple_json,
    twine_upload,
)
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.e2e

StartServer = Callable[..., LiveServer]
ADMIN = {"Authorization": basic_auth("admin", ADMIN_PASSWORD)}
FAST_UPSTREAM = {
    "UPSTREAM_CONNECT_TIMEOUT": "2",
    "UPSTREAM_READ_TIMEOUT": "3",
    "UPSTREAM_RETRIES": "0",
}
LOAD_UPLOADS = 9  # twine uploads racing the backup, three at a time
WAIT_SECONDS = 20


def wait_for(condition: Callable[[], bool], seconds: float = WAIT_SECONDS) -> bool:
    """Poll `condition` every 50 ms for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def wheel_metadata(data: bytes) -> bytes:
    """A wheel's METADATA (its PEP 658 sidecar)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(name)


def publish_upstream(
    upstream: FakeUpstream, name: str, version: str = "1.0", payload_bytes: int = 2000, **kw: Any
) -> tuple[str, bytes]:
    """A wheel of `payload_bytes` random bytes on the fake upstream, with its sidecar."""
    files = {f"{name.replace('-', '_')}/payload.bin": os.urandom(payload_bytes)}
    filename, data = make_wheel(name, version, files=files, **kw)
    upstream.add_file(name, filename, data, metadata=wheel_metadata(data))
    return filename, data


def blob(data_dir: Path, digest: str) -> StoredBlob:
    """The stored blob of a sha256 (a file under DATA_DIR/blobs, or an S3 object)."""
    return data_dir_blob(data_dir, digest)


def fetch(server: LiveServer, path: str, headers: dict[str, str] | None = None) -> bytes:
    """GET to the end; asserts 200."""
    status, _headers, body, reason = server.get(path, headers=headers)
    assert status == 200, (status, reason)
    return body


def mirror_path(server: LiveServer, project: str, filename: str) -> str:
    """The +f path root/pypi gives a file."""
    entry = next(
        f for f in simple_json(server, "root/pypi", project)["files"] if f["filename"] == filename
    )
    return entry["url"]


def upload_docs(server: LiveServer, name: str, version: str, html: str) -> None:
    """:action=doc_upload as devpi-client sends it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.html", html)
    fields = [(":action", "doc_upload"), ("name", name), ("version", version)]
    body, content_type = multipart(fields, f"{name}-{version}.doc.zip", buffer.getvalue())
    status, _h, _b, reason = server.get(
        "/admin/dev/", headers={**ADMIN, "Content-Type": content_type}, method="POST", data=body
    )
    assert status == 200, reason


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value in a Prometheus text exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        sample, _, label_text = key.partition("{")
        if sample != name:
            continue
        found = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if found == wanted:
            return float(value)
    return 0.0


# --- backup under load, restore, install -------------------------------------------------------


def test_a_backup_under_concurrent_uploads_restores_into_a_server_that_installs(
    server_factory: StartServer, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Issue item 3: every upload finished before the backup started is restored with its blob;
    the restored server (its upstream gone) installs a private package and its mirrored
    dependency, and knows the users, tokens and docs."""
    publish_upstream(fake_upstream, "public-dep")
    server = server_factory(MIRROR_URL=fake_upstream.url, **FAST_UPSTREAM)
    dist_dir = tmp_path / "dist"
    app_name, app_bytes = make_wheel("private-app", "1.0", requires_dist=["public-dep"])
    dist_dir.mkdir()
    published = twine_upload(server, "admin/dev", [write_dist(dist_dir, app_name, app_bytes)])
    assert published.returncode == 0, published.stdout + published.stderr
    upload_docs(server, "private-app", "1.0", "<h1>Private app docs</h1>")
    status, body, _reason = api(server, "POST", "/admin/+tokens", {"description": "ci"})
    assert status in (200, 201), body
    token = body["result"]["token"]
    warmed = run_pip(  # caches the dependency (and its metadata) as pip asks for them
        "download", "-d", str(tmp_path / "warm"), "-i", f"{server.url}/admin/dev/+simple/",
        "private-app",
    )  # fmt: skip
    assert warmed.returncode == 0, warmed.stdout + warmed.stderr

    paths = [write_dist(dist_dir, *make_wheel(f"load-{n}", "1.0")) for n in range(LOAD_UPLOADS)]
    finished: dict[str, float] = {}

    def upload_one(path: Path) -> None:
        result = twine_upload(server, "admin/dev", [path])
        assert result.returncode == 0, result.stdout + result.stderr
        finished[path.name] = time.monotonic()

    archive = tmp_path / "backups" / "pyshelf.tar"
    archive.parent.mkdir()
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(upload_one, path) for path in paths]
        assert wait_for(lambda: len(finished) >= 3, 60)
        backup_started = time.monotonic()
        result = cli(server.data_dir, "backup", str(archive), "-v")
        for future in futures:
            future.result()

    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(
        r"backup: .*pyshelf\.tar: (sqlite|postgresql) database and \d+ files", result.stdout
    )
    assert "backup: 100%" in result.stderr  # -v and no terminal: plain progress lines
    before = {name for name, at in finished.items() if at < backup_started}
    assert len(before) >= 3
    assert len(before) < LOAD_UPLOADS  # the others were still going while the backup ran

    restored_dir = tmp_path / "restored"
    result = cli(restored_dir, "restore", str(archive))
    assert result.returncode == 0, result.stdout + result.stderr
    verified = cli(restored_dir, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr  # every row has its blob
    fake_upstream.stop()
    restored = server_factory(restored_dir, MIRROR_URL=fake_upstream.url, **FAST_UPSTREAM)

    for name in before:
        project = name.split("-")[0].replace("_", "-")  # load_3-1.0-py3-none-any.whl
        assert name in {f["filename"] for f in simple_json(restored, "admin/dev", project)["files"]}
    target = tmp_path / "site"
    installed = run_pip(
        "install", "--target", str(target), "-i", f"{restored.url}/admin/dev/+simple/",
        "private-app",
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (target / "private_app").is_dir()
    assert (target / "public_dep" / "payload.bin").is_file()
    assert b"Private app docs" in fetch(restored, "/admin/dev/private-app/1.0/+doc/index.html")
    status, _body, _reason = api(restored, "GET", "/admin", auth=("__token__", token))
    assert status == 200


# --- verify -----------------------------------------------------------------------------------


def test_verify_finds_a_corrupted_and_a_deleted_blob_and_repairs_only_the_cache(
    server_factory: StartServer, fake_upstream: FakeUpstream
) -> None:
    """Damage to uploads is reported (exit 1) and left alone; a damaged cached file is fetched
    again by --repair."""
    mirror_name, mirror_bytes = publish_upstream(fake_upstream, "cached-pkg")
    server = server_factory(MIRROR_URL=fake_upstream.url, **FAST_UPSTREAM)
    uploads = [make_wheel("kept-a", "1.0"), make_wheel("kept-b", "1.0")]
    for filename, data in uploads:
        status, _h, _b, reason = raw_upload(server, "admin/dev", filename, data)
        assert status == 200, reason
    fetch(server, mirror_path(server, "cached-pkg", mirror_name))
    assert cli(server.data_dir, "verify").returncode == 0

    corrupted = blob(server.data_dir, sha256(uploads[0][1]))
    corrupted.write_bytes(b"bit rot")
    blob(server.data_dir, sha256(uploads[1][1])).unlink()
    blob(server.data_dir, sha256(mirror_bytes)).write_bytes(b"stale")

    result = cli(server.data_dir, "verify")

    assert result.returncode == 1
    assert "hash mismatches: 2" in result.stdout
    assert "missing blobs: 1" in result.stdout
    assert "kept_a-1.0-py3-none-any.whl" in result.stdout
    assert "kept_b-1.0-py3-none-any.whl" in result.stdout
    assert "damage found" in result.stderr

    repaired = cli(server.data_dir, "verify", "--repair")

    assert repaired.returncode == 1  # the uploads are still damaged: only a backup helps
    assert "fetched again from the upstream" in repaired.stdout
    assert blob(server.data_dir, sha256(mirror_bytes)).read_bytes() == mirror_bytes
    assert corrupted.read_bytes() == b"bit rot"


# --- the cache cap ----------------------------------------------------------------------------


def test_eviction_keeps_the_mirror_cache_under_the_cap_without_touching_uploads(
    server_factory: StartServer, fake_upstream: FakeUpstream
) -> None:
    """MIRROR_CACHE_MAX_SIZE over two workers: after every download the cache fits; the
    upload (bigger than the cap itself) stays; an evicted file is fetched again on demand."""
    wheels = [publish_upstream(fake_upstream, f"big-{n}", payload_bytes=60_000) for n in range(6)]
    cap = int(len(wheels[0][1]) * 3.5)
    server = server_factory(
        MIRROR_URL=fake_upstream.url, MIRROR_CACHE_MAX_SIZE=str(cap), **FAST_UPSTREAM
    )
    own_name, own = make_wheel("own-big", "1.0", files={"own_big/x.bin": os.urandom(300_000)})
    assert raw_upload(server, "admin/dev", own_name, own)[0] == 200
    cached = {sha256(data) for _name, data in wheels}

    def cache_bytes() -> int:
        return sum(
            blob(server.data_dir, key).size()
            for key in cached
            if blob(server.data_dir, key).exists()
        )

    for n, (name, data) in enumerate(wheels):
        assert fetch(server, mirror_path(server, f"big-{n}", name)) == data
        assert wait_for(lambda: cache_bytes() <= cap, 5), cache_bytes()
    assert blob(server.data_dir, sha256(own)).read_bytes() == own
    assert not blob(server.data_dir, sha256(wheels[0][1])).exists()  # the least recent went
    assert fetch(server, mirror_path(server, "big-0", wheels[0][0])) == wheels[0][1]

    stats = cli(server.data_dir, "cache", "stats", "--json", MIRROR_CACHE_MAX_SIZE=str(cap))
    assert stats.returncode == 0, stats.stderr
    document = json.loads(stats.stdout)
    assert document["total_bytes"] <= cap
    assert document["max_bytes"] == cap
    assert document["misses"] == 7
    pruned = cli(server.data_dir, "cache", "prune", "--max-size", str(len(wheels[0][1]) + 100))
    assert pruned.returncode == 0, pruned.stderr
    assert cache_bytes() <= len(wheels[0][1]) + 100
    assert blob(server.data_dir, sha256(own)).exists()


# --- prefetch ---------------------------------------------------------------------------------


def test_prefetch_fills_the_cache_so_pip_works_with_the_upstream_gone(
    server_factory: StartServer, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """`prefetch -r requirements.txt` next to a running server; then the upstream goes away."""
    linux = publish_upstream(fake_upstream, "native", "2.0", platform_tag="manylinux_2_17_x86_64")
    mac = publish_upstream(fake_upstream, "native", "2.0", platform_tag="macosx_11_0_arm64")
    publish_upstream(fake_upstream, "native", "1.0")
    plain = [publish_upstream(fake_upstream, "plain", v) for v in ("1.0", "1.1")]
    server = server_factory(MIRROR_URL=fake_upstream.url, **FAST_UPSTREAM)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("native==2.0\nplain  # latest\n")

    platforms = "manylinux_2_17_x86_64,macosx_11_0_arm64"  # this Python on both
    result = cli(server.data_dir, "prefetch", "-r", str(requirements), "--platform", platforms)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "native 2.0" in result.stdout
    assert "plain 1.1" in result.stdout
    for _name, data in (linux, mac, plain[1]):
        assert blob(server.data_dir, sha256(data)).exists()
    fake_upstream.stop()
    downloaded = run_pip(
        "download", "--no-deps", "-d", str(tmp_path / "dl"),
        "-i", f"{server.url}/root/pypi/+simple/", "plain",
    )  # fmt: skip
    assert downloaded.returncode == 0, downloaded.stdout + downloaded.stderr
    assert (tmp_path / "dl" / plain[1][0]).is_file()


# --- /+status ---------------------------------------------------------------------------------


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Make `directory` read-only under a running process: a read-only bind mount as root
    (root writes through mode bits), else chmod; skips when neither is possible."""
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "--bind", str(directory), str(directory)],
                                 capture_output=True, check=False)  # fmt: skip
        if mounted.returncode != 0:
            pytest.skip(f"cannot bind-mount as root here: {mounted.stderr!r}")
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True)
            yield
        finally:
            subprocess.run(["umount", "-l", str(directory)], check=False)
        return
    mode = directory.stat().st_mode
    directory.chmod(0o555)
    try:
        yield
    finally:
        directory.chmod(mode)


def test_status_turns_503_when_the_data_directory_becomes_read_only(
    server_factory: StartServer,
) -> None:
    """And the Docker HEALTHCHECK (`entrypoint.sh healthcheck`) fails with it."""
    server = server_factory()
    env = {"PORT": str(server.port), "HOST": "127.0.0.1"}
    status, _h, body, _r = server.get("/+status")
    assert status == 200
    assert json.loads(body)["checks"]["data_dir"] == {"ok": True}
    assert cli(server.data_dir, "healthcheck", **env).returncode == 0

    with read_only(server.data_dir):
        status, _h, body, reason = server.get("/+status")
        healthcheck = cli(server.data_dir, "healthcheck", **env)

    assert (status, reason) == (503, "SERVICE UNAVAILABLE")
    report = json.loads(body)
    assert report["status"] == "unhealthy"
    assert report["checks"]["data_dir"]["ok"] is False
    assert healthcheck.returncode == 1
    assert server.get("/+status")[0] == 200  # writable again: healthy again


# --- /+metrics --------------------------------------------------------------------------------


def test_metrics_count_a_cold_and_a_warm_download_across_workers_and_logs_are_json(
    server_factory: StartServer, fake_upstream: FakeUpstream
) -> None:
    """Multiprocess mode: whichever worker answers a scrape, the numbers are the sum."""
    name, data = publish_upstream(fake_upstream, "metered", payload_bytes=50_000)
    server = server_factory(
        MIRROR_URL=fake_upstream.url, LOG_FORMAT="json", METRICS_TOKEN="prom-token", **FAST_UPSTREAM
    )
    path = mirror_path(server, "metered", name)

    fetch(server, path)  # cold
    fetch(server, path)  # warm

    prometheus = {"Authorization": "Bearer prom-token"}
    # A request is counted when its worker closes it, which may be just after the client has
    # the last byte (the first download then indexes its project for search): wait, bounded.
    deadline = time.monotonic() + 10
    while True:
        text = fetch(server, "/+metrics", prometheus).decode()
        counted = metric(text, "pyshelf_http_requests_total", kind="file", status="200")
        if counted == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    scrapes = [fetch(server, "/+metrics", prometheus).decode() for _ in range(4)]  # both workers
    for text in scrapes:
        assert metric(text, "pyshelf_mirror_cache_misses_total") == 1
        assert metric(text, "pyshelf_mirror_cache_hits_total") == 1
        assert metric(text, "pyshelf_upstream_fetched_bytes_total") == len(data)
        assert metric(text, "pyshelf_mirror_cache_served_bytes_total") == len(data)
        assert metric(text, "pyshelf_http_requests_total", kind="file", status="200") == 2
        assert metric(text, "pyshelf_http_request_duration_seconds_count", kind="file") == 2
        # the wheel and the METADATA the mirror extracted from it (its PEP 658 sidecar)
        mirrored = len(data) + len(wheel_metadata(data))
        assert metric(text, "pyshelf_blob_store_bytes", kind="mirror") == mirrored
    assert len(server.worker_pids()) == 2

    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["logger"] == "pyshelf.request"]
    downloads = [line for line in requests if line["path"] == path]
    assert len(downloads) == 2
    assert all(line["status"] == 200 and line["bytes"] == len(data) for line in downloads)
    assert len({line["request_id"] for line in requests}) == len(requests)
    assert any(line["logger"] == "gunicorn.error" for line in lines)  # gunicorn's own, as JSON
