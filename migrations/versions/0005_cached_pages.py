"""performance: cached_pages (rendered simple pages shared by all workers) and the triggers
that forget them when what they were made from changes

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 01:00:00.000000

The triggers are the one place that invalidates cached pages: every writer (uploads, yanks,
deletes, the JSON API, the web UI, the CLI, devpi imports, the mirror's page fetches, foreign
key cascades) goes through them, in its own transaction. A change to a file, project or
mirror page forgets the pages of that project name on every index (a stage shows its bases'
files); a change to an index (bases, acl_read, mirror settings, deletion) forgets every page.
Each also bumps page_cache_state.generation, which app/pagecache.py checks before storing a
page, so a page built from data older than the change is never stored.

On SQLite, a later migration that rebuilds files, projects, mirror_pages or indexes
(batch_alter_table's copy-and-rename) drops their triggers: it must create them again
(_sqlite_triggers below).
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

BUMP = "UPDATE page_cache_state SET generation = generation + 1;"
# table -> SQL (with ROW standing for OLD or NEW) naming the project whose pages go stale
FORGET_NAME = {
    'projects': "DELETE FROM cached_pages WHERE normalized_name = ROW.normalized_name;",
    'mirror_pages': "DELETE FROM cached_pages WHERE normalized_name = ROW.normalized_name;",
    'files': (
        "DELETE FROM cached_pages WHERE normalized_name IN "
        "(SELECT normalized_name FROM projects WHERE id = ROW.project_id);"
    ),
}
FORGET_ALL = "DELETE FROM cached_pages;"
EVENTS = ('INSERT', 'UPDATE', 'DELETE')


def _sqlite_triggers() -> list[str]:
    statements = []
    for table, forget in {**FORGET_NAME, 'indexes': FORGET_ALL}.items():
        for event in EVENTS:
            rows = {'INSERT': ['NEW'], 'UPDATE': ['OLD', 'NEW'], 'DELETE': ['OLD']}[event]
            body = " ".join(forget.replace('ROW.', f'{row}.') for row in rows)
            statements.append(
                f"CREATE TRIGGER cached_pages_{table}_{event.lower()} AFTER {event} ON {table} "
                f"FOR EACH ROW BEGIN {body} {BUMP} END"
            )
    return statements


def _postgresql_triggers() -> list[str]:
    statements = []
    for table, forget in {**FORGET_NAME, 'indexes': FORGET_ALL}.items():
        old, new = forget.replace('ROW.', 'OLD.'), forget.replace('ROW.', 'NEW.')
        statements.append(
            f"CREATE FUNCTION cached_pages_forget_{table}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN IF TG_OP <> 'INSERT' THEN {old} END IF; "
            f"IF TG_OP <> 'DELETE' THEN {new} END IF; {BUMP} RETURN NULL; END $$"
        )
        statements.append(
            f"CREATE TRIGGER cached_pages_{table} AFTER INSERT OR UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION cached_pages_forget_{table}()"
        )
    return statements


def upgrade() -> None:
    op.create_table('cached_pages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('normalized_name', sa.String(length=255), nullable=False),
    sa.Column('index_path', sa.String(length=130), nullable=False),
    sa.Column('variant', sa.String(length=1024), nullable=False),
    sa.Column('etag', sa.String(length=64), nullable=False),
    sa.Column('cache_control', sa.String(length=64), nullable=False),
    sa.Column('is_public', sa.Boolean(), nullable=False),
    sa.Column('expires_epoch_seconds', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    # Bodies last: SQLite then reads the small columns without walking a body's overflow pages.
    sa.Column('has_gzip', sa.Boolean(), nullable=False),
    sa.Column('body_gzip', sa.LargeBinary(), nullable=True),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cached_pages')),
    sa.UniqueConstraint('normalized_name', 'index_path', 'variant', name=op.f('uq_cached_pages_normalized_name_index_path_variant'))
    )
    op.create_table('page_cache_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('generation', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_page_cache_state'))
    )
    op.execute("INSERT INTO page_cache_state (id, generation) VALUES (1, 0)")
    dialect = op.get_bind().dialect.name
    if dialect == 'sqlite':
        statements = _sqlite_triggers()
    elif dialect == 'postgresql':
        statements = _postgresql_triggers()
    else:
        raise NotImplementedError(f"cached_pages triggers for {dialect}")
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table in (*FORGET_NAME, 'indexes'):
        if dialect == 'sqlite':
            for event in EVENTS:
                op.execute(f"DROP TRIGGER IF EXISTS cached_pages_{table}_{event.lower()}")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS cached_pages_{table} ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS cached_pages_forget_{table}()")
    op.drop_table('page_cache_state')
    op.drop_table('cached_pages')
