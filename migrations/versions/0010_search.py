"""search: search_documents (full-text search of releases, docs pages and mirrored names) and,
on SQLite, the FTS5 table over it with its triggers

Revision ID: 0010_search
Revises: 0009
Create Date: 2026-12-07 13:40:00.000000

The FTS5 table and triggers are app/data/schema.py's (fts_objects): a new database gets the same
text. The index starts empty: `pyshelf reindex` fills it from what the database holds.
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from app.data.schema import drop_fts_objects, fts_objects


revision = '0010_search'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('search_documents',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('index_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=True),
    sa.Column('docset_id', sa.Integer(), nullable=True),
    sa.Column('mirror_page_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('normalized_name', sa.String(length=255), nullable=False),
    sa.Column('version', sa.String(length=128), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.Column('keywords', sa.Text(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('tsv', postgresql.TSVECTOR().with_variant(sa.Text(), 'sqlite'), nullable=True),
    sa.ForeignKeyConstraint(['docset_id'], ['doc_sets.id'], name=op.f('fk_search_documents_docset_id_doc_sets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['index_id'], ['indexes.id'], name=op.f('fk_search_documents_index_id_indexes'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['mirror_page_id'], ['mirror_pages.id'], name=op.f('fk_search_documents_mirror_page_id_mirror_pages'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_search_documents_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_search_documents'))
    )
    with op.batch_alter_table('search_documents', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_search_documents_docset_id'), ['docset_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_search_documents_index_id'), ['index_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_search_documents_mirror_page_id'), ['mirror_page_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_search_documents_normalized_name'), ['normalized_name'], unique=False)
        batch_op.create_index(batch_op.f('ix_search_documents_project_id'), ['project_id'], unique=False)
        batch_op.create_index('ix_search_documents_tsv', ['tsv'], unique=False, postgresql_using='gin')
    for statement in fts_objects(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    for statement in drop_fts_objects(op.get_bind().dialect.name):
        op.execute(statement)
    with op.batch_alter_table('search_documents', schema=None) as batch_op:
        batch_op.drop_index('ix_search_documents_tsv', postgresql_using='gin')
        batch_op.drop_index(batch_op.f('ix_search_documents_project_id'))
        batch_op.drop_index(batch_op.f('ix_search_documents_normalized_name'))
        batch_op.drop_index(batch_op.f('ix_search_documents_mirror_page_id'))
        batch_op.drop_index(batch_op.f('ix_search_documents_index_id'))
        batch_op.drop_index(batch_op.f('ix_search_documents_docset_id'))

    op.drop_table('search_documents')
