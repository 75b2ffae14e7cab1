"""Backup and restore (app/ops/backup.py, app/ops/restore.py): round trip, manifest, refusals,
damage."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import logging
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, select, text

from app.core.config import Settings
from app.data.db import Database
from app.data.models import MirrorBlob
from app.ops.backup import MANIFEST, BackupError, backup, database_kind, pg_env
from app.ops.restore import restore
from tests.blobs import StoredBlob
from tests.builders import make_sdist, make_wheel
from tests.conftest import basic_auth
from tests.fake_upstream import FakeUpstream
from tests.operations import (
    MIME_JSON,
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

# PostgreSQL runs: restore wants an empty database, so none starts migrated.
pytestmark = pytest.mark.empty_database


def head_revision() -> str:
    """The newest migration's id (the backup records what the snapshot's schema is)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from app.data.schema import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


@pytest.fixture
def source(settings: Settings, fake_upstream: FakeUpstream) -> dict[str, Any]:
    """A server with uploads (wheel + sidecar, sdist), docs, a token and a cached mirror file."""
    settings = mirrored(settings, fake_upstream)
    app = make_app(settings)
    client = app.test_client()
    auth = {"Authorization": basic_auth("admin", "admin-secret-pw")}
    wheel = make_wheel("private-pkg", "1.0")
    sdist = make_sdist("private-pkg", "1.0")
    upload(client, auth, *wheel)
    upload(client, auth, *sdist)
    upload_docs(client, auth, "private-pkg", "1.0", docs_zip("Private docs"))
    token = client.post("/admin/+tokens", json={"description": "ci"}, headers=auth).get_json()
    mirror_name, mirror_data = publish_upstream(fake_upstream, "public-pkg")
    path = mirror_file_path(client, "public-pkg", mirror_name)
    assert download(client, path) == mirror_data
    assert download(client, path + ".metadata") == wheel_metadata(mirror_data)
    app.extensions["pyshelf.mirror"].cache.flush()
    return {
        "settings": settings,
        "app": app,
        "wheel": wheel,
        "sdist": sdist,
        "token": token["result"]["token"],
        "mirror": (mirror_name, mirror_data, path),
    }


def restored_settings(settings: Settings, tmp_path: Path, name: str = "restored") -> Settings:
    """Settings for a fresh data directory next to the first one."""
    # S3 runs: an empty storage_url gets the new data directory its own (empty) bucket.
    return dataclasses.replace(settings, data_dir=tmp_path / name, database_url="", storage_url="")


def archive_names(path: Path) -> list[str]:
    """The member names of a tar archive."""
    with tarfile.open(path) as tar:
        return tar.getnames()


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a backup archive."""
    with tarfile.open(path) as tar:
        member = tar.extractfile(MANIFEST)
        assert member is not None
        return json.loads(member.read())


def rewrite(path: Path, target: Path, change: Any) -> None:
    """Copy an archive member by member, letting `change(info, data)` return new (info, data)."""
    with tarfile.open(path) as source, tarfile.open(target, "w") as out:
        for info in source.getmembers():
            data = source.extractfile(info).read() if info.isfile() else b""  # type: ignore[union-attr]
            changed = change(info, data)
            if changed is None:
                continue
            info, data = changed
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


def test_a_restored_server_serves_exactly_what_the_backup_held(source, tmp_path, fake_upstream):
    """Users, tokens, indexes, files, sidecars, docs and cached mirror files come back."""
    archive = tmp_path / "backup.tar"
    summary = backup(source["settings"], archive, progress=False)
    fake_upstream.down = True  # the restored mirror must serve from its restored cache
    target = restored_settings(source["settings"], tmp_path)

    result = restore(target, archive, progress=False)

    assert summary.blobs == result.blobs == 6  # wheel + sidecar, sdist, docs; mirror: the same
    assert result.counts["files"] == 2
    assert result.counts["doc_sets"] == 1
    assert result.counts["tokens"] == 1
    client = make_app(target).test_client()
    wheel_name, wheel_data = source["wheel"]
    page = client.get("/admin/dev/+simple/private-pkg/", headers={"Accept": MIME_JSON})
    for entry in page.get_json()["files"]:
        data = download(client, entry["url"])
        assert sha256(data) == entry["hashes"]["sha256"]
        if entry["filename"] == wheel_name:
            assert download(client, entry["url"] + ".metadata") == wheel_metadata(wheel_data)
    docs = client.get("/admin/dev/private-pkg/1.0/+doc/index.html")
    assert docs.status_code == 200
    assert b"Private docs" in docs.data
    _mirror_name, mirror_data, path = source["mirror"]
    assert download(client, path) == mirror_data
    token_auth = {"Authorization": basic_auth("__token__", source["token"])}
    upload(client, token_auth, *make_wheel("private-pkg", "2.0"))


def test_the_archive_is_for_its_owner_only_whatever_the_umask(source, tmp_path):
    """It holds the secret key: a 0644 archive once let anyone forge an admin's session."""
    previous = os.umask(0o022)
    try:
        summary = backup(source["settings"], tmp_path / "backups" / "pyshelf.tar", progress=False)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(summary.path.stat().st_mode) == 0o600


