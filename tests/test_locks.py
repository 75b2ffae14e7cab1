"""Named locks (app/core/locks.py) and what relies on them: writers, migrations, mirror downloads.

Every test runs on the backend under test: flock() with SQLite, advisory locks with
PYSHELF_TEST_DATABASE=postgres. "Another replica" is played by a lock taken in this process
with no part file beside it, which is all a replica on another machine leaves visible.
"""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from app.core.config import Settings
from app.core.locks import Locks, _lock_engine, advisory_key
from app.ops.prepare import migrate
from tests import test_mirror
from tests.operations import sha256
from tests.test_migrations import TABLES, tables
from tests.test_mirror import download_stem, file_url, held_by_pypi, stored, the_mirror

# The mirror fixtures of tests/test_mirror.py, used here too.
clock = test_mirror.clock
mirror_settings = test_mirror.mirror_settings
mirror_app = test_mirror.mirror_app
mc = test_mirror.mc
demo = test_mirror.demo

ROOT = Path(__file__).resolve().parent.parent
WAIT_SECONDS = 10.0  # bound of every wait below


def wait_until(condition: Any, timeout_seconds: float = WAIT_SECONDS) -> bool:
    """Poll `condition` until it holds or the time is up."""
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def is_free(locks: Locks, name: str) -> bool:
    """Whether an exclusive lock on `name` could be taken now (it is released again)."""
    lock = locks.exclusive(name)
    try:
        return lock.try_acquire()
    finally:
        lock.close()


def test_an_exclusive_lock_keeps_out_others_until_it_is_closed(settings: Settings) -> None:
    locks = Locks.of(settings)
    first = locks.exclusive("file-x")
    assert first.try_acquire()
    try:
        assert not is_free(locks, "file-x")
        assert is_free(locks, "file-y")  # names are independent
        assert not locks.exclusive("file-x").acquire(0.2)
    finally:
        first.close()
    assert is_free(locks, "file-x")
    first.close()  # a second close is harmless


def test_shared_holders_coexist_and_keep_out_an_exclusive_one(settings: Settings) -> None:
    locks = Locks.of(settings)
    readers = [locks.shared("blobs"), locks.shared("blobs")]
    for reader in readers:
        assert reader.acquire(1.0)
    try:
        assert not is_free(locks, "blobs")
    finally:
        for reader in readers:
            reader.close()
    writer = locks.exclusive("blobs")
    assert writer.try_acquire()
    try:
        assert not locks.shared("blobs").try_acquire()
    finally:
        writer.close()


def test_a_lock_is_released_when_the_process_holding_it_dies(settings: Settings) -> None:
    """A killed worker (or replica) never leaves a download locked forever (kill -9)."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from app.core.locks import Locks\n"
        "lock = Locks(Path(sys.argv[1]), sys.argv[2]).exclusive('file-killed')\n"
        "assert lock.try_acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(settings.lock_dir), settings.database_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        locks = Locks.of(settings)
        assert not is_free(locks, "file-killed")
        holder.kill()
        holder.wait(timeout=10)
        assert wait_until(lambda: is_free(locks, "file-killed"))
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)


def test_advisory_keys_are_stable_and_distinct() -> None:
    """Every replica must derive the same key from a name (PostgreSQL advisory locks)."""
    assert advisory_key("write") == advisory_key("write")
    assert advisory_key("file-a") != advisory_key("file-b")
    assert -(2**63) <= advisory_key("schema") < 2**63


@pytest.mark.empty_database
def test_a_forked_process_gets_no_pooled_lock_connection_of_its_parent(tmp_path: Path) -> None:
    """gunicorn's master took the schema lock while preparing, then forks its workers: a pooled
    connection in both would be one database session used by two processes."""
    engine = _lock_engine(f"sqlite:///{tmp_path / 'locks.sqlite3'}")
    engine.connect().close()  # back into the pool, idle
    assert engine.pool.checkedin() == 1

    pid = os.fork()
    if pid == 0:  # the child: report by exit code only
        os._exit(engine.pool.checkedin())
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert engine.pool.checkedin() == 0  # the parent's, closed


def test_replicas_migrating_at_once_migrate_once(settings: Settings) -> None:
    """Two starts at the same moment on one database: both succeed, the schema is whole."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            migrate(settings)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert tables(settings) >= TABLES


