"""Faults while serving: killed workers, a killed server, a killed backup, a full disk, a busy
database. After each, the server serves, `verify` finds no damage, no half file is listed,
and the client that was cut off got an error, never a short file.

FAULT_ROUNDS (1 in `make test`) repeats the kill tests; figures go to test-output.
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, LiveServer, clean_env, http_request
from tests.e2e.helpers import MIME_JSON, raw_upload
from tests.robustness.support import (
    ADMIN_AUTH,
    FAULT_ROUNDS,
    SlowUpload,
    assert_verify_clean,
    cli,
    download,
    listed_files,
    record_figures,
    seed,
    tmpfs,
    upload_body,
    wait_for_workers,
    wheel,
    worker_serving,
)

pytestmark = pytest.mark.e2e
STAGE = "admin/dev"
FAULTS: collections.Counter[str] = collections.Counter()  # injected
SURVIVED: collections.Counter[str] = collections.Counter()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("round_", range(FAULT_ROUNDS))
def test_worker_killed_mid_upload_leaves_nothing_half_stored(
    server_factory: Any, round_: int
) -> None:
    server: LiveServer = server_factory()
    seed(server, STAGE, "cut-upload")
    workers = len(server.worker_pids())
    filename, content = wheel("cut-upload", f"1.{round_}", payload_bytes=2 << 20)
    upload = SlowUpload(server, STAGE, filename, content)
    upload.send_part(0.5)
    pid = worker_serving(server, upload.local_port)
    FAULTS["worker killed mid-upload"] += 1
    os.kill(pid, signal.SIGKILL)
    status, raw = upload.finish()
    assert status is None or status >= 400, raw[:300]  # cut off: an error, never a 200
    wait_for_workers(server, workers)
    assert filename not in listed_files(server, STAGE, "cut-upload")
    assert_verify_clean(server.data_dir)
    # the same upload again goes through, and the stored bytes are the uploaded ones
    status, _, body, reason = raw_upload(server, STAGE, filename, content)
    assert (status, reason) == (200, "OK"), body
    assert _sha(download(server, STAGE, "cut-upload", filename)) == _sha(content)
    SURVIVED["worker killed mid-upload"] += 1


@pytest.mark.parametrize("round_", range(FAULT_ROUNDS))
def test_worker_killed_mid_mirror_download_gives_the_client_an_error(
    server_factory: Any, fake_upstream: Any, round_: int
) -> None:
    filename, content = wheel("slow-mirror", f"2.{round_}", payload_bytes=1 << 20)
    fake_upstream.add_file("slow-mirror", filename, content)
    server: LiveServer = server_factory(MIRROR_URL=fake_upstream.url)
    workers = len(server.worker_pids())
    status, _, body, _ = server.get("/root/pypi/+simple/slow-mirror/", {"Accept": "text/html"})
    assert status == 200, body[:300]
    fake_upstream.throttle_bytes_per_second = 256 << 10  # 4 s for the whole file
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", _file_path(server, "root/pypi", "slow-mirror", filename))
    time.sleep(1.0)  # the worker is fetching the file from upstream (or streaming it)
    pid = worker_serving(server, connection.sock.getsockname()[1])
    FAULTS["worker killed mid-mirror-download"] += 1
    os.kill(pid, signal.SIGKILL)
    try:
        response = connection.getresponse()
        outcome: object = (response.status, response.read())
    except (http.client.HTTPException, ConnectionError) as exc:
        outcome = exc  # RemoteDisconnected before the headers, IncompleteRead after them
    assert not isinstance(outcome, tuple), f"the cut-off client got {outcome[0]}, not an error"
    connection.close()
    fake_upstream.throttle_bytes_per_second = None
    wait_for_workers(server, workers)
    assert_verify_clean(server.data_dir)
    assert _sha(download(server, "root/pypi", "slow-mirror", filename)) == _sha(content)
    assert_verify_clean(server.data_dir)
    SURVIVED["worker killed mid-mirror-download"] += 1


def _file_path(server: LiveServer, index: str, project: str, filename: str) -> str:
    import json

    status, _, body, _ = server.get(
        f"/{index}/+simple/{project}/", {"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    assert status == 200, body[:300]
    url = next(f["url"] for f in json.loads(body)["files"] if f["filename"] == filename)
    return "/" + url.split("/", 3)[3] if url.startswith("http") else url


def test_killed_backup_leaves_no_archive_and_the_next_one_works(
    server_factory: Any, tmp_path: Path
) -> None:
    server: LiveServer = server_factory()
    uploaded = seed(server, STAGE, "backup-load")
    for number in range(6):
        filename, content = wheel("backup-load", f"3.{number}", payload_bytes=4 << 20)
        status, _, body, _ = raw_upload(server, STAGE, filename, content)
        assert status == 200, body
        uploaded[filename] = _sha(content)
    target = tmp_path / "backups" / "pyshelf.tar"
    process = subprocess.Popen(
        [str(ROOT / "entrypoint.sh"), "backup", str(target)],
        cwd=ROOT,
        env=clean_env(DATA_DIR=str(server.data_dir), PYSHELF_PYTHON=sys.executable),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _backup_started(target.parent):
        time.sleep(0.01)
    FAULTS["backup killed"] += 1
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    assert not target.exists(), "a killed backup left an archive that looks finished"
    abandoned = [child for child in target.parent.iterdir() if child.is_dir()]
    assert abandoned, "the kill came before the backup wrote anything: the test proves nothing"
    # the server never noticed
    assert listed_files(server, STAGE, "backup-load") == uploaded
    assert_verify_clean(server.data_dir)
    result = cli(server.data_dir, "backup", str(target))
    assert result.returncode == 0, result.stdout + result.stderr
    assert target.is_file()
    # the killed backup's work folder held a copy of the database: the next backup removed it
    assert [child for child in target.parent.iterdir() if child.is_dir()] == []
    restored = tmp_path / "restored"
    result = cli(restored, "restore", str(target))
    assert result.returncode == 0, result.stdout + result.stderr
    assert_verify_clean(restored)
    SURVIVED["backup killed"] += 1


def _backup_started(folder: Path) -> bool:
    """The backup's work folder holds something already (the snapshot or the archive)."""
    return folder.is_dir() and any(
        child.is_dir() and any(child.iterdir()) for child in folder.iterdir()
    )