def test_the_manifest_lists_every_blob_with_its_kind_and_the_database_hash(source, tmp_path):
    """The manifest is the contract restore checks against."""
    archive = tmp_path / "backup.tar"
    backup(source["settings"], archive, progress=False)

    manifest = read_manifest(archive)
    names = archive_names(archive)

    assert manifest["format"] == 1
    assert manifest["database"]["kind"] == database_kind(source["settings"].database_url)
    assert manifest["database"]["alembic_revision"] == head_revision()
    kinds = sorted(blob["kind"] for blob in manifest["blobs"].values())
    assert kinds == ["mirror", "mirror", "private", "private", "private", "private"]
    assert sha256(source["wheel"][1]) in manifest["blobs"]
    assert names[-1] == MANIFEST  # written last, after every hash is known
    for key in manifest["blobs"]:
        assert f"pyshelf-backup/blobs/{key[:2]}/{key[2:4]}/{key}" in names
    assert "pyshelf-backup/secret_key" in names


def test_without_mirror_files_they_are_left_out_and_fetched_again(source, tmp_path, fake_upstream):
    """--without-mirror-files: smaller archive; the restored mirror refetches on demand."""
    archive = tmp_path / "backup.tar"
    summary = backup(source["settings"], archive, with_mirror_files=False, progress=False)
    assert set(summary.left_out.values()) == {"omitted"}
    target = restored_settings(source["settings"], tmp_path)

    restore(target, archive, progress=False)

    app = make_app(target)
    with Database(target.database_url).session() as session:
        assert session.scalars(select(MirrorBlob)).all() == []  # no accounting for absent files
    _mirror_name, mirror_data, path = source["mirror"]
    before = fake_upstream.count("/files/")
    assert download(app.test_client(), path) == mirror_data
    assert fake_upstream.count("/files/") == before + 1


def test_a_mirror_file_gone_from_the_store_is_left_out_and_named(source, tmp_path):
    """An evicted cached file does not fail the backup: the manifest says it is missing."""
    storage = source["app"].extensions["pyshelf.storage"]
    key = sha256(source["mirror"][1])
    storage.delete(key)

    summary = backup(source["settings"], tmp_path / "b.tar", progress=False)

    assert summary.left_out == {key: "missing"}
    assert read_manifest(tmp_path / "b.tar")["left_out"] == {key: "missing"}


def test_an_uploaded_file_gone_from_the_store_fails_the_backup(source, tmp_path):
    """A private blob cannot be fetched again: the backup says so instead of hiding it."""
    storage = source["app"].extensions["pyshelf.storage"]
    storage.delete(sha256(source["sdist"][1]))

    with pytest.raises(
        BackupError, match=r"1 uploaded files are missing.*private_pkg-1\.0\.tar\.gz"
    ):
        backup(source["settings"], tmp_path / "b.tar", progress=False)

    assert list(tmp_path.glob("*.tar*")) == []  # no partial archive, no temp left


