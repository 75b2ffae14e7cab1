"""The page cache (app/services/pagecache.py): stored pages, the triggers that forget them, and
the WSGI fast path (app/http/stored_pages.py CachedPages) that must answer exactly as the Flask
view does."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from app.data.models import CachedPage
from app.services import pagecache
from app.services.pagecache import PageKey
from tests.builders import make_wheel
from tests.conftest import TEST_DATABASE
from tests.test_upload import fast_password_hashes, upload  # noqa: F401 - autouse fixture

MIME_JSON = "application/vnd.pypi.simple.v1+json"
PAGE = "/admin/dev/+simple/fastpkg/"
VOLATILE = ("X-Request-ID", "Date")
HOLD_SECONDS = 5  # how long another writer holds the database: far above PUT_WAIT_MS


@pytest.fixture
def stored(client: Any, admin_auth: dict[str, str]) -> Any:
    """fastpkg 1.0 on admin/dev, its JSON page requested once (built by the view, stored)."""
    filename, data = make_wheel("fastpkg", "1.0")
    assert upload(client, filename, data, headers=admin_auth).status_code == 200
    first = client.get(PAGE, headers={"Accept": MIME_JSON})
    assert first.status_code == 200
    return first


def rows(app: Any) -> list[str]:
    """The variants stored for fastpkg."""
    with app.extensions["pyshelf.db"].session() as session:
        return list(
            session.scalars(
                select(CachedPage.variant).where(CachedPage.normalized_name == "fastpkg")
            )
        )


def headers_of(response: Any) -> dict[str, str]:
    """The headers to compare; flask-login reads the session on every response, so the view
    adds Cookie to Vary, which a public page does not depend on (the fast path leaves it out)."""
    headers = {k: v for k, v in response.headers.items() if k not in VOLATILE}
    headers["Vary"] = ", ".join(v for v in headers["Vary"].split(", ") if v != "Cookie")
    return headers


def test_a_stored_page_is_answered_with_the_views_exact_headers_and_body(
    app: Any, client: Any, stored: Any
) -> None:
    """The fast path (no Flask) and the view send the same status, headers and bytes."""
    assert rows(app) == [f"{MIME_JSON} "]

    again = client.get(PAGE, headers={"Accept": MIME_JSON})

    assert again.status == stored.status
    assert headers_of(again) == headers_of(stored)
    assert again.data == stored.data


def test_a_304_from_the_store_has_the_headers_of_the_views_304(
    app: Any, client: Any, stored: Any
) -> None:
    """If-None-Match with the stored ETag is a 304 without a body, as from the view."""
    etag = stored.headers["ETag"]
    validated = {"Accept": MIME_JSON, "If-None-Match": etag}
    from_store = client.get(PAGE, headers=validated)
    app.extensions["pyshelf.pages"].get = lambda *args: None  # force the view
    from_view = client.get(PAGE, headers=validated)

    assert from_store.status == from_view.status == "304 NOT MODIFIED"
    assert from_store.data == from_view.data == b""
    assert headers_of(from_store) == headers_of(from_view)


def test_head_of_a_stored_page_has_its_length_and_no_body(client: Any, stored: Any) -> None:
    head = client.head(PAGE, headers={"Accept": MIME_JSON})

    assert head.status == "200 OK"
    assert head.headers["Content-Length"] == str(len(stored.data))
    assert head.data == b""


def test_each_representation_is_stored_on_its_own(app: Any, client: Any, stored: Any) -> None:
    """HTML and JSON of one page, and pages under another URL prefix, are separate entries."""
    html = client.get(PAGE, headers={"Accept": "text/html"})
    prefixed = client.get(PAGE, headers={"Accept": MIME_JSON}, base_url="http://localhost/p")

    assert html.headers["Content-Type"] == "text/html; charset=utf-8"
    assert '"url": "/p/admin/dev/+f/' in prefixed.get_data(as_text=True)
    assert sorted(rows(app)) == sorted([f"{MIME_JSON} ", "text/html ", f"{MIME_JSON} /p"])


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE files SET yanked = TRUE",
        "DELETE FROM files",
        "UPDATE projects SET summary = 'changed'",
        "DELETE FROM projects",
        "UPDATE indexes SET title = 'changed'",
        "INSERT INTO mirror_pages (index_id, normalized_name, name, is_found, files, fetched_at)"
        " VALUES (1, 'fastpkg', 'fastpkg', TRUE, '[]', '2026-01-01 00:00:00')",
    ],
)
def test_any_write_to_what_a_page_is_made_of_forgets_it(
    app: Any, stored: Any, statement: str
) -> None:
    """The triggers catch every writer, even raw SQL (the CLI, imports, foreign key cascades)."""
    database = app.extensions["pyshelf.db"]
    with database.session() as session:
        before = app.extensions["pyshelf.pages"].generation(session)
        session.execute(text(statement))
        session.commit()
        assert app.extensions["pyshelf.pages"].generation(session) > before

    assert rows(app) == []


def test_a_write_to_another_project_keeps_the_page(
    app: Any, client: Any, admin_auth: dict[str, str], stored: Any
) -> None:
    filename, data = make_wheel("otherpkg", "1.0")
    assert upload(client, filename, data, headers=admin_auth).status_code == 200

    assert rows(app) == [f"{MIME_JSON} "]


def test_a_page_built_before_a_change_is_not_stored(app: Any, stored: Any) -> None:
    """A worker that read the data before another one committed a change must not store the
    page it built from the old data (the generation moved on)."""
    pages = app.extensions["pyshelf.pages"]
    database = app.extensions["pyshelf.db"]
    with database.session() as session:
        generation = pages.generation(session)
        session.execute(text("UPDATE files SET yanked = TRUE"))
        session.commit()
    key = PageKey("admin/dev", "fastpkg", f"{MIME_JSON} ")
    page = {"body": b"{}", "etag": "e", "cache_control": "no-cache", "is_public": True}

    assert pages.put(key, generation, **page, expires_at=None) is False
    assert rows(app) == []
    with database.session() as session:
        assert pages.put(key, pages.generation(session), **page, expires_at=None) is True


def test_a_busy_database_does_not_hold_up_a_page_it_only_skips_storing_it(
    app: Any, client: Any, admin_auth: dict[str, str], stored: Any
) -> None:
    """Storing a page is optional: it waits PUT_WAIT_MS (0.2 s) for the write lock, not the
    busy timeout (30 s), so a read is neither held up nor failed (503) by another writer."""
    from app.data import db

    filename, data = make_wheel("fastpkg", "1.1")
    assert upload(client, filename, data, headers=admin_auth).status_code == 200
    assert rows(app) == []  # the upload dropped the stored page
    database = app.extensions["pyshelf.db"]
    ready, done = threading.Event(), threading.Event()

    def hold_the_write_lock() -> None:
        with database.session() as session:
            db.begin_write(session)
            ready.set()
            done.wait(HOLD_SECONDS)  # a writer that waited for the lock would get it then
            session.rollback()

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    try:
        assert ready.wait(10)
        response = client.get(PAGE, headers={"Accept": MIME_JSON})
        stored_meanwhile = rows(app)
    finally:
        done.set()
        holder.join(10)

    assert response.status_code == 200, response.status
    assert filename in response.get_data(as_text=True)
    assert stored_meanwhile == []  # the view gave up storing instead of waiting for the lock
    assert client.get(PAGE, headers={"Accept": MIME_JSON}).status_code == 200
    assert rows(app) == [f"{MIME_JSON} "]  # with the writer gone, the next request stores it


# --- a worker's copies on PostgreSQL (pagecache.Watch) -----------------------------------------

on_postgresql = pytest.mark.skipif(
    TEST_DATABASE == "sqlite", reason="copies are kept on PostgreSQL only (its notices)"
)
WATCH_WAIT_SECONDS = 10  # for the listener to (re)connect on a busy machine


def wait_for(condition: Any, seconds: float = WATCH_WAIT_SECONDS) -> bool:
    """Poll `condition` every 20 ms until it holds or `seconds` pass; whether it held."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


