"""verify and verify --repair (app/ops/integrity.py): what is damage, what may be repaired."""

from __future__ import annotations

import io
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, delete, select, text

from app import cli
from app.core.config import Settings
from app.core.upstream_client import UpstreamClient
from app.data.models import MirrorBlob
from app.ops.integrity import ORPHAN_GRACE_SECONDS, Verifier, format_report
from tests.blobs import StoredBlob, stored_blob
from tests.builders import make_sdist, make_wheel
from tests.conftest import basic_auth
from tests.fake_upstream import FakeUpstream
from tests.operations import (
    docs_zip,
    download,
    make_app,
    mirror_file_path,
    mirrored,
    publish_upstream,
    sha256,
    upload,
    upload_docs,
    wheel_metadata,
)

AUTH = {"Authorization": basic_auth("admin", "admin-secret-pw")}


@pytest.fixture
def server(settings: Settings, fake_upstream: FakeUpstream) -> dict[str, Any]:
    """Uploads, docs and one cached mirror file."""
    settings = mirrored(settings, fake_upstream)
    app = make_app(settings)
    client = app.test_client()
    wheel, sdist = make_wheel("own-pkg", "1.0"), make_sdist("own-pkg", "1.0")
    upload(client, AUTH, *wheel)
    upload(client, AUTH, *sdist)
    upload_docs(client, AUTH, "own-pkg", "1.0", docs_zip())
    name, data = publish_upstream(fake_upstream, "public-pkg")
    path = mirror_file_path(client, "public-pkg", name)
    download(client, path)
    return {"settings": settings, "app": app, "wheel": wheel, "sdist": sdist, "mirror": data}


def verify(server: dict[str, Any], *, repair: bool = False) -> Any:
    """Run the verifier as the CLI does (with an upstream client for repairs)."""
    app = server["app"]
    upstream = UpstreamClient(
        connect_timeout_seconds=1,
        read_timeout_seconds=2,
        retries=0,
        allow_private=server["settings"].upstream_allow_private,
    )
    verifier = Verifier(
        server["settings"],
        app.extensions["pyshelf.db"],
        app.extensions["pyshelf.storage"],
        upstream,
    )
    return verifier.run(repair=repair, progress=False)


def blob(server: dict[str, Any], data: bytes) -> StoredBlob:
    """The stored blob of `data` (a local file or an S3 object)."""
    return stored_blob(server["app"], sha256(data))


def age(path: Path, seconds: float = ORPHAN_GRACE_SECONDS + 60) -> None:
    """Make a file look older than the orphan grace period."""
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_a_healthy_store_has_no_problems(server):
    """Every blob hashed, nothing missing, nothing orphaned."""
    report = verify(server)

    assert report.problems == []
    assert not report.is_damaged
    # wheel, its sidecar, sdist, docs zip, the cached mirror wheel and the METADATA read from it
    assert report.blobs == 6
    assert format_report(report).endswith("result: ok")


def test_a_corrupted_and_a_deleted_upload_are_damage_that_repair_never_touches(server):
    """Private blobs are reported with their file names and left exactly as they are."""
    corrupted = blob(server, server["wheel"][1])
    corrupted.write_bytes(b"bit rot")
    blob(server, server["sdist"][1]).unlink()

    report = verify(server, repair=True)

    assert report.is_damaged
    corrupt, missing = report.of("corrupt"), report.of("missing")
    assert [(p.key, p.is_private, p.repaired) for p in corrupt] == [
        (sha256(server["wheel"][1]), True, None)
    ]
    assert "own_pkg-1.0-py3-none-any.whl" in corrupt[0].detail
    assert [(p.key, p.is_private) for p in missing] == [(sha256(server["sdist"][1]), True)]
    assert corrupted.read_bytes() == b"bit rot"
    text = format_report(report)
    assert "hash mismatches: 1" in text
    assert "missing blobs: 1" in text
    assert "restore them from a backup" in text
    assert text.endswith("result: DAMAGED")


def test_a_corrupted_mirror_file_is_fetched_again_on_repair(server):
    """A cached copy is not precious: repair gets the right bytes from the upstream."""
    path = blob(server, server["mirror"])
    path.write_bytes(b"wrong")

    assert verify(server).is_damaged
    report = verify(server, repair=True)

    assert [p.repaired for p in report.of("corrupt")] == ["fetched again from the upstream"]
    assert not report.is_damaged
    assert path.read_bytes() == server["mirror"]
    assert verify(server).problems == []


def test_a_missing_mirror_file_is_fetched_again_on_repair(server):
    """The accounting row says cached, the store disagrees: repair fetches it."""
    path = blob(server, server["mirror"])
    path.unlink()

    report = verify(server, repair=True)

    assert [p.kind for p in report.problems] == ["missing"]
    assert report.problems[0].repaired == "fetched again from the upstream"
    assert path.read_bytes() == server["mirror"]


