"""performance: mirror_sidecars (a mirrored file's sha256 -> its cached PEP 658 sidecar)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 04:00:00.000000

Sidecars cached before this revision are recorded the next time each is asked for.
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mirror_sidecars',
    sa.Column('index_id', sa.Integer(), nullable=False),
    sa.Column('dist_sha256', sa.String(length=64), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('normalized_name', sa.String(length=255), nullable=False),
    sa.Column('metadata_sha256', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['index_id'], ['indexes.id'], name=op.f('fk_mirror_sidecars_index_id_indexes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('index_id', 'dist_sha256', name=op.f('pk_mirror_sidecars'))
    )


def downgrade() -> None:
    op.drop_table('mirror_sidecars')
