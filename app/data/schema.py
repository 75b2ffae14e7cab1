"""The database schema beyond the models: the page-cache triggers, which revision a database is
at, and a new database's schema built in one step.

A start (app/ops/prepare.py migrate) leaves a database at the head revision alone without loading
alembic, gives a new, empty database `Base.metadata`'s tables plus the triggers and records the
head revision (what the migrations would build, in a fraction of the time; tests/test_schema.py
compares the two), and migrates any other database with alembic.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import Column, Connection, MetaData, PrimaryKeyConstraint, String, Table, inspect

from app.data import models  # noqa: F401  (registers the tables on Base.metadata)
from app.data.db import Base

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
# migrations/ sits at the top of a checkout; `pip install` puts it into the package.
_INSTALLED_MIGRATIONS = _PACKAGE_DIR / "migrations"
MIGRATIONS_DIR = (
    _INSTALLED_MIGRATIONS if _INSTALLED_MIGRATIONS.is_dir() else _PACKAGE_DIR.parent / "migrations"
)
# What alembic records the revision in (alembic.runtime.migration's own definition).
VERSION_TABLE = Table(
    "alembic_version",
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)

# --- page-cache triggers (migration 0005) ---------------------------------------------------
# They are the one place that invalidates cached pages (app/services/pagecache.py): every writer
# goes through them. A change to a file, project or mirror page forgets the pages of that project
# name on every index (a stage shows its bases' files); a change to an index (bases, acl_read,
# mirror settings, deletion) forgets every page. Each also bumps page_cache_state.generation,
# so a page built from data older than the change is never stored.
# Migration 0005 and a new database both use this text: changing it needs a new migration that
# replaces the triggers, and 0005 must then keep a copy of the text it created.

PAGE_CACHE_STATE_ROW = "INSERT INTO page_cache_state (id, generation) VALUES (1, 0)"
BUMP = "UPDATE page_cache_state SET generation = generation + 1;"
# table -> SQL (with ROW standing for OLD or NEW) naming the project whose pages go stale
FORGET_NAME = {
    "projects": "DELETE FROM cached_pages WHERE normalized_name = ROW.normalized_name;",
    "mirror_pages": "DELETE FROM cached_pages WHERE normalized_name = ROW.normalized_name;",
    "files": (
        "DELETE FROM cached_pages WHERE normalized_name IN "
        "(SELECT normalized_name FROM projects WHERE id = ROW.project_id);"
    ),
}
FORGET_ALL = "DELETE FROM cached_pages;"
FORGET = {**FORGET_NAME, "indexes": FORGET_ALL}
# Migration 0012: a mirrored file cached (its size and PEP 658 sidecar now show on its pages).
MIRROR_FILES_FORGET = {
    "mirror_files": "DELETE FROM cached_pages WHERE normalized_name = ROW.normalized_name;"
}
EVENTS = ("INSERT", "UPDATE", "DELETE")


def page_cache_triggers(dialect: str, tables: dict[str, str] = FORGET) -> list[str]:
    """The statements that create the page-cache triggers of `tables` (FORGET: migration 0005's,
    MIRROR_FILES_FORGET: 0012's) on `dialect` (sqlite, postgresql).

    On SQLite, a migration that rebuilds one of these tables (batch_alter_table's
    copy-and-rename) drops its triggers and must create them again.
    """
    statements = []
    for table, forget in tables.items():
        if dialect == "sqlite":
            for event in EVENTS:
                rows = {"INSERT": ["NEW"], "UPDATE": ["OLD", "NEW"], "DELETE": ["OLD"]}[event]
                body = " ".join(forget.replace("ROW.", f"{row}.") for row in rows)
                statements.append(
                    f"CREATE TRIGGER cached_pages_{table}_{event.lower()} AFTER {event} "
                    f"ON {table} FOR EACH ROW BEGIN {body} {BUMP} END"
                )
        elif dialect == "postgresql":
            old, new = forget.replace("ROW.", "OLD."), forget.replace("ROW.", "NEW.")
            statements.append(
                f"CREATE FUNCTION cached_pages_forget_{table}() RETURNS trigger "
                f"LANGUAGE plpgsql AS $$ BEGIN IF TG_OP <> 'INSERT' THEN {old} END IF; "
                f"IF TG_OP <> 'DELETE' THEN {new} END IF; {BUMP} RETURN NULL; END $$"
            )
            statements.append(
                f"CREATE TRIGGER cached_pages_{table} AFTER INSERT OR UPDATE OR DELETE "
                f"ON {table} FOR EACH ROW EXECUTE FUNCTION cached_pages_forget_{table}()"
            )
        else:
            raise NotImplementedError(f"cached_pages triggers for {dialect}")
    return statements


def drop_page_cache_triggers(dialect: str, tables: dict[str, str] = FORGET) -> list[str]:
    """The statements that drop what page_cache_triggers creates for `tables`."""
    statements = []
    for table in tables:
        if dialect == "sqlite":
            statements += [
                f"DROP TRIGGER IF EXISTS cached_pages_{table}_{event.lower()}" for event in EVENTS
            ]
        else:
            statements.append(f"DROP TRIGGER IF EXISTS cached_pages_{table} ON {table}")
            statements.append(f"DROP FUNCTION IF EXISTS cached_pages_forget_{table}()")
    return statements


# --- page-cache notices (migration 0020) ------------------------------------------------------
# PostgreSQL: a bump of the generation (by the triggers above, or by hand) sends a NOTIFY on
# PAGES_CHANNEL when its transaction commits, so that every worker of every replica forgets its
# copies of stored pages (app/services/pagecache.py Watch) without a query per request. The
# payload is empty: PostgreSQL folds a transaction's identical notices into one.
PAGES_CHANNEL = "pyshelf_pages"
PAGE_NOTICE_OBJECTS = [
    "CREATE FUNCTION page_cache_state_notify() RETURNS trigger LANGUAGE plpgsql AS "
    f"$$ BEGIN PERFORM pg_notify('{PAGES_CHANNEL}', ''); RETURN NULL; END $$",
    "CREATE TRIGGER page_cache_state_notify AFTER UPDATE ON page_cache_state "
    "FOR EACH STATEMENT EXECUTE FUNCTION page_cache_state_notify()",
]
DROP_PAGE_NOTICE_OBJECTS = [
    "DROP TRIGGER IF EXISTS page_cache_state_notify ON page_cache_state",
    "DROP FUNCTION IF EXISTS page_cache_state_notify()",
]


def page_notice_objects(dialect: str) -> list[str]:
    """The statements that make generation bumps notify (PostgreSQL; nothing on SQLite, whose
    workers read the stored page on every request)."""
    return PAGE_NOTICE_OBJECTS if dialect == "postgresql" else []


# --- full-text search (migration 0010) --------------------------------------------------------
# SQLite: an FTS5 table over search_documents (external content: the text is stored once there)
# and the triggers that keep it in step, cascaded deletes included (app/services/fulltext.py
# searches it). PostgreSQL needs nothing beyond the models: a tsvector column with a GIN index.
# Migrations 0010 and 0019 and a new database use this text; changing it needs a new migration.

FTS_COLUMNS = ("name", "summary", "keywords", "description", "body", "title")  # bm25's order
# Prefix indexes of 2 to 4 characters (migration 0019): `sak*` reads one list, not the merged
# lists of every word that starts so (20-40 ms a statement at 300,000 documents).
FTS_PREFIXES = "2 3 4"


def fts_objects(dialect: str, prefixes: str = FTS_PREFIXES) -> list[str]:
    """The statements that create the full-text index's objects beyond the models (`prefixes`:
    FTS5's prefix option, none if empty)."""
    if dialect != "sqlite":
        return []
    prefix = f"prefix='{prefixes}', " if prefixes else ""
    columns = ", ".join(FTS_COLUMNS)
    new = ", ".join(f"new.{c}" for c in FTS_COLUMNS)
    old = ", ".join(f"old.{c}" for c in FTS_COLUMNS)
    forget_old = (
        f"INSERT INTO search_fts(search_fts, rowid, {columns}) VALUES ('delete', old.id, {old});"  # noqa: S608 - constants
    )
    add_new = f"INSERT INTO search_fts(rowid, {columns}) VALUES (new.id, {new});"  # noqa: S608
    return [
        f"CREATE VIRTUAL TABLE search_fts USING fts5({columns}, content='search_documents', "
        f"content_rowid='id', {prefix}tokenize='porter unicode61 remove_diacritics 2')",
        f"CREATE TRIGGER search_fts_insert AFTER INSERT ON search_documents BEGIN {add_new} END",
        f"CREATE TRIGGER search_fts_delete AFTER DELETE ON search_documents BEGIN {forget_old} END",
        "CREATE TRIGGER search_fts_update AFTER UPDATE ON search_documents "
        f"BEGIN {forget_old} {add_new} END",
    ]


def drop_fts_objects(dialect: str) -> list[str]:
    """The statements that drop what fts_objects creates."""
    if dialect != "sqlite":
        return []
    events = ("insert", "delete", "update")
    return [f"DROP TRIGGER IF EXISTS search_fts_{e}" for e in events] + [
        "DROP TABLE IF EXISTS search_fts"
    ]


def is_fts_table(name: str) -> bool:
    """Whether a table is the FTS5 table or one of its shadow tables (no model describes
    them: alembic's comparison leaves them out)."""
    return name == "search_fts" or name.startswith("search_fts_")


# --- revisions --------------------------------------------------------------------------------

# `revision = '0007'`, `down_revision: str | None = '0006'` as alembic writes them (plain text:
# ast.parse is not safe in threads on Python 3.11, and migrate runs in threads in the tests)
REVISION_LINE = re.compile(r"^(revision|down_revision)\b[^=\n]*=(.*)$", re.MULTILINE)
QUOTED = re.compile(r"""['"]([^'"]+)['"]""")


def head_revision(versions_dir: Path = MIGRATIONS_DIR / "versions") -> str:
    """The newest migration's revision id, read from the scripts' `revision` and
    `down_revision` lines (what alembic's ScriptDirectory finds, without loading it)."""
    revisions: set[str] = set()
    replaced: set[str] = set()
    for path in versions_dir.glob("*.py"):
        found = {
            name: QUOTED.findall(value)
            for name, value in REVISION_LINE.findall(path.read_text(encoding="utf-8"))
        }
        revisions.update(found.get("revision", []))
        replaced.update(found.get("down_revision", []))  # None (the first), one, or a merge's
    heads = revisions - replaced
    if len(heads) != 1:
        raise RuntimeError(f"expected one head revision in {versions_dir}, found {sorted(heads)}")
    return heads.pop()


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (None: no migration ran yet)."""
    if not inspect(connection).has_table(VERSION_TABLE.name):
        return None
    return connection.scalar(VERSION_TABLE.select())


def is_empty(connection: Connection) -> bool:
    """Whether the database has no table but alembic_version (which a downgrade leaves)."""
    return not set(inspect(connection).get_table_names()) - {VERSION_TABLE.name}


def create_schema(connection: Connection, revision: str) -> None:
    """Build the head schema in an empty database, in the caller's transaction: the models'
    tables, the page-cache triggers, notices and state row, the full-text index, and `revision`
    recorded as alembic would."""
    Base.metadata.create_all(connection)
    dialect = connection.dialect.name
    triggers = page_cache_triggers(dialect) + page_cache_triggers(dialect, MIRROR_FILES_FORGET)
    notices = page_notice_objects(dialect)
    for statement in [*triggers, *notices, PAGE_CACHE_STATE_ROW, *fts_objects(dialect)]:
        connection.exec_driver_sql(statement)
    VERSION_TABLE.create(connection, checkfirst=True)
    connection.execute(VERSION_TABLE.insert().values(version_num=revision))
