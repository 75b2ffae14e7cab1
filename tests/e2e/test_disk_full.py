"""A full data disk (issue #15 item 12), on a small tmpfs holding the blobs and temp files of a
live server: a mirror download passes through uncached, an upload answers 507, least recently
used mirror files make room first, and nothing partial is left. Root only (mount)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.builders import make_wheel
from tests.conftest import ADMIN_PASSWORD, TEST_STORAGE, LiveServer, basic_auth, run_pip
from tests.e2e.helpers import raw_upload
from tests.fake_upstream import FakeUpstream

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(TEST_STORAGE != "local", reason="the small disk holds local blobs"),
]

DISK_BYTES = 8 << 20  # 8 MiB of tmpfs for blobs and temp files; the database stays outside
MOUNT_TIMEOUT_SECONDS = 30
FILL_PIECE_BYTES = 1 << 20

StartServer = Callable[..., LiveServer]


def sha256(data: bytes) -> str:
    """Lowercase hex sha256."""
    return hashlib.sha256(data).hexdigest()


def wheel(name: str, payload_bytes: int) -> tuple[str, bytes]:
    """A wheel carrying `payload_bytes` of incompressible data."""
    return make_wheel(name, "1.0", files={f"{name}/payload.bin": os.urandom(payload_bytes)})


def _unmount(mount_point: Path) -> None:
    result = subprocess.run(
        ["umount", str(mount_point)],
        capture_output=True,
        timeout=MOUNT_TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0:  # still busy: detach it now, the kernel frees it when idle
        subprocess.run(
            ["umount", "-l", str(mount_point)], timeout=MOUNT_TIMEOUT_SECONDS, check=False
        )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A DISK_BYTES tmpfs, unmounted at the end (after the servers stop)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        timeout=MOUNT_TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        _unmount(mount_point)


@pytest.fixture
def server(
    small_disk: Path, server_factory: StartServer, fake_upstream: FakeUpstream, tmp_path: Path
) -> LiveServer:
    """A server whose blobs and temp files (one filesystem: renames) are on the small disk;
    its database and metric files are not (a full disk must not take those down in the test)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name in ("blobs", "tmp"):
        (small_disk / name).mkdir()
        (data_dir / name).symlink_to(small_disk / name)
    return server_factory(
        data_dir,
        MIRROR_URL=fake_upstream.url,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )


def free_bytes(disk: Path) -> int:
    """Bytes an unprivileged writer may still put on `disk`."""
    stat = os.statvfs(disk)
    return stat.f_bavail * stat.f_frsize


def fill(disk: Path, leave_bytes: int) -> Path:
    """Fill `disk` with a file until `leave_bytes` are free; returns the file (delete = free)."""
    filler = disk / "filler"
    with filler.open("ab") as out:
        while (need := free_bytes(disk) - leave_bytes) > 0:
            out.write(b"\0" * min(need, FILL_PIECE_BYTES))
            out.flush()
    return filler


def write_failures(server: LiveServer, what: str) -> float:
    """pyshelf_cache_write_failures_total{what=WHAT} from /+metrics (0 before the first)."""
    admin = {"Authorization": basic_auth("admin", ADMIN_PASSWORD)}  # metrics are for superusers
    status, _headers, body, _reason = server.get("/+metrics", headers=admin)
    assert status == 200
    prefix = f'pyshelf_cache_write_failures_total{{what="{what}"}} '
    for line in body.decode().splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return 0.0


