"""A large pyshelf database, generated directly in SQLite (not uploaded one by one).

Fills the stage admin/dev of a stopped pyshelf with `projects` projects of `files_per_project`
files each (half wheels, half sdists), with names and summaries made of words so that search
has something to find. The rows are what an upload records; the blobs do not exist (no file
is downloaded in the scale measurements).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import sqlite3
from pathlib import Path

WORDS = [
    "alpha",
    "amber",
    "anchor",
    "apex",
    "arrow",
    "atlas",
    "aurora",
    "badger",
    "basalt",
    "beacon",
    "birch",
    "blaze",
    "bolt",
    "breeze",
    "bronze",
    "canyon",
    "cedar",
    "cipher",
    "cobalt",
    "comet",
    "coral",
    "cosmos",
    "crane",
    "crystal",
    "cypress",
    "delta",
    "drift",
    "dune",
    "eagle",
    "echo",
    "ember",
    "falcon",
    "fern",
    "fjord",
    "flint",
    "forge",
    "frost",
    "galaxy",
    "garnet",
    "glacier",
    "granite",
    "harbor",
    "hawk",
    "hazel",
    "helix",
    "heron",
    "horizon",
    "indigo",
    "iris",
    "ivory",
    "jade",
    "jasper",
    "juniper",
    "kestrel",
    "lagoon",
    "lantern",
    "lark",
    "laurel",
    "lava",
    "lotus",
    "lumen",
    "lynx",
    "magma",
    "maple",
    "marble",
    "meadow",
    "meteor",
    "mint",
    "mist",
    "nebula",
    "nectar",
    "nimbus",
    "nova",
    "oak",
    "oasis",
    "onyx",
    "orbit",
    "orchid",
    "osprey",
    "otter",
    "pearl",
    "pebble",
    "pine",
    "pixel",
    "plasma",
    "prism",
    "pulsar",
    "quartz",
    "quill",
    "raven",
    "reef",
    "ridge",
    "river",
    "robin",
    "ruby",
    "sable",
    "saffron",
    "sage",
    "sequoia",
    "shadow",
    "sierra",
    "slate",
    "spark",
    "spruce",
    "storm",
    "summit",
    "tango",
    "thistle",
    "thunder",
    "tide",
    "topaz",
    "tulip",
    "tundra",
    "umber",
    "valley",
    "vapor",
    "velvet",
    "vertex",
    "violet",
    "vortex",
    "walnut",
    "willow",
    "wren",
    "yarrow",
    "zenith",
    "zephyr",
]
TOPICS = [
    "parsing",
    "logging",
    "caching",
    "testing",
    "plotting",
    "scheduling",
    "streaming",
    "hashing",
    "routing",
    "templating",
    "serialization",
    "validation",
    "compression",
    "encryption",
    "profiling",
]
SEED = 7_000_003
BATCH_ROWS = 50_000
UPLOADED_AT = dt.datetime(2024, 6, 1)


def project_name(number: int) -> str:
    """The `number`-th generated project's (already normalized) name."""
    first = WORDS[number % len(WORDS)]
    second = WORDS[(number // len(WORDS)) % len(WORDS)]
    return f"{first}-{second}-{number:06d}"


def _required_columns(db: sqlite3.Connection, table: str) -> set[str]:
    """NOT NULL columns without a default: a schema change the fill must know about."""
    rows = db.execute(f"PRAGMA table_info({table})").fetchall()
    return {
        name for _, name, _, notnull, default, pk in rows if notnull and default is None and not pk
    }


def fill(database: Path, projects: int, files_per_project: int) -> dict[str, int]:
    """Insert the projects and files into admin/dev; returns the counts now in the tables."""
    db = sqlite3.connect(database)
    try:
        db.execute("PRAGMA synchronous=OFF")
        project_columns = (
            "index_id",
            "name",
            "normalized_name",
            "created_at",
            "summary",
        )
        file_columns = (
            "project_id",
            "filename",
            "version",
            "filetype",
            "pyversion",
            "sha256",
            "blake2_256",
            "md5",
            "size",
            "yanked",
            "core_metadata",
            "uploader",
            "uploaded_at",
        )
        for table, columns in (("projects", project_columns), ("files", file_columns)):
            missing = _required_columns(db, table) - set(columns)
            if missing:
                raise RuntimeError(f"the scale fill does not know {table}.{sorted(missing)}")
        (index_id,) = db.execute(
            "SELECT indexes.id FROM indexes JOIN users ON users.id = indexes.owner_id "
            "WHERE users.username = 'admin' AND indexes.name = 'dev'"
        ).fetchone()
        (first_id,) = db.execute("SELECT coalesce(max(id), 0) + 1 FROM projects").fetchone()
        rng = random.Random(SEED)  # noqa: S311 - reproducible test data
        uploaded = UPLOADED_AT.isoformat(sep=" ")
        project_rows = []
        for number in range(projects):
            name = project_name(number)
            summary = (
                f"A {rng.choice(WORDS)} toolkit for {rng.choice(TOPICS)} "
                f"and {rng.choice(TOPICS)} with {rng.choice(WORDS)} support"
            )
            project_rows.append((index_id, name, name, uploaded, summary))
        db.executemany(
            f"INSERT INTO projects ({', '.join(project_columns)}) "  # noqa: S608 - fixed names
            f"VALUES ({', '.join('?' * len(project_columns))})",
            project_rows,
        )
        insert_file = (
            f"INSERT INTO files ({', '.join(file_columns)}) "  # noqa: S608 - fixed names
            f"VALUES ({', '.join('?' * len(file_columns))})"
        )
        batch = []
        for number in range(projects):
            project_id = first_id + number
            stem = project_name(number).replace("-", "_")
            for k in range(files_per_project):
                version = f"{k // 2}.{number % 7}.0"
                is_wheel = k % 2 == 0
                filename = (
                    f"{stem}-{version}-py3-none-any.whl" if is_wheel else f"{stem}-{version}.tar.gz"
                )
                sha256 = hashlib.sha256(filename.encode()).hexdigest()
                batch.append(
                    (
                        project_id,
                        filename,
                        version,
                        "bdist_wheel" if is_wheel else "sdist",
                        "py3" if is_wheel else "source",
                        sha256,
                        "",
                        "",
                        10_000 + (number * 7 + k) % 90_000,
                        0,
                        "{}",
                        "admin",
                        uploaded,
                    )
                )
                if len(batch) >= BATCH_ROWS:
                    db.executemany(insert_file, batch)
                    batch.clear()
        if batch:
            db.executemany(insert_file, batch)
        db.commit()
        db.execute("ANALYZE")
        db.commit()
        return {
            "projects": db.execute("SELECT count(*) FROM projects").fetchone()[0],
            "files": db.execute("SELECT count(*) FROM files").fetchone()[0],
        }
    finally:
        db.close()


def search_terms(count: int) -> list[str]:
    """Queries of three kinds, in turn: a word (many hits), a name prefix (a few), no match."""
    rng = random.Random(SEED + 1)  # noqa: S311 - reproducible sample
    terms = []
    for number in range(count):
        kind = number % 3
        if kind == 0:
            terms.append(rng.choice(WORDS))
        elif kind == 1:
            terms.append(project_name(rng.randrange(1000))[:-3])
        else:
            terms.append(f"nothing{number}")
    return terms
