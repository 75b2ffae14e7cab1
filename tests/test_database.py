"""The database on both backends: writers take turns (begin_write), 64-bit sizes and counters."""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any

import pytest
from sqlalchemy import select, text

from app.core.upstream_client import UpstreamClient
from app.data.db import Database, begin_write
from app.data.models import File, LoginFailure, MirrorStats
from app.services.mirror.stats import Counters
from tests import test_mirror
from tests.builders import make_wheel
from tests.conftest import TEST_ALLOW_PRIVATE
from tests.operations import upload
from tests.test_mirror import JSON

WAIT_SECONDS = 10.0

# The mirror fixtures of tests/test_mirror.py, used here too.
clock = test_mirror.clock
mirror_settings = test_mirror.mirror_settings
mirror_app = test_mirror.mirror_app
mc = test_mirror.mc


def test_begin_write_lets_one_writer_at_a_time_check_then_insert(app: Any) -> None:
    """The code reads, then writes on what it read (duplicate checks, counters): writers queue."""
    settings = app.config["PYSHELF_SETTINGS"]
    database = Database(settings.database_url)
    entered = threading.Event()
    results: list[str] = []

    def second_writer() -> None:
        with database.session() as session:
            entered.set()
            begin_write(session)  # waits for the first writer's commit
            exists = session.get(LoginFailure, "user:race") is not None
            results.append("saw the first row" if exists else "saw nothing")
            session.rollback()

    with database.session() as session:
        begin_write(session)
        assert session.get(LoginFailure, "user:race") is None
        thread = threading.Thread(target=second_writer)
        thread.start()
        assert entered.wait(WAIT_SECONDS)
        time.sleep(0.3)  # give the second writer every chance to run ahead (it must not)
        assert results == []
        session.add(LoginFailure(key="user:race", count=1))
        session.commit()
    thread.join(WAIT_SECONDS)
    database.engine.dispose()
    assert results == ["saw the first row"]


def test_with_postgresql_a_write_lock_is_held_until_commit(app: Any) -> None:
    """PostgreSQL only: begin_write takes pg_advisory_xact_lock; COMMIT releases it."""
    settings = app.config["PYSHELF_SETTINGS"]
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("advisory locks exist on PostgreSQL only")
    database = Database(settings.database_url)
    query = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
    with database.session() as session, database.session() as observer:
        begin_write(session)
        held = observer.scalar(query)
        observer.rollback()
        session.commit()
        after = observer.scalar(query)
    database.engine.dispose()
    assert (held, after) == (1, 0)


def test_sizes_and_counters_past_two_gib_are_stored(app: Any, admin_auth: dict[str, str]) -> None:
    """PostgreSQL's INTEGER stops at 2**31 - 1: sizes and mirror counters are BIGINT (0006)."""
    settings = app.config["PYSHELF_SETTINGS"]
    database = Database(settings.database_url)
    counters = Counters(database)
    counters.add(1, misses=1, fetched_bytes=3 << 30)
    counters.add(1, misses=1, fetched_bytes=3 << 30)  # a miss flushes at once
    upload(app.test_client(), admin_auth, *make_wheel("big-pkg", "1.0"))
    with database.session() as session:
        session.execute(File.__table__.update().values(size=5 << 30))
        session.commit()
        assert session.scalar(select(File.size)) == 5 << 30
        assert session.get(MirrorStats, 1).bytes_fetched == 6 << 30
    database.engine.dispose()


def test_a_mirror_page_name_longer_than_any_row_is_a_404_not_a_500(mc, fake_upstream) -> None:
    """PostgreSQL enforces VARCHAR(255), SQLite does not: such a name is nowhere upstream."""
    filename, data = make_wheel("m" * 260, "1.0")
    fake_upstream.add_file("m" * 260, filename, data)

    for name in ("n" * 300, "m" * 260):
        for index in ("root/pypi", "admin/dev"):
            response = mc.get(f"/{index}/+simple/{name}/", headers=JSON)
            assert response.status_code == 404, response.status
    assert fake_upstream.count("/simple/") == 0


def test_upstream_validators_too_long_for_their_columns_are_dropped() -> None:
    """An ETag over 255 characters (or a Last-Modified over 64) is not kept: PostgreSQL would
    refuse the row; the page is then fetched in full next time instead of revalidated."""
    page = json.dumps({"meta": {"api-version": "1.0"}, "name": "demo", "files": []}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
            self.send_header("ETag", '"' + "e" * 300 + '"')
            self.send_header("Last-Modified", "x" * 100)
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/simple/"
        fetched = UpstreamClient(retries=0, allow_private=TEST_ALLOW_PRIVATE).fetch_project(
            url, "demo"
        )
    finally:
        server.shutdown()
        server.server_close()
    assert fetched is not None
    assert (fetched.name, fetched.etag, fetched.last_modified) == ("demo", None, None)
