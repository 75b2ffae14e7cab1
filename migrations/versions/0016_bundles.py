"""bundles: indexes.offline (a mirror that never asks a network) and bundle_imports (the last
bundle imported into each project of an index: what makes a re-import a no-op and an older
bundle a refused replay)

Revision ID: 0016_bundles
Revises: 0015_advisories
Create Date: 2026-12-07 16:30:00.000000

Existing indexes stay online (offline false); no bundle was imported before this revision.
"""

from alembic import op
import sqlalchemy as sa


revision = '0016_bundles'
down_revision = '0015_advisories'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('indexes', sa.Column('offline', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table('bundle_imports',
    sa.Column('index_id', sa.Integer(), nullable=False),
    sa.Column('normalized_name', sa.String(length=255), nullable=False),
    sa.Column('bundle_id', sa.String(length=64), nullable=False),
    sa.Column('bundle_created_at', sa.DateTime(), nullable=False),
    sa.Column('imported_at', sa.DateTime(), nullable=False),
    sa.Column('files', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['index_id'], ['indexes.id'], name=op.f('fk_bundle_imports_index_id_indexes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('index_id', 'normalized_name', name=op.f('pk_bundle_imports'))
    )


def downgrade() -> None:
    op.drop_table('bundle_imports')
    with op.batch_alter_table('indexes', schema=None) as batch_op:
        batch_op.drop_column('offline')