def pip_download(server: LiveServer, target: Path, project: str) -> Path:
    """`pip download` one wheel through root/pypi; fail with pip's output; the file."""
    result = run_pip(
        "download", "--no-deps", "-d", str(target),
        "--index-url", f"{server.url}/root/pypi/+simple/", project,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = target.glob(f"{project}-*.whl")
    return path


def is_stored(disk: Path, data: bytes) -> bool:
    """Whether the small disk's blob store holds `data`."""
    return any((disk / "blobs").rglob(sha256(data)))


def leftovers(disk: Path) -> list[str]:
    """Part files, size notes and upload spools left in the temp folder."""
    tmp = disk / "tmp"
    found = [*(tmp / "mirror").glob("*"), *tmp.glob("upload.*"), *tmp.glob("stream.*")]
    return sorted(p.name for p in found)


def test_pip_gets_a_whole_verified_file_when_the_disk_is_full_and_it_is_cached_once_freed(
    server: LiveServer, small_disk: Path, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The fault: a first download through the mirror when the wheel does not fit and nothing
    can be evicted. pip succeeds with the right bytes, nothing partial stays, the failure is
    counted; with space again the next download is cached."""
    filename, data = wheel("bigpkg", 3 << 20)
    fake_upstream.add_file("bigpkg", filename, data)
    before = write_failures(server, "mirror")
    filler = fill(small_disk, leave_bytes=1 << 20)

    path = pip_download(server, tmp_path / "first", "bigpkg")

    assert sha256(path.read_bytes()) == sha256(data)
    assert leftovers(small_disk) == []
    assert not is_stored(small_disk, data)
    assert write_failures(server, "mirror") >= before + 1
    filler.unlink()

    pip_download(server, tmp_path / "second", "bigpkg")

    assert is_stored(small_disk, data)
    fetched = fake_upstream.count("/files/")
    path = pip_download(server, tmp_path / "third", "bigpkg")
    assert sha256(path.read_bytes()) == sha256(data)
    assert fake_upstream.count("/files/") == fetched  # from the cache now


def test_a_full_disk_evicts_the_least_recently_used_mirror_file_to_cache_a_new_one(
    server: LiveServer, small_disk: Path, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Before giving up on caching, the least recently used mirror file goes (not the newer
    one): the new file is cached and no write failure is counted."""
    older, newer, big = (
        wheel("olderpkg", 3 << 19),
        wheel("newerpkg", 3 << 19),
        wheel("bigpkg", 9 << 18),
    )
    for name, (filename, data) in (("olderpkg", older), ("newerpkg", newer), ("bigpkg", big)):
        fake_upstream.add_file(name, filename, data)
    pip_download(server, tmp_path / "older", "olderpkg")
    pip_download(server, tmp_path / "newer", "newerpkg")
    assert is_stored(small_disk, older[1])
    assert is_stored(small_disk, newer[1])
    before = write_failures(server, "mirror")
    fill(small_disk, leave_bytes=1 << 20)

    path = pip_download(server, tmp_path / "big", "bigpkg")

    assert sha256(path.read_bytes()) == sha256(big[1])
    assert is_stored(small_disk, big[1])
    assert not is_stored(small_disk, older[1])
    assert is_stored(small_disk, newer[1])
    assert write_failures(server, "mirror") == before
    assert leftovers(small_disk) == []


def test_an_upload_to_a_full_disk_answers_507_and_leaves_nothing_then_works_once_freed(
    server: LiveServer, small_disk: Path
) -> None:
    """The fault: an upload bigger than the free space, with no mirror file to evict: 507 with
    a reason, no row, no blob, no temp file, counted; after freeing space the same upload works."""
    filename, data = wheel("uppkg", 2 << 20)
    blobs_before = sorted(p.name for p in (small_disk / "blobs").rglob("*"))
    before = write_failures(server, "upload")
    filler = fill(small_disk, leave_bytes=256 << 10)

    status, _headers, body, reason = raw_upload(server, "admin/dev", filename, data)

    assert (status, reason) == (
        507,
        "Insufficient Storage: the data disk is full; nothing was stored (free DATA_DIR space).",
    ), body
    assert server.get("/admin/dev/+simple/uppkg/")[0] == 404
    assert sorted(p.name for p in (small_disk / "blobs").rglob("*")) == blobs_before
    assert leftovers(small_disk) == []
    assert write_failures(server, "upload") >= before + 1
    filler.unlink()

    status, _headers, body, reason = raw_upload(server, "admin/dev", filename, data)

    assert (status, reason) == (200, "OK"), body
    assert is_stored(small_disk, data)


def test_an_upload_to_a_full_disk_evicts_mirror_files_first(
    server: LiveServer, small_disk: Path, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A cached mirror file is only a cache: it goes to make room for an upload."""
    mirrored = wheel("cachedpkg", 2 << 20)
    fake_upstream.add_file("cachedpkg", *mirrored)
    pip_download(server, tmp_path / "cached", "cachedpkg")
    assert is_stored(small_disk, mirrored[1])
    fill(small_disk, leave_bytes=256 << 10)
    filename, data = wheel("uppkg", 1 << 20)

    status, _headers, body, reason = raw_upload(server, "admin/dev", filename, data)

    assert (status, reason) == (200, "OK"), body
    assert is_stored(small_disk, data)
    assert not is_stored(small_disk, mirrored[1])
    assert leftovers(small_disk) == []
