"""Benchmark: verify, backup and restore throughput on a synthetic data directory.

Fills a temporary data directory with uploaded files (random, incompressible bytes: some large,
many small, recorded as release files), then times `verify`, `backup` and `restore` in process.
As root it drops the page cache before verify and backup, so they read from the disk. Never part
of `make test`; nothing leaves this machine.

    .venv/bin/python bench/operations.py [--large 256] [--small 5000]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.core.config import Settings
from app.core.storage_local import LocalStorage
from app.data.db import Database
from app.data.models import File, Index, Project
from app.ops.backup import backup
from app.ops.integrity import Verifier
from app.ops.prepare import bootstrap, migrate
from app.ops.restore import restore

LARGE_BYTES = 4 << 20  # 4 MiB
SMALL_BYTES = 20 << 10  # 20 KiB


def drop_caches() -> bool:
    """Empty the page cache (root only), so reads come from the disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def fill(settings: Settings, large: int, small: int) -> tuple[int, int]:
    """Store `large` + `small` random files as uploads of admin/dev; return (files, bytes)."""
    database = Database(settings.database_url)
    storage = LocalStorage(settings.blob_dir)
    total = count = 0
    with database.session() as session:
        index = session.scalar(select(Index).where(Index.name == "dev"))
        assert index is not None
        for number, size in ((large, LARGE_BYTES), (small, SMALL_BYTES)):
            for _ in range(number):
                data = os.urandom(size)
                key = hashlib.sha256(data).hexdigest()
                storage.save(key, io.BytesIO(data))
                name = f"bench-{count}"
                project = Project(index_id=index.id, name=name, normalized_name=name)
                session.add(project)
                session.flush()
                session.add(
                    File(
                        project_id=project.id,
                        filename=f"{name}-1.0.tar.gz",
                        version="1.0",
                        filetype="sdist",
                        pyversion="source",
                        sha256=key,
                        blake2_256="",
                        md5="",
                        size=size,
                    )
                )
                count += 1
                total += size
        session.commit()
    database.engine.dispose()
    return count, total


def main() -> None:
    """Fill, then time verify, backup and restore; print MiB/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=256, help="4 MiB files (default 256)")
    parser.add_argument("--small", type=int, default=5000, help="20 KiB files (default 5000)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="pyshelf-bench-"))
    try:
        settings = Settings(data_dir=root / "data", admin_password=secrets.token_hex(8))
        settings.data_dir.mkdir(parents=True)
        migrate(settings)
        database = Database(settings.database_url)
        with database.session() as session, open(os.devnull, "w") as devnull:
            bootstrap(session, settings, out=devnull)
        count, total = fill(settings, args.large, args.small)
        mib = total / (1 << 20)
        print(f"data: {count} files, {mib:.0f} MiB")
        cold = drop_caches()
        print(f"page cache dropped before verify and backup: {cold}")

        started = time.monotonic()
        report = Verifier(settings, database, LocalStorage(settings.blob_dir)).run(progress=False)
        seconds = time.monotonic() - started
        problems = len(report.problems)
        print(f"verify:  {seconds:6.2f} s  {mib / seconds:6.0f} MiB/s  ({problems} problems)")

        drop_caches()
        started = time.monotonic()
        backup(settings, root / "backup.tar", progress=False)
        seconds = time.monotonic() - started
        print(f"backup:  {seconds:6.2f} s  {mib / seconds:6.0f} MiB/s")

        target = dataclasses.replace(settings, data_dir=root / "restored", database_url="")
        started = time.monotonic()
        restore(target, root / "backup.tar", progress=False)
        seconds = time.monotonic() - started
        print(f"restore: {seconds:6.2f} s  {mib / seconds:6.0f} MiB/s")
        database.engine.dispose()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
