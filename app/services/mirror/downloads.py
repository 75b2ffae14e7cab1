"""The mirror's download engine: one download per file and mirror, hash-checked, committed.

Whoever takes a file's lock (app/core/locks.py: flock, or PostgreSQL advisory locks when
replicas share the database) leads: it streams the file from upstream into a part file under
DATA_DIR/tmp/mirror, checks its size and sha256, commits it to the blob store and records that
this mirror holds it. Followers on this machine stream the leader's part file as it grows; the
final byte only ever comes from the committed blob. When the disk fails a cache write (full,
I/O error), least recently used mirror files are evicted and the write retried once; after
that the download goes on uncached: the client still gets every verified byte.

It stays one module past ~500 lines on purpose: `Downloads.fetch` and the generators it returns
are one state machine around the file's lock (lead or follow, hash, commit, record, release,
evict), and its steps share that lock's lifetime; split, a reader would follow it across files.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import requests

from app.core import metrics
from app.core.config import Settings
from app.core.locks import Lock, Locks
from app.core.storage import DISK_FULL_ERRNOS, Storage, write_at
from app.core.upstream import UpstreamError, UpstreamTimeout, mask_url
from app.core.upstream_client import UpstreamClient, iter_raw
from app.data.db import Database
from app.data.models import Index
from app.services import fulltext
from app.services.cache import MirrorCache
from app.services.cache_blobs import holds
from app.services.indexer import IdleIndexer
from app.services.mirror.pages import file_key, upstream_budget_seconds
from app.services.mirror.results import (
    Blob,
    StillFetching,
    Stream,
    UpstreamFailed,
    UpstreamTimedOut,
)
from app.services.mirror.stats import Counters
from app.services.mirror_metadata import extract, record_cached_file

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK_BYTES = 1 << 20  # 1 MiB per read from upstream and per write to the client
LOCK_POLL_SECONDS = 0.05
# PostgreSQL: how long a download waits for another replica's (no part file to follow here)
# before it streams the file from upstream itself, uncached: well within clients' timeouts.
REMOTE_WAIT_SECONDS = 10.0
REMOTE_POLL_SECONDS = 0.2  # each look asks the database and the blob store
FOLLOW_RETRY_SECONDS = 5  # a follower that found no part file: when to ask again
# A cache write failing with these sends the file uncached instead of cutting the download.
CACHE_WRITE_ERRNOS = (*DISK_FULL_ERRNOS, errno.EIO)


class Downloads:
    """Mirrored files fetched once per file and mirror across workers, verified and cached."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        storage: Storage,
        upstream: UpstreamClient,
        counters: Counters,
        cache: MirrorCache,
        indexer: IdleIndexer,
    ) -> None:
        self.settings = settings
        self.database = database
        self.storage = storage
        self.upstream = upstream
        self.counters = counters
        self.cache = cache
        self.indexer = indexer  # what a first download queues for search is indexed by it
        self.part_dir = settings.tmp_dir / "mirror"
        self.locks = Locks.of(settings)  # downloads: one per file across workers and replicas

    def holds_now(self, index: Index, key: str) -> bool:
        """Whether this mirror holds the blob `key` and the store has it, in a fresh session:
        another worker may have committed it just now."""
        with self.database.session() as session:
            return holds(session, index.id, key) and self.storage.exists(key)

    def send_cached(
        self, index: Index, key: str, filename: str, *, is_metadata: bool = False
    ) -> Blob:
        """A cache hit: counted, its last access noted (in batches), the blob to send."""
        self.counters.add(index.id, hits=1)
        self.cache.touch(key)
        return Blob(key, filename, is_metadata=is_metadata)

    def _part_paths(self, index: Index, key: str) -> tuple[Path, Path]:
        """A download's part file and size note: one per mirror and file (a mirror never sends
        bytes another mirror is fetching: they are not its own until it verified them)."""
        stem = f"{index.id}-{key}"
        return self.part_dir / f"{stem}.part", self.part_dir / f"{stem}.size"

    def fetch(self, index: Index, entry: dict[str, Any], *, replace: bool = False) -> Blob | Stream:
        """A file of a mirror's page: cached already, or streamed from upstream into the cache;
        one download per file and mirror. Every caller (file requests, prefetch, verify
        --repair with `replace`: over a damaged stored copy) comes here.

        Whoever takes the file's lock leads: it downloads and caches. A follower on this machine
        streams the leader's part file as it grows. With PostgreSQL a follower whose leader is
        on another replica (no part file here) serves the cached file once it is committed, or
        after REMOTE_WAIT_SECONDS streams it from upstream itself, uncached.
        """
        if not entry.get("sha256"):
            return self._pass_through(index, entry)
        key, filename = file_key(entry), entry["filename"]
        part, _size = self._part_paths(index, key)
        # The leader creates the part file once upstream answers, which may take every retry.
        started = time.monotonic()
        deadline = started + upstream_budget_seconds(self.settings, self.upstream)
        is_distributed = self.locks.is_distributed
        while True:
            lock = self.locks.exclusive(f"file-{index.id}-{key}")
            if lock.try_acquire():
                if not replace and self.holds_now(index, key):
                    lock.close()  # another worker just finished it
                    return self.send_cached(index, key, filename)
                return self._lead(index, entry, lock, replace=replace)
            lock.close()
            if part.exists():
                return self._follow(index, entry, part)
            if not is_distributed:
                if time.monotonic() >= deadline:
                    return self._follow(index, entry, part)
                time.sleep(LOCK_POLL_SECONDS)
                continue
            if not replace and self.holds_now(index, key):  # committed by another replica
                return self.send_cached(index, key, filename)
            if time.monotonic() - started >= REMOTE_WAIT_SECONDS:
                log.info("%s: another replica is fetching it, streamed uncached", filename)
                return self._pass_through(index, entry)
            time.sleep(REMOTE_POLL_SECONDS)

    def _open_upstream(self, index: Index, entry: dict[str, Any]) -> requests.Response:
        try:
            return self.upstream.open_file(entry["url"], simple_url=index.mirror_url)
        except UpstreamTimeout as exc:
            log.error("fetching %s failed: %s", entry["filename"], exc)
            metrics.count_upstream_error(index.path)
            raise UpstreamTimedOut(
                f"Upstream timed out fetching {entry['filename']}: {exc}"
            ) from None
        except UpstreamError as exc:
            log.error("fetching %s failed: %s", entry["filename"], exc)
            metrics.count_upstream_error(index.path)
            raise UpstreamFailed(f"Upstream failed fetching {entry['filename']}: {exc}") from None

    def _pass_through(
        self,
        index: Index,
        entry: dict[str, Any],
        upstream_response: requests.Response | None = None,
    ) -> Stream:
        """Streamed from upstream, never cached: a file listed without a sha256 (PEP 503), one
        another replica is still downloading, or one the disk has no room for. A known sha256 is
        checked before the last chunk."""
        if upstream_response is None:
            upstream_response = self._open_upstream(index, entry)
        response = upstream_response
        filename, counters, verify = entry["filename"], self.counters, entry.get("sha256")
        if not verify:
            log.warning("%s has no upstream sha256: streamed, not cached", filename)

        def generate() -> Iterator[bytes]:
            size, digest, held = 0, hashlib.sha256(), b""
            try:
                for chunk in iter_raw(response, chunk_bytes=CHUNK_BYTES):
                    size += len(chunk)
                    if verify:
                        digest.update(chunk)
                    if held:
                        yield held
                    held = chunk
                if verify and digest.hexdigest() != verify:
                    raise UpstreamError(f"{filename}: sha256 {digest.hexdigest()} != {verify}")
                if held:
                    yield held
                counters.add(index.id, misses=1, fetched_bytes=size)
            except UpstreamError as exc:
                log.error("mirror download of %s failed: %s", filename, exc)
                raise
            finally:
                response.close()

        length = response.headers.get("Content-Length")
        size = int(length) if length and length.isdigit() else None
        return Stream(generate(), size, response.close)  # close: HEAD never iterates the body

    def _new_part(self, part_path: Path, size_path: Path, total: int | None) -> IO[bytes]:
        """A new, empty part file (unbuffered: followers read each chunk as it is written) and
        its size note; nothing is left when either cannot be written."""
        self.part_dir.mkdir(parents=True, exist_ok=True)
        # A new inode, never the old one truncated: a follower still reading a part left by
        # a killed or failed leader must not see its bytes change under it.
        part_path.unlink(missing_ok=True)
        part: IO[bytes] = open(part_path, "x+b", buffering=0)  # noqa: SIM115 - the caller closes
        try:
            if total is not None:
                size_path.write_text(str(total))
            else:
                size_path.unlink(missing_ok=True)
        except BaseException:
            part.close()
            part_path.unlink(missing_ok=True)
            size_path.unlink(missing_ok=True)
            raise
        return part

    def _lead(self, index: Index, entry: dict[str, Any], lock: Lock, *, replace: bool) -> Stream:
        """Download a file for every worker of this mirror: write its part file, verify, commit
        it to the store (bytes stored already for anyone are kept as they are, unless `replace`),
        record that this mirror holds it.

        A cache write failing for a full disk evicts least recently used mirror files and is
        tried once more; when it fails again (or with EIO) the part file is dropped and the file
        is sent on uncached, still checked before its last byte, and the failure is counted.
        """
        key, verify, filename = file_key(entry), entry["sha256"], entry["filename"]
        try:
            upstream_response = self._open_upstream(index, entry)
        except BaseException:
            lock.close()
            raise
        part_path, size_path = self._part_paths(index, key)
        length = upstream_response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else entry.get("size")
        try:
            part = self._with_room(lambda: self._new_part(part_path, size_path, total), total or 0)
        except OSError as exc:
            lock.close()
            if exc.errno not in CACHE_WRITE_ERRNOS:
                upstream_response.close()
                raise
            count_write_failure("mirror", f"{index.path}: {filename}", exc)
            return self._pass_through(index, entry, upstream_response)
        except BaseException:
            upstream_response.close()
            lock.close()
            raise
        storage, counters, cache = self.storage, self.counters, self.cache
        database, index_id = self.database, index.id
        index_in_request, indexer = self.settings.search_index_in_request, self.indexer
        is_caching, has_made_room, is_dropped = True, False, False

        def drop_part() -> None:
            """Free the part file and the lock; once, whatever ends (or the disk failed)."""
            nonlocal is_dropped
            if is_dropped:
                return
            is_dropped = True
            part.close()
            # Gone already when the store committed it by rename; a copy (save()), a stored
            # copy kept, or a failure leaves it. Nobody else writes this path while we hold
            # the lock.
            part_path.unlink(missing_ok=True)
            size_path.unlink(missing_ok=True)
            lock.close()

        def release() -> None:
            """Free the upstream connection, the part file and the lock."""
            upstream_response.close()
            drop_part()

        def stop_caching(exc: OSError) -> None:
            """The disk refused the bytes: nothing partial stays, the client still gets them."""
            nonlocal is_caching
            if exc.errno not in CACHE_WRITE_ERRNOS:
                raise exc
            is_caching = False
            count_write_failure("mirror", f"{index.path}: {filename}", exc)
            drop_part()  # followers see the leader gone and the file not held: they stop

        def write(chunk: bytes, offset: int) -> None:
            nonlocal has_made_room
            try:
                write_at(part, offset, chunk)
                return
            except OSError as exc:
                if exc.errno not in DISK_FULL_ERRNOS or has_made_room:
                    raise
            has_made_room = True  # one eviction per download: it frees the whole rest
            if not cache.make_room((total or offset + len(chunk)) - offset):
                raise OSError(errno.ENOSPC, "disk full, and no mirror files to evict")
            write_at(part, offset, chunk)

        def commit() -> None:
            os.fsync(part.fileno())
            if storage.exists(key) and not replace:
                return  # stored already (an upload's, another mirror's): the bytes are proven
            storage.commit_temp(key, part_path, replace=replace)  # replace: over a damaged copy

        def generate() -> Iterator[bytes]:
            is_client_gone = is_index_queued = False
            try:
                # Only the sha256 is checked: md5 and blake2b (uploads keep them) would cut the
                # first download's speed by three.
                digest, size, held = hashlib.sha256(), 0, b""
                for chunk in iter_raw(upstream_response, chunk_bytes=CHUNK_BYTES):
                    if is_caching:
                        try:
                            write(chunk, size)  # followers read the part file as it grows
                        except OSError as exc:
                            stop_caching(exc)
                    digest.update(chunk)
                    size += len(chunk)
                    if held and not is_client_gone:
                        try:
                            yield held
                        except GeneratorExit:
                            # The first client left: finish the download anyway, so followers
                            # and pip's resumed retry get the file (no more yields from here).
                            is_client_gone = True
                    if is_client_gone and not is_caching:
                        return  # nobody waits for these bytes any more
                    held = chunk
                # The last chunk is held back until the bytes are proven right: a client
                # never receives a complete wrong file, only a cut-off one.
                if total is not None and size != total:
                    raise UpstreamError(f"{filename}: got {size} of {total} bytes")
                if digest.hexdigest() != verify:
                    raise UpstreamError(
                        f"{filename}: sha256 {digest.hexdigest()} != expected {verify}"
                    )
                # Read from the part file before the store takes it (by rename, or to S3).
                metadata = extract(part_path, filename) if is_caching else None
                if is_caching:
                    try:
                        commit()
                    except OSError as exc:
                        stop_caching(exc)
                # Recorded before the lock is freed (one transaction with the miss counted):
                # a follower then finds it held, and the pages show its size and sidecar from
                # the client's next request on.
                # The search index is queued in the same transaction and brought up to date
                # once the client has the last byte (index_queued, below).
                is_counted = is_caching and record_cached_file(
                    database,
                    storage,
                    cache,
                    index_id,
                    key,
                    filename,
                    size,
                    metadata,
                    is_fetch=True,
                    queue_index=True,
                )
                is_index_queued = is_counted
                release()  # before the last byte goes out: the client then sees a finished cache
                if is_counted:
                    metrics.count_cache(misses=1, fetched_bytes=size)
                else:
                    counters.add(index.id, misses=1, fetched_bytes=size)
                if is_index_queued and index_in_request:
                    is_index_queued = False
                    indexer.index_now()
                    fulltext.take_queued()  # done: the request's own hook has nothing to do
                if not is_client_gone:
                    yield held
            except Exception as exc:
                log.error(
                    "mirror download of %s from %s failed, not cached: %s",
                    filename,
                    mask_url(entry["url"]),
                    exc,
                )
                metrics.count_upstream_error(index.path)
                raise
            finally:
                release()
                if is_index_queued:  # also when the client left at the last byte
                    indexer.wake()
                    fulltext.take_queued()
            # After the last byte: the client does not wait for an eviction over the cap.
            if is_caching:
                cache.evict_if_over()

        # A generator that never starts (HEAD, or a client gone before the first byte) never
        # runs its `finally`: the lock would stay held for the life of this worker.
        return Stream(generate(), total, release)

    def _with_room(self, write: Callable[[], T], needed_bytes: int) -> T:
        """`write()`; when the disk is full, evict least recently used mirror files to make room
        for `needed_bytes` and try once more (the OSError of the last try is raised)."""
        try:
            return write()
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS or not self.cache.make_room(needed_bytes):
                raise
        return write()

    def _follow(self, index: Index, entry: dict[str, Any], part_path: Path) -> Blob | Stream:
        """Stream a file another worker of this mirror is downloading, from its part file.

        The final byte only ever comes from the committed blob, once this mirror holds it, and
        only after the bytes sent so far are proven to be the blob's own (a part may belong to
        an earlier, failed leader).
        """
        key = file_key(entry)
        _part, size_path = self._part_paths(index, key)
        timeout = self.settings.upstream_read_timeout_seconds
        try:
            part: IO[bytes] = open(part_path, "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            if self.holds_now(index, key):
                return self.send_cached(index, key, entry["filename"])
            raise StillFetching(
                f"{entry['filename']} is being fetched; try again.",
                retry_after_seconds=FOLLOW_RETRY_SECONDS,
            ) from None
        total: int | None
        try:
            total = int(size_path.read_text())
        except (OSError, ValueError):
            total = entry.get("size")
        storage, filename, locks = self.storage, entry["filename"], self.locks
        database, index_id = self.database, index.id
        self.counters.add(index.id, hits=1)
        self.cache.touch(key)
        is_held = False

        def is_done() -> bool:
            """Whether the leader committed the blob and recorded that this mirror holds it."""
            nonlocal is_held
            if not storage.exists(key):
                return False
            if not is_held:  # the store may have had it before, for another index
                with database.session() as session:
                    is_held = holds(session, index_id, key)
            return is_held

        def generate() -> Iterator[bytes]:
            nonlocal part
            sent = hashlib.sha256()
            sent_bytes = 0
            has_switched = False  # whether the bytes sent came from more than one part file
            last_size, idle_since = -1, time.monotonic()
            try:
                while True:
                    if is_done():
                        same = not has_switched and _is_same_file(storage, key, part)
                        yield from _rest_of_blob(storage, key, sent, sent_bytes, filename, same)
                        return
                    lock = locks.exclusive(f"file-{index_id}-{key}")
                    leader_gone = lock.try_acquire()
                    lock.close()
                    newer = _current_part(part, part_path)
                    if newer is not part:
                        part, has_switched = newer, True
                    size = os.fstat(part.fileno()).st_size
                    if size != last_size:  # the leader is making progress, if not past us yet
                        last_size, idle_since = size, time.monotonic()
                    # Hold back the final byte: only the committed blob may complete the file.
                    available = size - 1
                    if available > sent_bytes:
                        part.seek(sent_bytes)
                        chunk = part.read(min(CHUNK_BYTES, available - sent_bytes))
                        sent.update(chunk)
                        sent_bytes += len(chunk)
                        idle_since = time.monotonic()
                        yield chunk
                        continue
                    if leader_gone and not is_done():
                        raise UpstreamError(f"the download of {filename} failed in another worker")
                    if time.monotonic() - idle_since > timeout:
                        raise UpstreamTimeout(f"no progress on {filename} for {timeout} s")
                    time.sleep(LOCK_POLL_SECONDS)
            except Exception as exc:
                log.error("following the download of %s failed: %s", filename, exc)
                raise
            finally:
                part.close()

        # close: the part file is open now, on HEAD too
        return Stream(generate(), total, lambda: part.close())


def count_write_failure(what: str, where: str, exc: OSError) -> None:
    """Log and count a cache write the disk refused (the caller sends the bytes uncached)."""
    log.error("cache write failed for %s, sent uncached: %s", where, exc)
    metrics.count_write_failure(what)


def _current_part(part: IO[bytes], part_path: Path) -> IO[bytes]:
    """The part file now at `part_path`: a new leader replaces the file of one that failed."""
    try:
        now = os.stat(part_path)
    except FileNotFoundError:
        return part  # committed (renamed into the store) or discarded: the leader decides
    mine = os.fstat(part.fileno())
    if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
        return part
    try:
        newer = open(part_path, "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        return part
    part.close()
    return newer


def _rest_of_blob(
    storage: Storage, key: str, sent: Any, sent_bytes: int, filename: str, is_same_file: bool
) -> Iterator[bytes]:
    """The committed blob from `sent_bytes` on, once the bytes already sent are shown to match."""
    with storage.open(key) as blob:
        if sent_bytes and not is_same_file:
            prefix = hashlib.sha256()
            remaining = sent_bytes
            while remaining > 0:
                chunk = blob.read(min(CHUNK_BYTES, remaining))
                if not chunk:
                    break
                prefix.update(chunk)
                remaining -= len(chunk)
            if prefix.hexdigest() != sent.hexdigest():
                raise UpstreamError(
                    f"{filename}: the bytes sent so far differ from the stored file"
                )
        blob.seek(sent_bytes)
        while chunk := blob.read(CHUNK_BYTES):
            yield chunk


def _is_same_file(storage: Storage, key: str, part: IO[bytes]) -> bool:
    """Whether the blob is the very part file we read (a local store commits by rename)."""
    local_path = getattr(storage, "local_path", None)
    if local_path is None:
        return False
    try:
        blob = os.stat(local_path(key))
    except OSError:
        return False
    mine = os.fstat(part.fileno())
    return (blob.st_dev, blob.st_ino) == (mine.st_dev, mine.st_ino)
