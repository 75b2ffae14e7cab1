"""Alembic environment: the database URL comes from pyshelf's settings (DATABASE_URL/DATA_DIR)."""

from typing import Any

import sqlalchemy as sa
from alembic import context

from app.core.config import Settings
from app.data import models  # noqa: F401  (registers the tables on Base.metadata)
from app.data.db import Base, make_engine
from app.data.schema import is_fts_table

config = context.config


def compare_type(migration: Any, _found_column: Any, _column: Any, found: Any, wanted: Any) -> Any:
    """SQLite keeps every INTEGER in up to 64 bits: INTEGER and BIGINT differ only by name there
    (0006 widens them on PostgreSQL only). None: alembic's own comparison."""
    integers = isinstance(found, sa.Integer) and isinstance(wanted, sa.Integer)
    if integers and migration.dialect.name == "sqlite":
        return False
    return None


def include_name(name: str | None, kind: str, _parents: Any) -> bool:
    """Leave SQLite's FTS5 table and its shadow tables out of comparisons: no model describes
    them (app/data/schema.py fts_objects creates them)."""
    return not (kind == "table" and name is not None and is_fts_table(name))


def run() -> None:
    """Run migrations online, on the engine pyshelf itself would use."""
    url = config.attributes.get("database_url") or Settings.from_env().database_url
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",  # ALTER TABLE on SQLite
            compare_type=compare_type,
            include_name=include_name,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
