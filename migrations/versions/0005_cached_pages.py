"""performance: cached_pages (rendered simple pages shared by all workers) and the triggers
that forget them when what they were made from changes

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 01:00:00.000000

The triggers and the state row are app/data/schema.py's (page_cache_triggers): a new database
gets the same text without running this migration. On SQLite, a later migration that
rebuilds files, projects, mirror_pages or indexes (batch_alter_table's copy-and-rename)
drops their triggers: it must create them again.
"""

from alembic import op
import sqlalchemy as sa

from app.data.schema import PAGE_CACHE_STATE_ROW, drop_page_cache_triggers, page_cache_triggers


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cached_pages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('normalized_name', sa.String(length=255), nullable=False),
    sa.Column('index_path', sa.String(length=130), nullable=False),
    sa.Column('variant', sa.String(length=1024), nullable=False),
    sa.Column('etag', sa.String(length=64), nullable=False),
    sa.Column('cache_control', sa.String(length=64), nullable=False),
    sa.Column('is_public', sa.Boolean(), nullable=False),
    sa.Column('expires_epoch_seconds', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    # Bodies last: SQLite then reads the small columns without walking a body's overflow pages.
    sa.Column('has_gzip', sa.Boolean(), nullable=False),
    sa.Column('body_gzip', sa.LargeBinary(), nullable=True),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cached_pages')),
    sa.UniqueConstraint('normalized_name', 'index_path', 'variant', name=op.f('uq_cached_pages_normalized_name_index_path_variant'))
    )
    op.create_table('page_cache_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('generation', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_page_cache_state'))
    )
    op.execute(PAGE_CACHE_STATE_ROW)
    for statement in page_cache_triggers(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    for statement in drop_page_cache_triggers(op.get_bind().dialect.name):
        op.execute(statement)
    op.drop_table('page_cache_state')
    op.drop_table('cached_pages')
