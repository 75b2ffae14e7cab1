"""page cache: on PostgreSQL, a bump of page_cache_state's generation sends NOTIFY pyshelf_pages
at commit (workers forget their copies of stored pages); nothing on SQLite

Revision ID: 0021_page_notices
Revises: 0020_search_jobs
Create Date: 2026-12-07 19:45:00.000000

No data changes: stored pages stay; workers started after the upgrade listen for the notices.
"""

from alembic import op

from app.data.schema import DROP_PAGE_NOTICE_OBJECTS, page_notice_objects


revision = '0021_page_notices'
down_revision = '0020_search_jobs'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in page_notice_objects(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in DROP_PAGE_NOTICE_OBJECTS:
            op.execute(statement)
