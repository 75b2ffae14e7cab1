"""advisories: OSV records (advisories, advisory_affected) and indexes.block_vulnerable

Revision ID: 0015_advisories
Revises: 0014_status
Create Date: 2026-12-07 16:40:00.000000

Nothing is loaded at upgrade: `pyshelf advisories import FILE` loads an OSV export. Existing
indexes keep serving every release (block_vulnerable NULL: off).
"""

from alembic import op
import sqlalchemy as sa


revision = '0015_advisories'
down_revision = '0014_status'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('advisories',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.Column('aliases', sa.JSON(), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=True),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('modified', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_advisories'))
    )
    op.create_table('advisory_affected',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('advisory_id', sa.String(length=128), nullable=False),
    sa.Column('normalized_name', sa.String(length=255), nullable=False),
    sa.Column('ranges', sa.JSON(), nullable=False),
    sa.Column('versions', sa.JSON(), nullable=False),
    sa.Column('fixed', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['advisory_id'], ['advisories.id'], name=op.f('fk_advisory_affected_advisory_id_advisories'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_advisory_affected'))
    )
    with op.batch_alter_table('advisory_affected', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_advisory_affected_advisory_id'), ['advisory_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_advisory_affected_normalized_name'), ['normalized_name'], unique=False)
    # A plain ADD COLUMN: a batch copy-and-rename of `indexes` would drop its page-cache triggers.
    op.add_column('indexes', sa.Column('block_vulnerable', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('indexes', schema=None) as batch_op:
        batch_op.drop_column('block_vulnerable')
    with op.batch_alter_table('advisory_affected', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_advisory_affected_normalized_name'))
        batch_op.drop_index(batch_op.f('ix_advisory_affected_advisory_id'))
    op.drop_table('advisory_affected')
    op.drop_table('advisories')
