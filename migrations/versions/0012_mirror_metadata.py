"""mirror: mirror_files (a cached mirrored file's size and the core metadata extracted from it)
and the page-cache triggers that forget a project's pages when one is recorded

Revision ID: 0012_mirror_metadata
Revises: 0009
Create Date: 2026-12-07 13:30:00.000000

Files cached before this revision show their size and metadata once they are cached again
(after an eviction, or `verify --repair` of a damaged copy); nothing is read at upgrade.
"""

from alembic import op
import sqlalchemy as sa

from app.data.schema import MIRROR_FILES_FORGET, drop_page_cache_triggers, page_cache_triggers


revision = '0012_mirror_metadata'
down_revision = '0011_promotions'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mirror_files',
    sa.Column('index_id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('normalized_name', sa.String(length=255), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('metadata_sha256', sa.String(length=64), nullable=True),
    sa.Column('is_sidecar', sa.Boolean(), nullable=False),
    sa.Column('cached_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['index_id'], ['indexes.id'], name=op.f('fk_mirror_files_index_id_indexes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('index_id', 'sha256', name=op.f('pk_mirror_files'))
    )
    with op.batch_alter_table('mirror_files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mirror_files_normalized_name'), ['normalized_name'], unique=False)
    for statement in page_cache_triggers(op.get_bind().dialect.name, MIRROR_FILES_FORGET):
        op.execute(statement)


def downgrade() -> None:
    for statement in drop_page_cache_triggers(op.get_bind().dialect.name, MIRROR_FILES_FORGET):
        op.execute(statement)
    with op.batch_alter_table('mirror_files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mirror_files_normalized_name'))

    op.drop_table('mirror_files')
