"""security: mirror_holdings (which mirror fetched which blob itself: the only ones it serves)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 10:30:00.000000

Every blob recorded in mirror_blobs was fetched by the mirror recorded with it: that mirror
holds it, so an upgrade re-downloads nothing. A mirror that served a blob it had not fetched
(another index's, by its sha256) holds nothing and downloads it from its upstream next time.
"""

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mirror_holdings',
    sa.Column('index_id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('fetched_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['index_id'], ['indexes.id'], name=op.f('fk_mirror_holdings_index_id_indexes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('index_id', 'sha256', name=op.f('pk_mirror_holdings'))
    )
    with op.batch_alter_table('mirror_holdings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mirror_holdings_sha256'), ['sha256'], unique=False)
    op.execute(
        'INSERT INTO mirror_holdings (index_id, sha256, fetched_at) '
        'SELECT index_id, sha256, cached_at FROM mirror_blobs'
    )


def downgrade() -> None:
    with op.batch_alter_table('mirror_holdings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mirror_holdings_sha256'))

    op.drop_table('mirror_holdings')
