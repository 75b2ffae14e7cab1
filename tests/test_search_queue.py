"""Indexing after the response: uploads queue search jobs in their own transaction, a drain
(the worker's indexer, or a search first) indexes them, yanks and deletes apply at once
(app/services/fulltext.py, app/services/indexer.py)."""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

import pytest
from sqlalchemy import delete, func, select

from app import create_app
from app.core.config import Settings
from app.data.models import SearchJob
from app.services import fulltext, indexer
from tests.web.helpers import ADMIN, doc_upload_form, docs_zip, upload

JSON = {"Accept": "application/json"}


@pytest.fixture
def queued_client(app: Any, settings: Settings) -> Any:
    """A test client of an app that indexes after its responses, as a server does (the test
    client never closes a response: nothing runs after it until the test drains)."""
    queued_settings = dataclasses.replace(settings)
    # after the test defaults (tests/conftest.py), which index in the request
    object.__setattr__(queued_settings, "search_index_in_request", False)
    return create_app(queued_settings).test_client()


def names(client: Any, query: str) -> list[str]:
    response = client.get("/+search", query_string={"q": query}, headers=JSON)
    assert response.status == "200 OK"
    return [f"{hit['kind']}:{hit['name']}" for hit in response.get_json()["hits"]]


def jobs(client: Any) -> int:
    with client.application.extensions["pyshelf.db"].session() as session:
        return session.scalar(select(func.count()).select_from(SearchJob)) or 0


def drain(client: Any) -> int:
    app = client.application
    return fulltext.drain(app.extensions["pyshelf.db"], app.extensions["pyshelf.storage"])


def test_an_upload_is_queued_in_its_transaction_and_found_by_the_next_search(
    queued_client: Any,
) -> None:
    """The response comes before the indexing; the job outlives the process that queued it
    (a crash), and a search indexes what is queued before it looks."""
    description = "Parses quokka ledgers."
    assert upload(queued_client, "quokka", "1.0", description=description).status == "200 OK"
    docs = docs_zip({"html/index.html": b"<title>Guide</title><p>numbat billing</p>"})
    response = queued_client.post(
        "/admin/dev/", data=doc_upload_form("quokka", "1.0", docs), headers=ADMIN
    )
    assert response.status == "200 OK"

    assert jobs(queued_client) == 2

    assert names(queued_client, "quokka ledgers") == ["release:quokka"]

    assert jobs(queued_client) == 0
    assert names(queued_client, "numbat") == ["docs:quokka"]
    assert drain(queued_client) == 0


