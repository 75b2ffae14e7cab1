"""PostgreSQL: sizes and counters as 64-bit integers (files over 2 GiB, mirror traffic)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 02:00:00.000000

PostgreSQL's INTEGER is 32-bit: mirror_stats.bytes_fetched would overflow after 2 GiB of
mirror traffic, and a file over 2 GiB could not be recorded. SQLite's INTEGER already holds 64
bits, and rebuilding these tables there (batch mode) would drop 0005's triggers on `files`:
SQLite is left as it is (its declared type only differs in name).
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

COLUMNS = [
    ('files', 'size'),
    ('doc_sets', 'size'),
    ('doc_sets', 'uncompressed_bytes'),
    ('mirror_stats', 'hits'),
    ('mirror_stats', 'misses'),
    ('mirror_stats', 'bytes_fetched'),
]


def upgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        return
    for table, column in COLUMNS:
        op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer(),
                        existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        return
    for table, column in COLUMNS:
        op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger(),
                        existing_nullable=False)
