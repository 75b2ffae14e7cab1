"""The mirror cache (app/services/cache.py, cache_blobs.py): accounting, LRU eviction under a
cap, stats (prefetch: tests/test_prefetch.py)."""

from __future__ import annotations

import os
import shutil
import threading
from typing import Any

import pytest
from sqlalchemy import select

from app import cli
from app.core.config import ConfigError, Settings
from app.data.models import Index, MirrorBlob, MirrorHolding
from app.services.cache import MirrorCache
from app.services.cache_blobs import BlobLock
from tests.builders import make_wheel
from tests.conftest import basic_auth
from tests.fake_upstream import FakeUpstream
from tests.operations import (
    download,
    make_app,
    mirror_file_path,
    mirrored,
    publish_upstream,
    sha256,
    upload,
    wheel_metadata,
)

AUTH = {"Authorization": basic_auth("admin", "admin-secret-pw")}
PAYLOAD_BYTES = 10_000


def cache_of(app: Any) -> MirrorCache:
    """The app's mirror cache accounting."""
    return app.extensions["pyshelf.mirror"].cache


def rows(app: Any) -> dict[str, int]:
    """sha256 -> size of every recorded mirror blob."""
    with app.extensions["pyshelf.db"].session() as session:
        return {r.sha256: r.size for r in session.scalars(select(MirrorBlob))}


def cached_bytes(app: Any) -> int:
    """What the cache holds on disk, by the accounting's list."""
    storage = app.extensions["pyshelf.storage"]
    return sum(storage.size(k) for k in rows(app) if storage.exists(k))


@pytest.fixture
def wheels(fake_upstream: FakeUpstream) -> list[tuple[str, bytes]]:
    """Five projects on the upstream, one wheel each, about 10 kB (incompressible)."""
    return [
        publish_upstream(fake_upstream, f"pkg-{n}", payload_bytes=PAYLOAD_BYTES) for n in "abcde"
    ]


@pytest.fixture
def capped(settings: Settings, fake_upstream: FakeUpstream, wheels: Any) -> Any:
    """A mirror app whose cache holds three and a half of those wheels."""
    cap = int(len(wheels[0][1]) * 3.5)
    return make_app(mirrored(settings, fake_upstream, mirror_cache_max_bytes=cap))


def fetch(app: Any, name: str, filename: str) -> bytes:
    """Download a mirrored file through the app."""
    client = app.test_client()
    return download(client, mirror_file_path(client, name, filename))


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("50GB", 50 << 30), ("512M", 512 << 20), ("1000000", 1_000_000), ("", None)],
)
def test_mirror_cache_max_size_takes_sizes_with_units(value, expected):
    """MIRROR_CACHE_MAX_SIZE=50GB as the issue writes it; empty means no cap."""
    settings = Settings.from_env({"MIRROR_CACHE_MAX_SIZE": value, "ENV_FILE": os.devnull})

    assert settings.mirror_cache_max_bytes == expected