def test_a_search_indexes_what_is_queued_within_its_budget(
    queued_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog longer than a search's budget is left to the worker's indexer: the search
    answers with what is indexed so far."""
    upload(queued_client, "quoll", "1.0", description="Spotted marsupial.")
    monkeypatch.setattr(indexer, "CATCH_UP_SECONDS", -1.0)

    assert names(queued_client, "marsupial") == []
    assert jobs(queued_client) == 1

    monkeypatch.setattr(indexer, "CATCH_UP_SECONDS", 2.0)
    assert names(queued_client, "marsupial") == ["release:quoll"]


def test_a_yank_and_a_delete_apply_before_their_response(queued_client: Any) -> None:
    """A yanked or deleted version's text is gone at once, whatever is still queued."""
    upload(queued_client, "wombat", "1.0", description="Original dingo text.")
    upload(queued_client, "wombat", "2.0", description="Newer bilby text.")
    drain(queued_client)
    assert names(queued_client, "bilby") == ["release:wombat"]
    upload(queued_client, "wombat", "3.0", description="Queued galah text.")  # not drained

    response = queued_client.patch("/admin/dev/wombat/3.0", json={"yanked": True}, headers=ADMIN)
    assert response.status == "200 OK"
    response = queued_client.patch("/admin/dev/wombat/2.0", json={"yanked": True}, headers=ADMIN)
    assert response.status == "200 OK"

    assert names(queued_client, "bilby") == []
    assert names(queued_client, "galah") == []
    assert names(queued_client, "dingo") == ["release:wombat"]
    drain(queued_client)  # the queued upload reads what is current: still no hit of a yank
    assert names(queued_client, "galah") == []

    response = queued_client.delete("/admin/dev/wombat/1.0?force", headers=ADMIN)
    assert response.status == "200 OK"
    assert names(queued_client, "dingo") == []


def test_a_job_of_something_deleted_meanwhile_indexes_nothing(queued_client: Any) -> None:
    upload(queued_client, "emu", "1.0", description="Cassowary notes.")
    docs = docs_zip({"html/index.html": b"<p>kookaburra</p>"})
    queued_client.post("/admin/dev/", data=doc_upload_form("emu", "1.0", docs), headers=ADMIN)
    response = queued_client.delete("/admin/dev/emu?force", headers=ADMIN)
    assert response.status == "200 OK"

    drain(queued_client)

    assert jobs(queued_client) == 0
    assert names(queued_client, "cassowary") == []
    assert names(queued_client, "kookaburra") == []


def test_a_start_indexes_what_a_crash_left_queued(queued_client: Any, settings: Settings) -> None:
    upload(queued_client, "kangaroo", "1.0")
    drain(queued_client)  # the index is not empty: a start does not rebuild it
    upload(queued_client, "koala", "1.0", description="Eucalyptus facts.")

    assert fulltext.rebuild(settings, progress=False, only_if_empty=True) == {"queued": 1}

    assert names(queued_client, "eucalyptus") == ["release:koala"]


def test_in_request_indexing_drains_before_the_response(client: Any) -> None:
    """SEARCH_INDEX_IN_REQUEST (what in-process tests use): found right after the upload."""
    upload(client, "platypus", "1.0", description="Monotreme facts.")

    assert jobs(client) == 0
    assert names(client, "monotreme") == ["release:platypus"]


def test_an_item_another_process_took_first_does_not_end_the_drain(
    queued_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two drainers (a worker's indexer, a search) may pick the same first item: the one that
    loses goes on with the next, so an indexer never stops with items still queued."""
    upload(queued_client, "bandicoot", "1.0", description="Digging bandicoot notes.")
    upload(queued_client, "bettong", "1.0", description="Hopping bettong notes.")
    assert jobs(queued_client) == 2
    database = queued_client.application.extensions["pyshelf.db"]
    real_begin_write = fulltext.begin_write
    taken: list[int] = []

    def another_drainer_first(session: Any, **kwargs: Any) -> None:
        if not taken:  # the other drainer indexes the first item just before this one's lock
            with database.session() as other:
                first = other.scalar(select(SearchJob.id).order_by(SearchJob.id).limit(1))
                other.execute(delete(SearchJob).where(SearchJob.id == first))
                other.commit()
                taken.append(first)
        real_begin_write(session, **kwargs)

    monkeypatch.setattr(fulltext, "begin_write", another_drainer_first)

    assert drain_some(queued_client, max_jobs=1) == 1

    assert jobs(queued_client) == 0
    assert len(taken) == 1


def test_a_search_answers_when_the_write_lock_stays_busy(
    queued_client: Any, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    """A search waits for the write lock only within its catch-up budget: a long writer
    elsewhere leaves the queue to the worker's indexer, and the search answers with what is
    indexed (no error)."""
    if settings.database_url.startswith("postgresql"):
        pytest.skip("holds SQLite's write lock from a second connection")
    upload(queued_client, "numbat", "1.0", description="Termite eating numbat notes.")
    monkeypatch.setattr(indexer, "CATCH_UP_SECONDS", 0.3)
    writer = sqlite3.connect(settings.data_dir / "pyshelf.sqlite3", timeout=5)
    try:
        writer.execute("BEGIN IMMEDIATE")

        assert names(queued_client, "termite") == []

        assert jobs(queued_client) == 1
    finally:
        writer.rollback()
        writer.close()
    assert names(queued_client, "termite") == ["release:numbat"]


def drain_some(client: Any, max_jobs: int) -> int:
    app = client.application
    return fulltext.drain(
        app.extensions["pyshelf.db"], app.extensions["pyshelf.storage"], max_jobs=max_jobs
    )
