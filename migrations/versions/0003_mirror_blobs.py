"""operations: mirror_blobs (what the mirror cached, for the cache cap and backups)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 10:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mirror_blobs',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('index_id', sa.Integer(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('cached_at', sa.DateTime(), nullable=False),
    sa.Column('last_access_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['index_id'], ['indexes.id'], name=op.f('fk_mirror_blobs_index_id_indexes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('sha256', name=op.f('pk_mirror_blobs'))
    )
    with op.batch_alter_table('mirror_blobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mirror_blobs_index_id'), ['index_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_mirror_blobs_last_access_at'), ['last_access_at'], unique=False)
    # Files cached before this revision are not listed yet: `entrypoint.sh cache prune` (and
    # `verify --repair`) adopt them from the blob store, so the cap counts them too.


def downgrade() -> None:
    with op.batch_alter_table('mirror_blobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mirror_blobs_last_access_at'))
        batch_op.drop_index(batch_op.f('ix_mirror_blobs_index_id'))

    op.drop_table('mirror_blobs')
