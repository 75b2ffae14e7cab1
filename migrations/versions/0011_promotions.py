"""promote: promotions (a release copied into an index from another stage: who, from where, when)

Revision ID: 0011_promotions
Revises: 0009
Create Date: 2026-12-07 13:30:00.000000

Releases copied before this revision have no record; nothing else changes.
"""

from alembic import op
import sqlalchemy as sa


revision = '0011_promotions'
down_revision = '0010_search'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('promotions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('index_id', sa.Integer(), nullable=False),
    sa.Column('normalized_name', sa.String(length=255), nullable=False),
    sa.Column('version', sa.String(length=128), nullable=False),
    sa.Column('source_path', sa.String(length=130), nullable=False),
    sa.Column('promoted_by', sa.String(length=64), nullable=False),
    sa.Column('promoted_at', sa.DateTime(), nullable=False),
    sa.Column('filenames', sa.JSON(), nullable=False),
    sa.Column('has_docs', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['index_id'], ['indexes.id'], name=op.f('fk_promotions_index_id_indexes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_promotions'))
    )
    with op.batch_alter_table('promotions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_promotions_index_id'), ['index_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('promotions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_promotions_index_id'))

    op.drop_table('promotions')