def test_a_corrupt_uploaded_blob_fails_the_backup(source, tmp_path):
    """Bytes that do not match their name are not archived as if they were good."""
    storage = source["app"].extensions["pyshelf.storage"]
    StoredBlob(storage, sha256(source["wheel"][1])).write_bytes(b"garbage")

    with pytest.raises(BackupError, match="corrupt on disk"):
        backup(source["settings"], tmp_path / "b.tar", progress=False)


def test_backup_refuses_to_overwrite_and_names_a_folder_target_by_date(source, tmp_path):
    """An existing PATH needs --force; a folder (or PATH/) gets pyshelf-YYYYmmdd-HHMMSS.tar."""
    existing = tmp_path / "b.tar"
    existing.write_bytes(b"keep me")
    with pytest.raises(BackupError, match="exists"):
        backup(source["settings"], existing, progress=False)
    assert existing.read_bytes() == b"keep me"

    folder = tmp_path / "backups"
    summary = backup(source["settings"], f"{folder}/", progress=False)  # made when missing

    assert summary.path.parent == folder
    assert summary.path.name.startswith("pyshelf-")
    assert summary.path.suffix == ".tar"
    backup(source["settings"], existing, force=True, progress=False)
    assert read_manifest(existing)["format"] == 1


def test_restore_refuses_a_non_empty_target_unless_forced(source, tmp_path):
    """Restoring over a live data directory needs --force; it then replaces it."""
    archive = tmp_path / "b.tar"
    backup(source["settings"], archive, progress=False)
    target = restored_settings(source["settings"], tmp_path)
    other = make_app(target)  # a server that already holds something else
    upload(
        other.test_client(),
        {"Authorization": basic_auth("admin", "admin-secret-pw")},
        *make_wheel("other-pkg", "1.0"),
    )
    other.extensions["pyshelf.db"].engine.dispose()

    with pytest.raises(BackupError, match="is not empty"):
        restore(target, archive, progress=False)

    result = restore(target, archive, force=True, progress=False)
    assert result.counts["files"] == 2
    client = make_app(target).test_client()
    assert client.get("/admin/dev/+simple/other-pkg/").status_code == 404
    assert client.get("/admin/dev/+simple/private-pkg/").status_code == 200
    assert not list(Path(target.data_dir).glob(".restore-*"))


def test_restore_checks_every_blob_before_it_commits_anything(source, tmp_path):
    """One flipped byte: refused, and the target stays empty."""
    archive = tmp_path / "b.tar"
    backup(source["settings"], archive, progress=False)
    key = sha256(source["wheel"][1])

    def flip(info: tarfile.TarInfo, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
        if info.name.endswith(key):
            data = bytes([data[0] ^ 1]) + data[1:]
        return info, data

    rewrite(archive, tmp_path / "bad.tar", flip)
    target = restored_settings(source["settings"], tmp_path)

    with pytest.raises(BackupError, match=f"fail the manifest.*{key[:12]} hashes to"):
        restore(target, tmp_path / "bad.tar", progress=False)

    assert [p.name for p in Path(target.data_dir).iterdir()] == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("drop-blob", "is missing"),
        ("drop-manifest", "has no manifest.json"),
        ("evil-name", "unexpected entry '../evil'"),
        ("database", "does not match its sha256"),
    ],
)
def test_restore_refuses_damaged_or_foreign_archives(source, tmp_path, change, message):
    """Missing blobs, no manifest, paths outside the archive root, a changed database."""
    archive = tmp_path / "b.tar"
    backup(source["settings"], archive, progress=False)
    key = sha256(source["sdist"][1])

    def edit(info: tarfile.TarInfo, data: bytes) -> Any:
        if change == "drop-blob" and info.name.endswith(key):
            return None
        if change == "drop-manifest" and info.name == MANIFEST:
            return None
        if change == "evil-name" and info.name.endswith(key):
            info.name = "../evil"
        if change == "database" and info.name.endswith(("database.sqlite3", "database.sql")):
            data = data + b"\0" * 512
        return info, data

    rewrite(archive, tmp_path / "bad.tar", edit)

    with pytest.raises(BackupError, match=message):
        restore(
            restored_settings(source["settings"], tmp_path), tmp_path / "bad.tar", progress=False
        )