def test_bad_operations_variables_are_reported_together():
    """A size that is not a size, a zero cap, an unknown log format: one error listing all."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                "MIRROR_CACHE_MAX_SIZE": "lots",
                "STATUS_MIN_FREE_SPACE": "0x",
                "LOG_FORMAT": "xml",
                "ACCESS_LOG": "maybe",
                "ENV_FILE": os.devnull,
            }
        )

    message = str(caught.value)
    for name in ("MIRROR_CACHE_MAX_SIZE", "STATUS_MIN_FREE_SPACE", "LOG_FORMAT", "ACCESS_LOG"):
        assert name in message
    with pytest.raises(ConfigError, match="MIRROR_CACHE_MAX_SIZE=0"):
        Settings.from_env({"MIRROR_CACHE_MAX_SIZE": "0", "ENV_FILE": os.devnull})


# --- accounting --------------------------------------------------------------------------------


def test_a_mirror_download_and_its_sidecar_are_recorded_with_their_sizes(capped, wheels):
    """mirror_blobs learns each committed file (only verified bytes are committed)."""
    name, data = wheels[0]
    client = capped.test_client()
    path = mirror_file_path(client, "pkg-a", name)

    download(client, path)
    download(client, path + ".metadata")

    assert rows(capped) == {
        sha256(data): len(data),
        sha256(wheel_metadata(data)): len(wheel_metadata(data)),
    }


def test_hits_update_the_last_access_in_batches_not_per_request(capped, wheels, monkeypatch):
    """A hit is remembered in memory and written with others at the next flush."""
    name, data = wheels[0]
    fetch(capped, "pkg-a", name)
    with capped.extensions["pyshelf.db"].session() as session:
        first = session.get(MirrorBlob, sha256(data)).last_access_at

    fetch(capped, "pkg-a", name)  # a hit, within ACCESS_FLUSH_SECONDS of the last flush
    with capped.extensions["pyshelf.db"].session() as session:
        assert session.get(MirrorBlob, sha256(data)).last_access_at == first
    cache_of(capped).flush()

    with capped.extensions["pyshelf.db"].session() as session:
        assert session.get(MirrorBlob, sha256(data)).last_access_at > first


# --- eviction ----------------------------------------------------------------------------------


def test_eviction_keeps_the_cache_under_the_cap_least_recently_used_first(capped, wheels):
    """Over the cap after a download: the least recently downloaded files go, pages stay."""
    cap = cache_of(capped).max_bytes
    for (name, _data), project in zip(wheels[:3], "abc", strict=True):
        fetch(capped, f"pkg-{project}", name)
    fetch(capped, "pkg-a", wheels[0][0])  # a is used again: b is now the least recent
    cache_of(capped).flush()

    fetch(capped, "pkg-d", wheels[3][0])

    kept = rows(capped)
    assert sha256(wheels[1][1]) not in kept
    assert {sha256(wheels[i][1]) for i in (0, 2, 3)} <= set(kept)
    assert cached_bytes(capped) <= cap
    storage = capped.extensions["pyshelf.storage"]
    assert not storage.exists(sha256(wheels[1][1]))
    for (name, data), project in zip(wheels, "abcde", strict=True):
        assert fetch(capped, f"pkg-{project}", name) == data  # b comes back from upstream
        assert cached_bytes(capped) <= cap


def test_eviction_never_removes_a_blob_an_upload_references(capped, wheels):
    """The same bytes cached from upstream and uploaded privately are an upload's: kept."""
    name, data = wheels[0]
    fetch(capped, "pkg-a", name)
    client = capped.test_client()
    upload(client, AUTH, name, data)  # the public wheel, re-uploaded to admin/dev
    sidecar = sha256(wheel_metadata(data))

    for (other, _bytes), project in zip(wheels[1:], "bcde", strict=True):
        fetch(capped, f"pkg-{project}", other)

    storage = capped.extensions["pyshelf.storage"]
    assert storage.exists(sha256(data))
    assert storage.exists(sidecar)  # the uploaded wheel's METADATA sidecar
    assert sha256(data) not in rows(capped)  # no longer counted as cache
    assert cached_bytes(capped) <= cache_of(capped).max_bytes


def test_uploaded_files_are_never_counted_or_evicted(capped, wheels):
    """Private uploads are not cache: however big, the cap ignores them."""
    client = capped.test_client()
    big_name, big = make_wheel("own-pkg", "1.0", files={"own_pkg/x.bin": os.urandom(80_000)})
    upload(client, AUTH, big_name, big)

    for (name, _data), project in zip(wheels, "abcde", strict=True):
        fetch(capped, f"pkg-{project}", name)

    assert capped.extensions["pyshelf.storage"].exists(sha256(big))
    assert sha256(big) not in rows(capped)


def holdings(app: Any) -> set[tuple[str, str]]:
    """(mirror path, sha256) of what each mirror holds."""
    with app.extensions["pyshelf.db"].session() as session:
        return {
            (index.path, held.sha256)
            for held, index in session.execute(
                select(MirrorHolding, Index).join(Index, Index.id == MirrorHolding.index_id)
            ).all()
        }


