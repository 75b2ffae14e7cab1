"""How the database runs the search's statements: the full-text match drives every read, so a
search costs what its matches cost, not what the readable indexes hold (issue #19's p99)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, select, text

from app.data.db import Database
from app.data.models import Index
from app.services import fulltext_engines, search
from tests.conftest import TEST_DATABASE

sqlite_only = pytest.mark.skipif(
    TEST_DATABASE != "sqlite", reason="SQLite's planner; PostgreSQL's GIN scan is checked by bench"
)


def statements_of(database: Database, query: str, index_ids: list[int]) -> list[tuple[str, Any]]:
    """The SELECT statements one search runs, with their parameters."""
    seen: list[tuple[str, Any]] = []

    def note(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_rest: Any) -> None:
        if statement.lstrip().startswith("SELECT"):
            seen.append((statement, parameters))

    event.listen(database.engine, "before_cursor_execute", note)
    try:
        with database.session() as session:
            search.search(session, search.parse_query(query), limit=10, index_ids=index_ids)
    finally:
        event.remove(database.engine, "before_cursor_execute", note)
    return seen


@sqlite_only
@pytest.mark.parametrize("query", ["flask", '"flask helpers"', "fla*", "docs:flask"])
def test_a_search_limited_to_readable_indexes_reads_its_matches_not_the_indexes(
    app: Any, monkeypatch: pytest.MonkeyPatch, query: str
) -> None:
    """With a private index on the server, a search by someone who may not read it names
    the readable indexes: SQLite then read every document of those indexes and ran the MATCH
    once per document (41 s for `docs:` at 300,000 documents), and listed the named releases
    by scanning the indexes too (3 s). Each statement must start from the match or the name."""
    monkeypatch.setattr(search, "BROAD_MATCHES", 2)  # the named and recent statements run too
    database: Database = app.extensions["pyshelf.db"]
    with database.session() as session:
        index_ids = list(session.scalars(select(Index.id)))
        rows = [
            {
                "index_id": index_ids[0],
                "kind": kind,
                "normalized_name": f"flask-{n}",
                "name": f"flask-{n}",
                "version": "1.0",
                "summary": "flask helpers",
                "body": "flask helpers" if kind == "docs" else "",
            }
            for n in range(5)
            for kind in ("release", "docs")
        ]
        fulltext_engines.write_documents(session, rows)
        session.commit()

    statements = statements_of(database, query, index_ids)
    assert len(statements) >= 3, (
        statements
    )  # count, then named and recent, or ranked; snippets' text

    with database.engine.connect() as connection:
        for statement, parameters in statements:
            plan = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            # The outermost loop: the first table read (a count's subquery is a co-routine).
            first = next(row[3] for row in plan if row[3].startswith(("SCAN", "SEARCH")))
            if "search_fts MATCH" in statement and "EXISTS" not in statement:
                assert first.startswith("SCAN search_fts VIRTUAL TABLE"), (statement, plan)
            elif "normalized_name" not in statement:  # the snippets' text: the page's rows
                assert "USING INTEGER PRIMARY KEY" in first, (statement, plan)
            else:  # the named releases: the name's range of the name index
                assert "ix_search_documents_normalized_name" in first, (statement, plan)
                assert "normalized_name>?" in first, (statement, plan)


@sqlite_only
def test_a_weighed_search_ranks_by_the_columns_it_matches_in_without_bm25(app: Any) -> None:
    """bm25() first counts every document holding each word (FTS5's IDF): a common word with a
    rare one cost 60-150 ms at 300,000 documents however few hold both. The fields' weights
    come from the columns in which the whole query matches; equal weights, the newest first."""
    database: Database = app.extensions["pyshelf.db"]
    with database.session() as session:
        index_id = session.scalars(select(Index.id)).first()
        rows = [
            {"normalized_name": "in-description", "description": "common rare"},
            {"normalized_name": "in-summary", "summary": "rare common"},
            {"normalized_name": "spread", "summary": "common", "description": "rare rare rare"},
            {"normalized_name": "other", "summary": "common"},
        ]
        fulltext_engines.write_documents(
            session, [{"index_id": index_id, "kind": "release", "name": "", **r} for r in rows]
        )
        session.commit()

    statements = statements_of(database, "common rare", [index_id])
    with database.session() as session:
        hits = search.search(session, search.parse_query("common rare"), limit=10)

    assert [h.normalized_name for h in hits] == ["in-summary", "in-description", "spread"]
    assert not [s for s, _ in statements if "bm25(" in s], statements


@pytest.mark.skipif(TEST_DATABASE == "sqlite", reason="PostgreSQL's plan cache")
def test_postgresql_plans_each_search_for_its_words(app: Any) -> None:
    """psycopg prepares a statement run five times, and PostgreSQL then reuses a generic plan,
    made without the tsquery: it built the GIN bitmap of every match of a common word before
    counting (40-100 ms at 300,000 documents, bench/RESULTS.md) where a plan that knows the
    word reads BROAD_MATCHES rows. Searches plan each statement with its words."""
    database: Database = app.extensions["pyshelf.db"]
    with database.session() as session:
        for _ in range(12):  # past psycopg's prepare threshold and PostgreSQL's custom plans
            search.search(session, search.parse_query("flask"), limit=10)
            mode = session.execute(text("SHOW plan_cache_mode")).scalar()
            session.commit()
            assert mode == "force_custom_plan"
        assert session.execute(text("SHOW plan_cache_mode")).scalar() == "auto"  # LOCAL
