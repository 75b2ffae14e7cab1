"""search: on PostgreSQL, the GIN index of search_documents gets no pending list (fastupdate
off), and the entries pending now are merged into it; nothing on SQLite

Revision ID: 0022_search_gin_fastupdate
Revises: 0021_page_notices
Create Date: 2026-12-07 23:00:00.000000

Every search scanned the whole pending list (up to gin_pending_list_limit, 4 MB: 5-20 ms a
statement at 300,000 documents, bench/RESULTS.md); without it, inserts update the index in place.
No data changes; merging what is pending takes seconds at most.
"""

from alembic import op


revision = '0022_search_gin_fastupdate'
down_revision = '0021_page_notices'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER INDEX ix_search_documents_tsv SET (fastupdate = off)")
        op.execute("SELECT gin_clean_pending_list('ix_search_documents_tsv')")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER INDEX ix_search_documents_tsv RESET (fastupdate)")