def test_a_blob_two_mirrors_hold_is_counted_once_and_evicted_for_both(capped, wheels):
    """Two mirrors of one upstream each download a file once; the cap counts it once, each
    mirror's stats show it, and eviction drops both holdings with the blob."""
    client = capped.test_client()
    upstream_url = capped.config["PYSHELF_SETTINGS"].mirror_url
    response = client.put(
        "/admin/m2", json={"type": "mirror", "mirror_url": upstream_url}, headers=AUTH
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    name, data = wheels[0]
    for index in ("root/pypi", "admin/m2"):
        assert download(client, mirror_file_path(client, "pkg-a", name, index)) == data

    key, meta = sha256(data), wheel_metadata(data)  # each holds the METADATA it read, too
    assert holdings(capped) == {
        (index, held) for index in ("root/pypi", "admin/m2") for held in (key, sha256(meta))
    }
    assert cache_of(capped).total_bytes() == len(data) + len(meta)
    stats = cache_of(capped).stats().per_index
    assert stats["root/pypi"]["bytes"] == stats["admin/m2"]["bytes"] == len(data) + len(meta)

    cache_of(capped).evict(max_bytes=1)

    assert holdings(capped) == set()
    assert not capped.extensions["pyshelf.storage"].exists(key)
    assert download(client, mirror_file_path(client, "pkg-a", name, "admin/m2")) == data


def test_make_room_evicts_least_recently_used_files_whatever_the_cap(capped, wheels, monkeypatch):
    """After a write refused for a full disk: enough LRU mirror files go to fit the write."""
    if not hasattr(capped.extensions["pyshelf.storage"], "root"):
        pytest.skip("S3 blobs: evicting them frees no local disk, so make_room never does")
    for (name, _data), project in zip(wheels[:3], "abc", strict=True):
        fetch(capped, f"pkg-{project}", name)
    cache_of(capped).flush()
    full = shutil.disk_usage("/")._replace(free=0)
    monkeypatch.setattr("app.services.cache.shutil.disk_usage", lambda _path: full)

    # Each wheel was cached with the METADATA read from it, a blob of its own.
    (a, a_meta), (b, b_meta), (c, c_meta) = [(d, wheel_metadata(d)) for _n, d in wheels[:3]]
    freed = cache_of(capped).make_room(len(a) + len(a_meta) + 1)  # a is not enough

    assert freed == len(a) + len(a_meta) + len(b)  # a, then b: LRU first
    assert set(rows(capped)) == {sha256(b_meta), sha256(c), sha256(c_meta)}


def test_eviction_waits_for_uploads_between_store_and_record(capped, wheels):
    """With the blob lock held by an upload, eviction gives up instead of racing it."""
    for (name, _data), project in zip(wheels[:4], "abcd", strict=True):
        fetch(capped, f"pkg-{project}", name)
    cache = cache_of(capped)
    cache.max_bytes = len(wheels[0][1])  # far over: something must go
    holding, release = threading.Event(), threading.Event()

    def uploader() -> None:
        with BlobLock(cache.settings).shared():
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=uploader)
    thread.start()
    holding.wait(5)
    try:
        result = cache.evict(lock_wait_seconds=0.2)
    finally:
        release.set()
        thread.join()

    assert result.removed_files == 0
    assert "blob lock" in (result.skipped or "")
    assert cache.evict().removed_files >= 3


def test_cache_stats_and_prune_commands(capped, wheels, monkeypatch, capsys):
    """`cache stats` shows size, files and hit ratio; `cache prune --max-size` evicts now."""
    settings = capped.config["PYSHELF_SETTINGS"]
    for (name, _data), project in zip(wheels[:3], "abc", strict=True):
        fetch(capped, f"pkg-{project}", name)
    fetch(capped, "pkg-a", wheels[0][0])
    capped.extensions["pyshelf.mirror"].counters.flush()
    for key, value in {
        "DATA_DIR": str(settings.data_dir),
        "MIRROR_URL": settings.mirror_url,
        "MIRROR_CACHE_MAX_SIZE": str(settings.mirror_cache_max_bytes),
        "ENV_FILE": os.devnull,
    }.items():
        monkeypatch.setenv(key, value)

    assert cli.main(["cache", "stats"]) == 0
    out = capsys.readouterr().out
    assert "in 6 files" in out  # each wheel and the METADATA read from it
    assert "hit ratio: 25.0 % (1 hits, 3 misses)" in out
    cap = 2 * len(wheels[0][1]) + 10  # evicts down to 90 %: one wheel stays
    assert cli.main(["cache", "prune", "--max-size", str(cap)]) == 0
    assert "cache prune: removed 3 files" in capsys.readouterr().out  # two wheels, a METADATA
    left = rows(capped)
    assert len([size for size in left.values() if size >= PAYLOAD_BYTES]) == 1
    assert sum(left.values()) <= 0.9 * cap


def test_prune_counts_files_cached_before_the_accounting_existed(capped, wheels):
    """adopt(): blobs that mirror pages list and the store holds, without a row, get one."""
    fetch(capped, "pkg-a", wheels[0][0])
    with capped.extensions["pyshelf.db"].session() as session:
        session.query(MirrorBlob).delete()
        session.commit()

    data, meta = wheels[0][1], wheel_metadata(wheels[0][1])  # the page lists both
    assert cache_of(capped).adopt() == (2, len(data) + len(meta))
    assert rows(capped) == {sha256(data): len(data), sha256(meta): len(meta)}
