"""Bench: `bundle export` and `bundle import` of a large bundle next to `tar` of the same files.

    .venv/bin/python bench/bundle.py [--size-mb 1024] [--file-mb 16] [--work DIR]

Fills a mirror index of a fresh data dir with real wheels of incompressible payload (through
the mirror's own recording code, as a cache fill would), then times, each as its own process:
`tar -cf` of the stored blobs, `pyshelf bundle export --all-cached`, and `pyshelf bundle import`
into a second, empty data dir (an offline mirror). Prints MB/s and peak RSS (GNU time's %M)
of each. Needs size x 4 of free disk under --work.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.core.config import Settings  # noqa: E402
from app.core.storage_choice import make_storage  # noqa: E402
from app.data.db import Database, begin_write  # noqa: E402
from app.data.models import MirrorPage, utcnow  # noqa: E402
from app.ops.prepare import bootstrap, migrate  # noqa: E402
from app.services.cache import MirrorCache  # noqa: E402
from app.services.indexes import get_index_by_path  # noqa: E402
from app.services.mirror_metadata import extract, record_cached_file  # noqa: E402

CHUNK_BYTES = 1 << 20


def make_wheel(path: Path, name: str, version: str, payload_bytes: int) -> None:
    """A wheel with METADATA and `payload_bytes` of random bytes, stored (not deflated)."""
    dist = f"{name.replace('-', '_')}-{version}"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(
            f"{dist}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: bench\n",
        )
        archive.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n")
        with archive.open(f"{name.replace('-', '_')}/payload.bin", "w", force_zip64=True) as out:
            left = payload_bytes
            while left > 0:
                out.write(os.urandom(min(CHUNK_BYTES, left)))
                left -= CHUNK_BYTES
        archive.writestr(f"{dist}.dist-info/RECORD", "")


def fill(settings: Settings, size_mb: int, file_mb: int) -> int:
    """Cache size_mb of wheels in root/pypi as its download path records them; total bytes."""
    migrate(settings)
    database = Database(settings.database_url)
    with database.session() as session:
        bootstrap(session, settings)
    storage = make_storage(settings)
    cache = MirrorCache(settings, database, storage)
    with database.session() as session:
        index_id = get_index_by_path(session, "root/pypi").id
    total = 0
    count = max(1, size_mb // file_mb)
    with tempfile.TemporaryDirectory(dir=settings.data_dir) as work:
        for number in range(count):
            name = f"bench-{number:04d}"
            filename = f"{name.replace('-', '_')}-1.0-py3-none-any.whl"
            path = Path(work) / filename
            make_wheel(path, name, "1.0", file_mb << 20)
            digest = hashlib.sha256()
            with open(path, "rb") as source:
                for chunk in iter(lambda: source.read(CHUNK_BYTES), b""):
                    digest.update(chunk)
            key, size = digest.hexdigest(), path.stat().st_size
            with open(path, "rb") as source:
                storage.save(key, source)
            cache.record(index_id, key, size)
            record_cached_file(
                database, storage, cache, index_id, key, filename, size, extract(path, filename)
            )
            with database.session() as session:
                begin_write(session)
                session.add(
                    MirrorPage(
                        index_id=index_id,
                        normalized_name=name,
                        name=name,
                        checked_at=utcnow(),
                        files=[
                            {
                                "filename": filename,
                                "version": "1.0",
                                "url": f"https://pkgs.example/{filename}",
                                "sha256": key,
                                "requires_python": None,
                                "yanked": False,
                                "upload_time": None,
                                "size": size,
                                "metadata_sha256": None,
                            }
                        ],
                    )
                )
                session.commit()
            path.unlink()
            total += size
    database.engine.dispose()
    return total


def timed(label: str, command: list[str], env: dict[str, str], size: int) -> None:
    """Run `command` under GNU time; print seconds, MB/s and peak RSS."""
    started = time.monotonic()
    result = subprocess.run(  # noqa: S603 - our own commands
        ["/usr/bin/time", "-f", "%M", *command],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{label} failed:\n{result.stdout}\n{result.stderr}")
    peak_kib = int(result.stderr.strip().splitlines()[-1])
    print(
        f"{label:<16} {seconds:7.1f} s  {size / seconds / 1e6:7.1f} MB/s  "
        f"peak RSS {peak_kib / 1024:6.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--file-mb", type=int, default=16)
    parser.add_argument("--work", default=None, help="a folder with room (default: a temp dir)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pyshelf-bundle-bench.", dir=args.work))
    try:
        source = Settings(data_dir=work / "source", mirror_url="https://pkgs.example/simple/")
        source.data_dir.mkdir()
        size = fill(source, args.size_mb, args.file_mb)
        print(f"{size / 1e6:.0f} MB in {args.size_mb // args.file_mb} wheels")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "STORAGE_"))}
        env |= {"ENV_FILE": os.devnull, "MIRROR_URL": "https://pkgs.example/simple/"}
        python = [sys.executable, "-m", "app"]
        bundle = work / "site.tar"
        subprocess.run(["sync"], check=False)  # noqa: S607 - coreutils
        timed(
            "tar -cf",
            ["tar", "-cf", str(work / "plain.tar"), "-C", str(source.data_dir), "blobs"],
            env,
            size,
        )
        timed(
            "bundle export",
            [*python, "bundle", "export", "--all-cached", "-o", str(bundle)],
            env | {"DATA_DIR": str(source.data_dir)},
            size,
        )
        target = work / "target"
        target.mkdir()
        subprocess.run(  # noqa: S603 - our own command
            [*python, "prepare"],
            env=env | {"DATA_DIR": str(target)},
            check=True,
            capture_output=True,
        )
        timed(
            "bundle import",
            [*python, "bundle", "import", str(bundle), "--into", "root/offline"],
            env | {"DATA_DIR": str(target)},
            size,
        )
        timed("tar -xf", ["tar", "-xf", str(bundle), "-C", str(target)], env, size)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