@pytest.fixture
def watched(app: Any, stored: Any) -> Any:
    """The app's page cache keeping copies, as in a gunicorn worker; its database reads counted
    in `pages.reads`."""
    pages = app.extensions["pyshelf.pages"]
    pages.reads = 0
    for want_gzip, lookup in pages.lookups.items():
        one = lookup.one

        def counted(*, _one: Any = one, **params: Any) -> Any:
            pages.reads += 1
            return _one(**params)

        pages.lookups[want_gzip] = SimpleNamespace(one=counted)
    pages.watch_changes()
    assert wait_for(pages.watch.is_current)
    yield pages
    pages.watch.stop()


def yanked(client: Any) -> bool:
    """Whether fastpkg's JSON page says its file is yanked."""
    response = client.get(PAGE, headers={"Accept": MIME_JSON})
    assert response.status_code == 200
    return response.get_json()["files"][0]["yanked"] is not False


def change_elsewhere(app: Any, statement: str) -> None:
    """Commit `statement` on a connection of its own, as another worker or replica would."""
    engine = create_engine(app.extensions["pyshelf.db"].url)
    try:
        with engine.begin() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


@on_postgresql
def test_a_worker_answers_a_stored_page_from_its_copy_without_a_query(
    client: Any, watched: Any, stored: Any
) -> None:
    first = client.get(PAGE, headers={"Accept": MIME_JSON})
    reads = watched.reads
    again = [client.get(PAGE, headers={"Accept": MIME_JSON}) for _ in range(5)]
    etag = {"Accept": MIME_JSON, "If-None-Match": stored.headers["ETag"]}
    validated = client.get(PAGE, headers=etag)

    assert first.data == stored.data
    assert all(a.data == stored.data and a.headers["ETag"] == stored.headers["ETag"] for a in again)
    assert validated.status == "304 NOT MODIFIED"
    assert watched.reads == reads  # none since the copy was kept


