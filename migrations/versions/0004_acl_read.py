"""private read access: indexes.acl_read (who may read an index; default everyone)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 14:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing indexes stay readable by everyone, as before this revision.
    with op.batch_alter_table('indexes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('acl_read', sa.JSON(), server_default='[":ANONYMOUS:"]', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('indexes', schema=None) as batch_op:
        batch_op.drop_column('acl_read')