def test_restore_refuses_something_that_is_not_an_archive(settings, tmp_path):
    """A clear error, not a traceback."""
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar file at all" * 100)

    with pytest.raises(BackupError, match="not a readable backup archive"):
        restore(settings, junk, progress=False)


def test_progress_is_logged_every_ten_percent_without_a_terminal(source, tmp_path, caplog):
    """Not a TTY (docker exec without -t, cron): plain log lines instead of a bar."""
    caplog.set_level(logging.INFO, logger="pyshelf")

    backup(source["settings"], tmp_path / "b.tar")

    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backup: ")]
    assert lines
    assert lines[-1].startswith("backup: 100%")


def test_database_kinds_and_postgres_credentials_stay_out_of_argv():
    """pg_dump/psql get the password in PGPASSWORD, never on the command line."""
    assert database_kind("sqlite:////data/x.sqlite3") == "sqlite"
    assert database_kind("postgresql+psycopg://u:secret@db:5433/shelf") == "postgresql"
    with pytest.raises(BackupError, match="not mysql"):
        database_kind("mysql://u@h/db")

    env = pg_env("postgresql+psycopg://u:secret@db:5433/shelf")

    assert (env["PGHOST"], env["PGPORT"], env["PGUSER"], env["PGDATABASE"]) == (
        "db",
        "5433",
        "u",
        "shelf",
    )
    assert env["PGPASSWORD"] == "secret"
    socket = pg_env("postgresql+psycopg://u@/shelf?host=/run/postgresql&sslmode=disable")
    assert (socket["PGHOST"], socket["PGSSLMODE"]) == ("/run/postgresql", "disable")


def test_a_gzipped_archive_restores_too(source, tmp_path):
    """Archives are plain tar; one gzipped afterwards (to store it) is read as it is."""
    archive = tmp_path / "b.tar"
    backup(source["settings"], archive, progress=False)
    packed = tmp_path / "b.tar.gz"
    packed.write_bytes(gzip.compress(archive.read_bytes()))

    result = restore(restored_settings(source["settings"], tmp_path), packed, progress=False)

    assert result.blobs == 6


def test_a_forced_postgresql_restore_also_drops_tables_the_archive_does_not_know(source, tmp_path):
    """--force replaces the whole schema in one transaction, so the next start migrates cleanly."""
    if database_kind(source["settings"].database_url) != "postgresql":
        pytest.skip("SQLite's --force replaces the database file itself")
    archive = tmp_path / "b.tar"
    backup(source["settings"], archive, progress=False)
    target = restored_settings(source["settings"], tmp_path)
    make_app(target).extensions["pyshelf.db"].engine.dispose()
    engine = create_engine(target.database_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE leftover_of_a_newer_schema (id integer)"))

    restore(target, archive, force=True, progress=False)

    assert "leftover_of_a_newer_schema" not in inspect(engine).get_table_names()
    engine.dispose()
    client = make_app(target).test_client()
    assert client.get("/admin/dev/+simple/private-pkg/").status_code == 200


def _search(client: Any, query: str) -> list[tuple[str, str]]:
    answer = client.get(
        "/+search", query_string={"q": query}, headers={"Accept": "application/json"}
    )
    assert answer.status_code == 200
    return [(hit["kind"], hit["name"]) for hit in answer.get_json()["hits"]]


def test_restore_keeps_the_search_index_or_builds_one_for_an_older_backup(source, tmp_path):
    """A backup holds its search index; one whose database had none (made before search
    existed) gets the index built from its releases and docs zips on restore."""
    settings = source["settings"]
    archive = tmp_path / "backup.tar"
    backup(settings, archive, progress=False)
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:  # as a backup from before migration 0010 restores
        connection.execute(text("DELETE FROM search_documents"))
    engine.dispose()
    older = tmp_path / "older.tar"
    backup(settings, older, progress=False)

    for name, path in (("same", archive), ("older", older)):
        target = restored_settings(settings, tmp_path, name)
        restore(target, path, progress=False)
        client = make_app(target).test_client()

        assert _search(client, "private") == [("release", "private-pkg"), ("docs", "private-pkg")]