def test_a_corrupted_mirror_file_is_removed_when_the_upstream_is_down(server, fake_upstream):
    """Never left to be served: removed with its row, so the next request fetches it."""
    path = blob(server, server["mirror"])
    path.write_bytes(b"wrong")
    fake_upstream.down = True

    report = verify(server, repair=True)

    assert report.of("corrupt")[0].repaired == "removed; the next request fetches it"
    assert not path.exists()
    with server["app"].extensions["pyshelf.db"].session() as session:
        assert session.get(MirrorBlob, sha256(server["mirror"])) is None


def test_old_orphans_are_removed_on_repair_and_recent_ones_left_alone(server):
    """An unreferenced blob may be a write in progress until it is ORPHAN_GRACE_SECONDS old."""
    storage = server["app"].extensions["pyshelf.storage"]
    old_data, new_data = b"old orphan", b"new orphan"
    for data in (old_data, new_data):
        storage.save(sha256(data), io.BytesIO(data))
    StoredBlob(storage, sha256(old_data)).age(ORPHAN_GRACE_SECONDS + 60)  # skips on S3
    stray = storage.root / "ab" / "cd" / "not-a-blob-name"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"?")
    age(stray)

    report = verify(server, repair=True)

    orphans = {p.key: p for p in report.of("orphan")}
    assert orphans[sha256(old_data)].repaired == "removed"
    assert orphans[str(stray)].repaired == "removed"
    assert orphans[sha256(new_data)].repaired is None
    assert orphans[sha256(new_data)].is_recent
    assert not storage.exists(sha256(old_data))
    assert not stray.exists()
    assert storage.exists(sha256(new_data))
    assert not report.is_damaged  # orphans waste space; nothing is lost


def test_uploaded_bytes_that_a_mirror_also_cached_are_private(server, fake_upstream):
    """The same wheel uploaded privately and cached from the upstream: never removed."""
    client = server["app"].test_client()
    name, data = publish_upstream(fake_upstream, "twin-pkg")
    download(client, mirror_file_path(client, "twin-pkg", name))
    upload(client, AUTH, name, data)
    blob(server, data).write_bytes(b"damaged")

    report = verify(server, repair=True)

    problem = next(p for p in report.of("corrupt") if p.key == sha256(data))
    assert problem.is_private
    assert problem.repaired is None
    assert blob(server, data).read_bytes() == b"damaged"


def test_rows_pointing_nowhere_are_reported_and_cache_rows_repaired(server):
    """Rows whose parent is gone (possible when foreign keys were off)."""
    dangle = [
        "UPDATE files SET project_id = 999 WHERE filename LIKE '%.tar.gz'",
        "INSERT INTO mirror_stats (index_id, hits, misses, bytes_fetched) VALUES (999, 0, 0, 0)",
    ]
    url = server["settings"].database_url
    if url.startswith("sqlite"):
        connection = sqlite3.connect(Path(server["settings"].data_dir) / "pyshelf.sqlite3")
        with connection:
            connection.execute("PRAGMA foreign_keys=OFF")
            for statement in dangle:
                connection.execute(statement)
        connection.close()
    else:  # PostgreSQL: a superuser's session can skip foreign-key triggers
        engine = create_engine(url)
        with engine.begin() as pg:
            pg.execute(text("SET LOCAL session_replication_role = replica"))
            for statement in dangle:
                pg.execute(text(statement))
        engine.dispose()

    report = verify(server, repair=True)

    dangling = {p.key: p for p in report.of("dangling")}
    assert dangling["files without their project"].is_private
    assert dangling["files without their project"].repaired is None
    assert dangling["mirror_stats without their index"].repaired == "deleted"
    assert report.is_damaged


def test_repair_counts_cached_files_that_nobody_recorded(server):
    """Files cached before the mirror_blobs table existed join the cache accounting."""
    database = server["app"].extensions["pyshelf.db"]
    with database.session() as session:
        session.execute(delete(MirrorBlob))
        session.commit()

    report = verify(server, repair=True)

    assert report.adopted == 2  # the wheel, and its METADATA (the sidecar the page lists)
    with database.session() as session:
        assert set(session.scalars(select(MirrorBlob.sha256))) == {
            sha256(server["mirror"]),
            sha256(wheel_metadata(server["mirror"])),
        }


def test_the_verify_command_exits_1_on_damage_and_0_when_clean(server, monkeypatch, capsys):
    """`entrypoint.sh verify`: a summary, and the exit code a cron job or CI can test."""
    settings = server["settings"]
    for name, value in {
        "DATA_DIR": str(settings.data_dir),
        "MIRROR_URL": settings.mirror_url,
        "ENV_FILE": os.devnull,
    }.items():
        monkeypatch.setenv(name, value)

    assert cli.main(["verify"]) == 0
    assert "result: ok" in capsys.readouterr().out

    blob(server, server["sdist"][1]).unlink()
    assert cli.main(["verify"]) == 1
    captured = capsys.readouterr()
    assert "missing blobs: 1" in captured.out
    assert "damage found" in captured.err
