"""provenance: file_provenance holds the PEP 740 attestations uploaded with a file

Revision ID: 0019_provenance
Revises: 0018_search_prefix
Create Date: 2026-12-07 17:20:00.000000

Existing files have no attestations: their pages say `provenance: null` (PEP 740).
"""

from alembic import op
import sqlalchemy as sa


revision = '0019_provenance'
down_revision = '0018_search_prefix'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('file_provenance',
    sa.Column('file_id', sa.Integer(), nullable=False),
    sa.Column('provenance', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['file_id'], ['files.id'], name=op.f('fk_file_provenance_file_id_files'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('file_id', name=op.f('pk_file_provenance'))
    )


def downgrade() -> None:
    op.drop_table('file_provenance')
