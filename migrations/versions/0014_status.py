"""status: PEP 792 project status on projects (set by owners and uploaders) and on
mirror_pages (the upstream's, passed through)

Revision ID: 0014_status
Revises: 0012_mirror_metadata
Create Date: 2026-12-07 16:40:00.000000

Existing projects and cached pages have no status (active); a mirror page learns its upstream
status on its next fetch.
"""

from alembic import op
import sqlalchemy as sa


revision = '0014_status'
down_revision = '0012_mirror_metadata'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE (no batch copy): a copied `projects` table would lose its page-cache
    # triggers on SQLite.
    op.add_column('projects', sa.Column('status', sa.String(length=16), nullable=True))
    op.add_column('projects', sa.Column('status_reason', sa.Text(), nullable=True))
    op.add_column('projects', sa.Column('status_by', sa.String(length=64), nullable=True))
    op.add_column('projects', sa.Column('status_at', sa.DateTime(), nullable=True))
    op.add_column('mirror_pages', sa.Column('status', sa.String(length=16), nullable=True))
    op.add_column('mirror_pages', sa.Column('status_reason', sa.Text(), nullable=True))


def downgrade() -> None:
    # SQLite 3.35+ drops a column in place, keeping the table's triggers.
    op.drop_column('mirror_pages', 'status_reason')
    op.drop_column('mirror_pages', 'status')
    op.drop_column('projects', 'status_at')
    op.drop_column('projects', 'status_by')
    op.drop_column('projects', 'status_reason')
    op.drop_column('projects', 'status')
