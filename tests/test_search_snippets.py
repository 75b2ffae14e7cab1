"""Snippets are cut from the stored text of the page's hits, on both engines: FTS5's snippet()
and PostgreSQL's ts_headline tokenize each hit's whole text (issue #19's p99)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, select

from app.data.db import Database
from app.data.models import Index
from app.services import fulltext_engines, search

FILLER = " ".join(f"filler{n}" for n in range(2_000))


def test_snippets_mark_the_first_match_of_a_long_text_without_the_engines_highlighter(
    app: Any,
) -> None:
    """A word deep in a long page, and again many times after it: the snippet is a window that
    starts just before its first occurrence and marks every occurrence in it; no statement asks
    the engine for a snippet or headline."""
    database: Database = app.extensions["pyshelf.db"]
    with database.session() as session:
        index_id = session.scalars(select(Index.id)).first()
        body = f"{FILLER} the Reconciliation manifests " + "reconcile again " * 200
        fulltext_engines.write_documents(
            session,
            [
                {
                    "index_id": index_id,
                    "kind": "docs",
                    "normalized_name": "ledger",
                    "version": "1.0",
                    "title": "Ledger guide",
                    "body": body,
                },
                {
                    "index_id": index_id,
                    "kind": "release",
                    "normalized_name": "cafe-tools",
                    "name": "cafe-tools",
                    "summary": "Tools for the Café owner",
                },
            ],
        )
        session.commit()
    statements: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        statements.append(statement)

    event.listen(database.engine, "before_cursor_execute", note)
    try:
        with database.session() as session:
            [docs] = search.search(session, search.parse_query("reconciling"), limit=10)
            [cafe] = search.search(session, search.parse_query("cafe"), limit=10)
    finally:
        event.remove(database.engine, "before_cursor_execute", note)

    assert docs.snippet.startswith("…filler")
    assert "the \x02Reconciliation\x03 manifests \x02reconcile\x03 again" in docs.snippet
    assert docs.snippet.endswith("…")
    assert len(docs.snippet_text) < search.SNIPPET_CHARS + search.SNIPPET_CONTEXT_CHARS + 40
    assert "\x02Cafe\x03" in cafe.snippet  # accent-insensitive, shown folded
    assert not [s for s in statements if "snippet(" in s or "ts_headline" in s], statements