# --- mirror downloads led by another replica -----------------------------------------------------


@pytest.fixture
def remote(mirror_app: Any, monkeypatch: pytest.MonkeyPatch) -> Locks:
    """The mirror treats its locks as shared with other machines (as with PostgreSQL)."""
    mirror = the_mirror(mirror_app)
    monkeypatch.setattr(mirror.locks, "is_distributed", True)
    return Locks.of(mirror_app.config["PYSHELF_SETTINGS"])


def test_a_download_another_replica_leads_is_served_from_the_store_once_committed(
    mirror_app, mc, fake_upstream, demo, remote
):
    """Single flight across replicas: the follower waits for the blob, upstream is asked once."""
    filename, data = demo
    url = file_url(mc, filename)
    leader = remote.exclusive(
        f"file-{download_stem(mirror_app.config['PYSHELF_SETTINGS'], sha256(data))}"
    )
    assert leader.try_acquire()

    def other_replica_finishes() -> None:
        time.sleep(0.5)
        mirror_app.extensions["pyshelf.storage"].save(sha256(data), io.BytesIO(data))
        held_by_pypi(mirror_app, data)  # as a leader records before it unlocks
        leader.close()

    thread = threading.Thread(target=other_replica_finishes)
    thread.start()
    try:
        response = mc.get(url)
    finally:
        thread.join(WAIT_SECONDS)
        leader.close()
    assert (response.status_code, response.get_data()) == (200, data)
    assert fake_upstream.count("/files/") == 0


def test_a_download_another_replica_holds_too_long_is_streamed_uncached(
    mirror_app, mc, fake_upstream, demo, remote, monkeypatch
):
    """The client does not wait out a long download elsewhere: its bytes come from upstream."""
    monkeypatch.setattr("app.services.mirror.downloads.REMOTE_WAIT_SECONDS", 0.3)
    filename, data = demo
    url = file_url(mc, filename)
    leader = remote.exclusive(
        f"file-{download_stem(mirror_app.config['PYSHELF_SETTINGS'], sha256(data))}"
    )
    assert leader.try_acquire()
    try:
        response = mc.get(url)
        assert (response.status_code, response.get_data()) == (200, data)
        assert response.headers["Cache-Control"] == "no-store"
    finally:
        leader.close()
    assert fake_upstream.count("/files/") == 1
    assert not stored(mirror_app, data)  # the leader caches it, not the follower


def test_bytes_streamed_uncached_are_still_checked_against_the_sha256(
    mirror_app, mc, fake_upstream, demo, remote, monkeypatch
):
    """A wrong file is cut off before its last chunk, cached or not."""
    from app.core.upstream import UpstreamError

    monkeypatch.setattr("app.services.mirror.downloads.REMOTE_WAIT_SECONDS", 0.1)
    filename, data = demo
    url = file_url(mc, filename)
    fake_upstream.corrupt.add(filename)
    leader = remote.exclusive(
        f"file-{download_stem(mirror_app.config['PYSHELF_SETTINGS'], sha256(data))}"
    )
    assert leader.try_acquire()
    try:
        with pytest.raises(UpstreamError, match="sha256"):
            mc.get(url).get_data()
    finally:
        leader.close()
    assert not stored(mirror_app, data)


def test_locks_of_different_data_dirs_do_not_meet_on_sqlite(settings: Settings, tmp_path: Path):
    """Flock files live in each DATA_DIR: two SQLite pyshelfs never share a lock."""
    if settings.database_url.startswith("postgresql"):
        pytest.skip("with PostgreSQL the database, not the data dir, scopes the locks")
    other = dataclasses.replace(settings, data_dir=tmp_path / "other", database_url="")
    first = Locks.of(settings).exclusive("file-z")
    assert first.try_acquire()
    try:
        assert is_free(Locks.of(other), "file-z")
    finally:
        first.close()