@pytest.mark.parametrize("round_", range(FAULT_ROUNDS))
def test_server_killed_during_uploads_restarts_on_the_same_data(
    server_factory: Any, round_: int
) -> None:
    server: LiveServer = server_factory()
    seed(server, STAGE, "killed-server")
    slow = []
    for number in range(3):
        filename, content = wheel("killed-server", f"4.{round_}.{number}", payload_bytes=1 << 20)
        upload = SlowUpload(server, STAGE, filename, content)
        upload.send_part(0.3)
        slow.append((filename, upload))
    results: list[tuple[str, str, int]] = []

    def upload_loop(worker: int) -> None:
        for number in range(20):
            filename, content = wheel("killed-server", f"5.{round_}.{worker}.{number}", 64 << 10)
            try:
                status, _, _, _ = raw_upload(server, STAGE, filename, content)
            except OSError:
                status = 0
            results.append((filename, _sha(content), status))
            if status != 200:
                return

    threads = [threading.Thread(target=upload_loop, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60  # kill once some uploads went through (a busy machine)
    while time.monotonic() < deadline and sum(r[2] == 200 for r in results) < 3:
        time.sleep(0.05)
    FAULTS["server killed during uploads"] += 1
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)
    for thread in threads:
        thread.join(timeout=60)
    for _, upload in slow:
        status, raw = upload.finish()
        assert status is None, raw[:300]  # nobody answered: the client knows it failed
    finished = {name: sha for name, sha, status in results if status == 200}
    assert finished, "no upload finished before the kill: the test proves nothing"
    server.start()
    listed = listed_files(server, STAGE, "killed-server")
    # every upload that was answered 200 is there, with its bytes; the cut ones are not
    for filename, sha in finished.items():
        assert listed.get(filename) == sha, filename
    for filename, _ in slow:
        assert filename not in listed
    unanswered = {name for name, _, status in results if status != 200}
    for filename in unanswered & set(listed):  # committed just before the kill: whole
        assert listed[filename] == next(sha for name, sha, _ in results if name == filename)
    assert_verify_clean(server.data_dir)
    SURVIVED["server killed during uploads"] += 1


@pytest.mark.parametrize("round_", range(FAULT_ROUNDS))
def test_full_disk_refuses_uploads_clearly_keeps_serving_and_recovers(
    server_factory: Any, tmp_path: Path, round_: int
) -> None:
    with tmpfs(tmp_path / "data", "24m") as data_dir:  # the server's log stays outside
        # /+status reports the disk unhealthy below STATUS_MIN_FREE_SPACE: 1 MiB here
        server: LiveServer = server_factory(data_dir, STATUS_MIN_FREE_SPACE="1M")
        seeded = seed(server, STAGE, "disk-full")
        kept_name, kept = wheel("disk-full", "6.0", payload_bytes=1 << 20)
        status, _, body, _ = raw_upload(server, STAGE, kept_name, kept)
        assert status == 200, body
        filler = data_dir / "filler"
        free = os.statvfs(data_dir).f_bavail * os.statvfs(data_dir).f_frsize
        filler.write_bytes(b"\0" * max(0, free - (512 << 10)))  # leave 512 KiB
        FAULTS["disk full"] += 1
        status, _, body, _ = server.get("/+status")
        assert status == 503, body  # the health check tells the operator
        assert json.loads(body)["checks"]["disk"]["ok"] is False
        refused = []
        for number in range(3):
            filename, content = wheel("disk-full", f"6.{number + 1}", payload_bytes=2 << 20)
            status, _, body, reason = raw_upload(server, STAGE, filename, content)
            refused.append((filename, status, reason))
            assert status in (503, 507), (status, reason, body[:300])
            assert "disk" in reason.lower() or "space" in reason.lower(), reason
            assert filename not in listed_files(server, STAGE, "disk-full")
        # reads go on: the page, the file, the web UI
        assert listed_files(server, STAGE, "disk-full") == {**seeded, kept_name: _sha(kept)}
        assert _sha(download(server, STAGE, "disk-full", kept_name)) == _sha(kept)
        status, _, _, _ = server.get("/admin/dev/disk-full/")
        assert status == 200
        filler.unlink()
        filename, content = refused[0][0], wheel("disk-full", "6.1", payload_bytes=2 << 20)[1]
        status, _, body, reason = raw_upload(server, STAGE, filename, content)
        assert (status, reason) == (200, "OK"), body
        assert _sha(download(server, STAGE, "disk-full", filename)) == _sha(content)
        assert_verify_clean(data_dir)
        server.stop()
    SURVIVED["disk full"] += 1


def _hold_write_lock(database: Path, seconds: float, ready: threading.Event) -> None:
    connection = sqlite3.connect(database, timeout=5, isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    ready.set()
    time.sleep(seconds)
    connection.execute("ROLLBACK")
    connection.close()


def test_a_short_database_lock_only_slows_uploads(server_factory: Any) -> None:
    server: LiveServer = server_factory()
    seeded = seed(server, STAGE, "busy-db")
    ready = threading.Event()
    holder = threading.Thread(
        target=_hold_write_lock, args=(server.data_dir / "pyshelf.sqlite3", 2.0, ready)
    )
    holder.start()
    assert ready.wait(10)
    FAULTS["database locked 2 s"] += 1
    filename, content = wheel("busy-db", "7.0")
    status, _, body, reason = raw_upload(server, STAGE, filename, content)
    holder.join()
    assert (status, reason) == (200, "OK"), body
    assert listed_files(server, STAGE, "busy-db") == {**seeded, filename: _sha(content)}
    SURVIVED["database locked 2 s"] += 1


def test_a_database_locked_past_the_busy_timeout_answers_503_with_retry_after(
    app: Any, admin_auth: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """In-process with a 0.5 s busy timeout (the server's is 30 s): a 503, never a 500."""
    import io

    from app import create_app
    from app.data import db

    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 500)
    settings = app.config["PYSHELF_SETTINGS"]
    impatient = create_app(settings)
    client = impatient.test_client()
    ready = threading.Event()
    holder = threading.Thread(
        target=_hold_write_lock, args=(settings.data_dir / "pyshelf.sqlite3", 1.5, ready)
    )
    holder.start()
    assert ready.wait(10)
    FAULTS["database locked past the busy timeout"] += 1
    filename, content = wheel("busy-db", "8.0")
    form = dict(_form_fields(filename, content))
    form["content"] = (io.BytesIO(content), filename)
    response = client.post(f"/{STAGE}/", data=form, headers=admin_auth)
    holder.join()
    assert response.status_code == 503, response.status
    assert response.headers["Retry-After"].isdigit()
    assert "busy" in response.status.lower()
    with sqlite3.connect(settings.data_dir / "pyshelf.sqlite3") as connection:
        rows = connection.execute("SELECT count(*) FROM files WHERE filename = ?", (filename,))
        assert rows.fetchone() == (0,)  # nothing stored
    form["content"] = (io.BytesIO(content), filename)
    response = client.post(f"/{STAGE}/", data=form, headers=admin_auth)
    assert response.status_code == 200, response.status
    SURVIVED["database locked past the busy timeout"] += 1


@pytest.mark.skipif(FAULT_ROUNDS < 2, reason="holds the lock 35 s: make test-robustness only")
def test_a_live_server_answers_503_when_the_database_stays_locked(server_factory: Any) -> None:
    """The real 30 s busy timeout (app/data/db.py), passed by a holder of 35 s; reads go on."""
    server: LiveServer = server_factory()
    seeded = seed(server, STAGE, "busy-live")
    ready = threading.Event()
    holder = threading.Thread(
        target=_hold_write_lock, args=(server.data_dir / "pyshelf.sqlite3", 35.0, ready)
    )
    holder.start()
    assert ready.wait(10)
    FAULTS["database locked 35 s"] += 1
    # WAL: readers never wait for a writer (a page cache that stores on read must not either)
    status, _, body, reason = http_request(
        f"{server.url}/{STAGE}/+simple/busy-live/", headers={"Accept": MIME_JSON}, timeout=60
    )
    assert (status, reason) == (200, "OK"), body[:300]
    filename, content = wheel("busy-live", "9.0")
    upload, content_type = upload_body(filename, content)
    status, headers, body, reason = http_request(
        f"{server.url}/{STAGE}/",
        headers={"Content-Type": content_type, "Authorization": ADMIN_AUTH},
        method="POST",
        data=upload,
        timeout=60,  # the server waits its 30 s busy timeout first
    )
    holder.join()
    assert status == 503, (status, reason, body[:300])
    assert headers["Retry-After"].isdigit()
    assert listed_files(server, STAGE, "busy-live") == seeded
    status, _, body, reason = raw_upload(server, STAGE, filename, content)
    assert (status, reason) == (200, "OK"), body
    assert_verify_clean(server.data_dir)
    SURVIVED["database locked 35 s"] += 1


def _form_fields(filename: str, content: bytes) -> list[tuple[str, str]]:
    from tests.e2e.helpers import upload_fields

    return upload_fields(filename, content)


def test_faults_injected_and_survived_are_recorded() -> None:
    """Write the counts (the last test in this file)."""
    injected, survived = sum(FAULTS.values()), sum(SURVIVED.values())
    record_figures(
        "faults",
        {
            "injected": injected,
            "survived": survived,
            "by_kind": {kind: [FAULTS[kind], SURVIVED[kind]] for kind in sorted(FAULTS)},
        },
    )
    assert survived == injected
