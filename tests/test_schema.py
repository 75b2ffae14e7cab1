"""A new database gets its schema in one step (app/data/schema.py): the same schema as the
migrations build, on SQLite and on PostgreSQL; older databases are still migrated by alembic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, inspect, text

from app.core.config import Settings
from app.data import schema
from app.ops.prepare import migrate
from tests.conftest import ADMIN_PASSWORD, ROOT, clean_env
from tests.test_migrations import alembic_config, current_revision

pytestmark = pytest.mark.empty_database  # PostgreSQL runs too: each database starts empty


def new_settings(tmp_path: Path, name: str) -> Settings:
    """Settings of a new data directory (on PostgreSQL: its own empty database)."""
    settings = Settings(data_dir=tmp_path / name)
    settings.data_dir.mkdir(parents=True)
    return settings


def column_type(connection: Connection, column: dict[str, Any], primary_key: list[str]) -> str:
    """A column's declared type; on SQLite INTEGER and BIGINT are one type (64-bit integers,
    migration 0006 leaves SQLite's INTEGER columns as they are), except in a primary key."""
    name = str(column["type"])
    if connection.dialect.name == "sqlite" and column["name"] not in primary_key:
        return "INTEGER" if name == "BIGINT" else name
    return name


def triggers(connection: Connection) -> list[tuple[str, ...]]:
    """Every trigger with its whole definition (and, on PostgreSQL, its function's)."""
    if connection.dialect.name == "sqlite":
        query = "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'"
    else:
        query = (
            "SELECT t.tgname, pg_get_triggerdef(t.oid), pg_get_functiondef(t.tgfoid)"
            " FROM pg_trigger t WHERE NOT t.tgisinternal"
        )
    return sorted(tuple(row) for row in connection.execute(text(query)))


def sequences(connection: Connection) -> list[tuple[str, ...]]:
    """PostgreSQL's sequences (SERIAL primary keys) and their types; SQLite has none."""
    if connection.dialect.name == "sqlite":
        return []
    query = "SELECT sequence_name, data_type FROM information_schema.sequences"
    return sorted(tuple(row) for row in connection.execute(text(query)))


def describe(settings: Settings) -> dict[str, Any]:
    """Tables (columns by name, keys, indexes, constraints), triggers, sequences, and the rows
    the schema starts with. Column order is left out: nothing reads columns by position."""
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            found = inspect(connection)
            tables = {}
            for table in found.get_table_names():
                key = found.get_pk_constraint(table)
                primary_key = key["constrained_columns"]
                tables[table] = {
                    "columns": {
                        column["name"]: (
                            column_type(connection, column, primary_key),
                            column["nullable"],
                            column.get("default"),
                            column.get("autoincrement"),
                        )
                        for column in found.get_columns(table)
                    },
                    "primary_key": (key["name"], primary_key),
                    "foreign_keys": sorted(
                        (
                            fk["name"],
                            fk["constrained_columns"],
                            fk["referred_table"],
                            fk["referred_columns"],
                            fk["options"].get("ondelete"),
                        )
                        for fk in found.get_foreign_keys(table)
                    ),
                    "indexes": sorted(
                        (ix["name"], ix["column_names"], ix["unique"])
                        for ix in found.get_indexes(table)
                    ),
                    "unique": sorted(
                        (uq["name"], uq["column_names"])
                        for uq in found.get_unique_constraints(table)
                    ),
                    "checks": sorted(
                        (ck["name"], ck["sqltext"]) for ck in found.get_check_constraints(table)
                    ),
                }
            rows = {
                "page_cache_state": connection.execute(
                    text("SELECT id, generation FROM page_cache_state")
                ).all(),
                "alembic_version": connection.execute(
                    text("SELECT version_num FROM alembic_version")
                ).all(),
            }
            return {
                "tables": tables,
                "triggers": triggers(connection),
                "sequences": sequences(connection),
                "rows": rows,
            }
    finally:
        engine.dispose()


def test_a_new_database_gets_the_schema_the_migrations_build(tmp_path: Path) -> None:
    """migrate() on an empty database (create_all, triggers, stamp) == `alembic upgrade head`."""
    migrated = new_settings(tmp_path, "migrated")
    created = new_settings(tmp_path, "created")
    command.upgrade(alembic_config(migrated), "head")

    migrate(created)

    expected = describe(migrated)
    assert describe(created) == expected
    assert expected["triggers"]  # the page-cache triggers are compared too
    assert expected["rows"]["page_cache_state"] == [(1, 0)]


def test_an_older_database_is_migrated_by_alembic(tmp_path: Path) -> None:
    """A database at an older revision goes through the migrations to the same schema."""
    older = new_settings(tmp_path, "older")
    created = new_settings(tmp_path, "created")
    config = alembic_config(older)
    command.upgrade(config, "0004")

    migrate(older)

    assert current_revision(older) == ScriptDirectory.from_config(config).get_current_head()
    migrate(created)
    assert describe(older) == describe(created)


def test_the_head_revision_is_read_as_alembic_reads_it(tmp_path: Path) -> None:
    """schema.head_revision() (without alembic) names the head that alembic finds."""
    script = ScriptDirectory.from_config(alembic_config(Settings(data_dir=tmp_path)))

    assert schema.head_revision() == script.get_current_head()


def test_head_revision_follows_branches_and_merges(tmp_path: Path) -> None:
    """Two scripts revising the same parent are two heads (refused) until a merge joins them."""
    scripts = {
        "c.py": "revision = '0001'\ndown_revision = None\n",
        "a.py": "revision = '0002a'\ndown_revision = '0001'\n",
        "b.py": 'revision: str = "0002b"\ndown_revision: str | None = "0001"\n',
    }
    for name, script in scripts.items():
        (tmp_path / name).write_text(f'"""A change\n\nRevision ID: x\nRevises: y\n"""\n{script}')

    with pytest.raises(RuntimeError, match="0002a"):
        schema.head_revision(tmp_path)

    (tmp_path / "m.py").write_text("revision = '0003'\ndown_revision = ('0002a', '0002b')\n")
    assert schema.head_revision(tmp_path) == "0003"


def test_a_start_loads_no_alembic_on_a_new_or_an_up_to_date_database(tmp_path: Path) -> None:
    """`prepare` builds a new database and finds an up-to-date one without importing alembic
    (a tenth of a second of every start); the second start changes nothing."""
    data_dir = tmp_path / "data"
    program = (
        "import sys; from app.cli import main; code = main(['prepare']); "
        "print('alembic loaded' if 'alembic' in sys.modules else 'no alembic'); sys.exit(code)"
    )
    env = clean_env(DATA_DIR=str(data_dir), ADMIN_PASSWORD=ADMIN_PASSWORD)
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", program],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == "no alembic", done.stderr
