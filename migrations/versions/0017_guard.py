"""guard: release cooldown, exemptions and block rules per index; server-wide block rules

Revision ID: 0017_guard
Revises: 0016_bundles
Create Date: 2026-12-07 16:40:00.000000

Plain ADD COLUMN (no batch copy): the page-cache triggers on `indexes` (0005) stay in place.
"""

from alembic import op
import sqlalchemy as sa


revision = '0017_guard'
down_revision = '0016_bundles'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('indexes', sa.Column('mirror_min_age', sa.Integer(), server_default='0', nullable=False))
    op.add_column('indexes', sa.Column('mirror_min_age_exempt', sa.JSON(), server_default='[]', nullable=False))
    op.add_column('indexes', sa.Column('blocked', sa.JSON(), server_default='[]', nullable=False))
    op.add_column('indexes', sa.Column('blocked_digest', sa.String(length=64), server_default='', nullable=False))
    op.create_table('server_blocks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('spec', sa.String(length=1024), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_server_blocks'))
    )


def downgrade() -> None:
    op.drop_table('server_blocks')
    with op.batch_alter_table('indexes', schema=None) as batch_op:
        batch_op.drop_column('blocked_digest')
        batch_op.drop_column('blocked')
        batch_op.drop_column('mirror_min_age_exempt')
        batch_op.drop_column('mirror_min_age')
