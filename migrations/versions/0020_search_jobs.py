"""search jobs: the queue of changes full-text search indexes after the response

Revision ID: 0020_search_jobs
Revises: 0019_provenance
Create Date: 2026-12-07 20:00:00.000000

Uploads and stored mirror pages are indexed after their response is sent (app/services/
fulltext.py); the queue is empty at upgrade, so nothing else changes.
"""

from alembic import op
import sqlalchemy as sa


revision = '0020_search_jobs'
down_revision = '0019_provenance'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('search_jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('target_id', sa.Integer(), nullable=False),
    sa.Column('queued_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_search_jobs'))
    )


def downgrade() -> None:
    op.drop_table('search_jobs')
