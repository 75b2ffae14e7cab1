"""search: SQLite's FTS5 table gets prefix indexes (2 to 4 characters), rebuilt from
search_documents

Revision ID: 0018_search_prefix
Revises: 0017_guard
Create Date: 2026-12-07 17:20:00.000000

FTS5 sets its options when the table is created: the table and its triggers are created again
(app/data/schema.py's fts_objects) and the index rebuilt from the stored text, in the
migration's transaction (about a minute per 100,000 documents). PostgreSQL: nothing to do.
"""

from alembic import op

from app.data.schema import drop_fts_objects, fts_objects


revision = "0018_search_prefix"
down_revision = "0017_guard"
branch_labels = None
depends_on = None


def _recreate(prefixes: str) -> None:
    dialect = op.get_bind().dialect.name
    if dialect != "sqlite":
        return
    for statement in [*drop_fts_objects(dialect), *fts_objects(dialect, prefixes)]:
        op.execute(statement)
    op.execute("INSERT INTO search_fts(search_fts) VALUES ('rebuild')")


def upgrade() -> None:
    _recreate("2 3 4")


def downgrade() -> None:
    _recreate("")
