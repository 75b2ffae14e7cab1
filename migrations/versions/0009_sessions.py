"""security: web_sessions (logout ends a session server-side) and tokens.read_paths (what an
index-scoped token may read, fixed when it was made)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 10:30:00.000000

Browsers logged in before this revision log in again (their cookies name no session). Tokens
limited to an index get the index and its bases as they are now.
"""

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def _resolution_paths(start: str, bases: dict[str, list[str]]) -> list[str]:
    """`start` and every index its bases reach (app/services/indexes.py resolution_order's set)."""
    seen: list[str] = []
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen or path not in bases:
            continue
        seen.append(path)
        todo.extend(bases[path])
    return sorted(seen)


def upgrade() -> None:
    op.create_table('web_sessions',
    sa.Column('id_sha256', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_web_sessions_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id_sha256', name=op.f('pk_web_sessions'))
    )
    with op.batch_alter_table('web_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_web_sessions_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_web_sessions_user_id'), ['user_id'], unique=False)

    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('read_paths', sa.JSON(), nullable=True))

    users = sa.table('users', sa.column('id', sa.Integer), sa.column('username', sa.String))
    indexes = sa.table(
        'indexes',
        sa.column('id', sa.Integer),
        sa.column('owner_id', sa.Integer),
        sa.column('name', sa.String),
        sa.column('bases', sa.JSON),
    )
    tokens = sa.table(
        'tokens',
        sa.column('id', sa.Integer),
        sa.column('index_id', sa.Integer),
        sa.column('read_paths', sa.JSON),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(indexes.c.id, users.c.username, indexes.c.name, indexes.c.bases).join(
            users, users.c.id == indexes.c.owner_id
        )
    ).all()
    path_of = {row.id: f"{row.username}/{row.name}" for row in rows}
    bases = {f"{row.username}/{row.name}": list(row.bases or ()) for row in rows}
    scoped = connection.execute(
        sa.select(tokens.c.id, tokens.c.index_id).where(tokens.c.index_id.is_not(None))
    ).all()
    for token_id, index_id in scoped:
        paths = _resolution_paths(path_of[index_id], bases) if index_id in path_of else []
        connection.execute(
            tokens.update().where(tokens.c.id == token_id).values(read_paths=paths)
        )


def downgrade() -> None:
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.drop_column('read_paths')

    with op.batch_alter_table('web_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_web_sessions_user_id'))
        batch_op.drop_index(batch_op.f('ix_web_sessions_expires_at'))

    op.drop_table('web_sessions')