@on_postgresql
def test_a_change_committed_elsewhere_shows_within_the_bound(
    app: Any, client: Any, watched: Any
) -> None:
    """Every request that starts MAX_STALE_SECONDS after another worker's commit sees it."""
    assert not yanked(client)

    change_elsewhere(app, "UPDATE files SET yanked = TRUE")
    committed = time.monotonic()
    stale_starts = []
    deadline = committed + pagecache.MAX_STALE_SECONDS + WATCH_WAIT_SECONDS
    while time.monotonic() < deadline:
        started = time.monotonic()
        if yanked(client):
            break
        stale_starts.append(started - committed)

    assert yanked(client)
    assert all(late <= pagecache.MAX_STALE_SECONDS for late in stale_starts), stale_starts


@on_postgresql
def test_the_notice_forgets_copies_without_waiting_for_the_recheck(
    app: Any, client: Any, watched: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the periodic check made rare, only PostgreSQL's notice can make the change show."""
    monkeypatch.setattr(pagecache, "MAX_STALE_SECONDS", 60.0)
    monkeypatch.setattr(pagecache, "RECHECK_SECONDS", 30.0)
    time.sleep(2 * 0.25)  # the watch's current wait (the old RECHECK_SECONDS) ends
    assert not yanked(client)

    change_elsewhere(app, "UPDATE files SET yanked = TRUE")

    assert wait_for(lambda: yanked(client), seconds=5)


@on_postgresql
def test_a_commit_in_this_process_shows_on_the_very_next_request(
    app: Any, client: Any, watched: Any
) -> None:
    assert not yanked(client)
    with app.extensions["pyshelf.db"].session() as session:
        session.execute(text("UPDATE files SET yanked = TRUE"))
        session.commit()

    assert yanked(client)


@on_postgresql
def test_without_its_listening_connection_a_worker_reads_every_page_again(
    app: Any, client: Any, watched: Any, stored: Any
) -> None:
    """The listener's backend killed: copies are not served until it listens again."""
    client.get(PAGE, headers={"Accept": MIME_JSON})
    change_elsewhere(
        app,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'pyshelf page watch'",
    )

    assert wait_for(lambda: not watched.watch.is_current(), seconds=2)
    reads = watched.reads
    assert client.get(PAGE, headers={"Accept": MIME_JSON}).data == stored.data
    assert watched.reads > reads
    assert wait_for(watched.watch.is_current)  # listening again (after RELISTEN_SECONDS)


@pytest.mark.skipif(TEST_DATABASE != "sqlite", reason="SQLite's behaviour")
def test_on_sqlite_no_copies_are_kept(app: Any, client: Any, stored: Any) -> None:
    pages = app.extensions["pyshelf.pages"]
    pages.watch_changes()

    assert pages.watch is None


def test_clearing_the_cache_moves_the_generation_on(app: Any, stored: Any) -> None:
    """Other replicas' workers forget their copies too (their notice, or their next check)."""
    pages = app.extensions["pyshelf.pages"]
    with app.extensions["pyshelf.db"].session() as session:
        before = pages.generation(session)
        pagecache.clear(session)
        session.commit()
        assert pages.generation(session) == before + 1
    assert rows(app) == []
