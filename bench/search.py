"""Search at scale: today's LIKE scan (names and summaries, the search before
app/services/fulltext.py) against the full-text index, on one generated database; and how long a
100-page docs zip takes to index.

    .venv/bin/python bench/search.py                       # SQLite in a temp dir, the defaults
    .venv/bin/python bench/search.py --projects 100000 --docsets 2000   # the issue's scale
    .venv/bin/python bench/search.py --postgres     # a throwaway server, as the tests start it
    .venv/bin/python bench/search.py --database URL --compare /tmp/before.py   # before/after

Rows go straight into the tables (no HTTP, no readme rendering): names, summaries and
descriptions from a Zipf-distributed vocabulary, and the same number of cached mirror pages as
projects (today's search scans both). Prints Markdown for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import (  # noqa: E402
    ColumnElement,
    case,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
)
from sqlalchemy.orm import Session  # noqa: E402

from app.data import schema  # noqa: E402
from app.data.db import make_engine  # noqa: E402
from app.data.models import DocSet, Index, MirrorPage, Project, SearchDocument, User  # noqa: E402
from app.services import fulltext, fulltext_docs, fulltext_engines, search  # noqa: E402

SEED = 19
BATCH = 5_000
VOCABULARY = 20_000


def words(rng: random.Random, vocabulary: list[str], count: int) -> str:
    """`count` words, Zipf-like: a few very common, most rare."""
    return " ".join(
        vocabulary[min(int(rng.paretovariate(1.1)) - 1, VOCABULARY - 1)] for _ in range(count)
    )


def make_vocabulary(rng: random.Random) -> list[str]:
    """Pronounceable made-up words."""
    syllables = ["ka", "lo", "mi", "ren", "to", "sa", "vu", "ne", "qui", "dor", "pa", "zel"]
    found: set[str] = set()
    while len(found) < VOCABULARY:
        found.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(found, key=lambda w: (len(w), w))


def fill(session: Session, projects: int, docsets: int, pages: int) -> list[str]:
    """Users, a stage and a mirror, projects, mirror pages and search documents; return the
    vocabulary."""
    rng = random.Random(SEED)  # noqa: S311 - reproducible text, not secrets
    vocabulary = make_vocabulary(rng)
    user = User(username="bench", password_hash="!")  # noqa: S106 - no login
    session.add(user)
    session.flush()
    stage = Index(owner_id=user.id, name="dev", type="stage")
    mirror = Index(owner_id=user.id, name="pypi", type="mirror")
    session.add_all([stage, mirror])
    session.flush()
    now = time.time()
    for start in range(0, projects, BATCH):
        names = [
            f"{vocabulary[(n * 7) % VOCABULARY]}-{n}"
            for n in range(start, min(start + BATCH, projects))
        ]
        summaries = [words(rng, vocabulary, 8) for _ in names]
        rows = (
            session.execute(
                insert(Project).returning(Project.id),
                [
                    {"index_id": stage.id, "name": n, "normalized_name": n, "summary": s}
                    for n, s in zip(names, summaries, strict=True)
                ],
            )
            .scalars()
            .all()
        )
        session.execute(
            insert(MirrorPage),
            [
                {
                    "index_id": mirror.id,
                    "name": f"up-{n}",
                    "normalized_name": f"up-{n}",
                    "files": [],
                }
                for n in names
            ],
        )
        fulltext_engines.write_documents(
            session,
            [
                {
                    "index_id": stage.id,
                    "project_id": pid,
                    "kind": "release",
                    "normalized_name": n,
                    "name": n,
                    "summary": s,
                    "version": "1.0",
                    "keywords": words(rng, vocabulary, 5),
                    "description": words(rng, vocabulary, 200),
                }
                for pid, n, s in zip(rows, names, summaries, strict=True)
            ],
        )
        session.commit()
        print(
            f"  {min(start + BATCH, projects)} projects ({time.time() - now:.0f} s)",
            file=sys.stderr,
        )
    for number in range(docsets):
        docset = DocSet(
            index_id=stage.id,
            normalized_name=f"{vocabulary[(number * 7) % VOCABULARY]}-{number}",
            version="1.0",
            sha256="0" * 64,
            size=0,
            uncompressed_bytes=0,
            entry_count=pages,
        )
        session.add(docset)
        session.flush()
        fulltext_docs.index_docset(
            session,
            docset,
            [
                fulltext_docs.DocsPage(
                    f"page{p}.html", words(rng, vocabulary, 6), words(rng, vocabulary, 400)
                )
                for p in range(pages)
            ],
        )
        if number % 50 == 49:
            session.commit()
            print(f"  {number + 1} doc sets ({time.time() - now:.0f} s)", file=sys.stderr)
    session.commit()
    return vocabulary


def like_search(session: Session, query: str, limit: int = 51) -> int:
    """Today's search (app/http/web/search.py before full-text): LIKE over names and summaries."""
    name = query.strip().lower().replace(" ", "-")
    name_like, text_like = f"%{name}%", f"%{query.lower()}%"

    def rank(column: ColumnElement[str]) -> ColumnElement[int]:
        return case(
            (column == name, 0), (column.like(name + "%"), 1), (column.like(name_like), 2), else_=3
        )

    hosted = session.execute(
        select(Project.name, rank(Project.normalized_name))
        .where(
            or_(
                Project.normalized_name.like(name_like), func.lower(Project.summary).like(text_like)
            )
        )
        .order_by(rank(Project.normalized_name), Project.normalized_name)
        .limit(limit)
    ).all()
    mirrored = session.execute(
        select(MirrorPage.name, rank(MirrorPage.normalized_name))
        .where(MirrorPage.is_found.is_(True), MirrorPage.normalized_name.like(name_like))
        .order_by(rank(MirrorPage.normalized_name), MirrorPage.normalized_name)
        .limit(limit)
    ).all()
    return len(hosted) + len(mirrored)


def timed(run, queries: list[str], rounds: int) -> list[float]:
    """Milliseconds of each run of each query."""
    times = []
    for _ in range(rounds):
        for query in queries:
            started = time.perf_counter()
            run(query)
            times.append((time.perf_counter() - started) * 1000)
    return times


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def docs_zip(rng: random.Random, vocabulary: list[str], pages: int) -> bytes:
    """A Sphinx-like zip of `pages` pages of about 400 words."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for number in range(pages):
            body = words(rng, vocabulary, 400)
            archive.writestr(
                f"html/page{number}.html",
                f"<html><head><title>Page {number}</title><script>x()</script></head><body>"
                f"<nav>Home Next</nav><div role='main'><h1>Page {number}</h1><p>{body}</p>"
                "</div></body></html>",
            )
        archive.writestr("html/index.html", "<h1>index</h1>")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=100_000)
    parser.add_argument("--docsets", type=int, default=200)
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL, not SQLite")
    parser.add_argument(
        "--uploads",
        type=int,
        default=0,
        help="measure only this many package and docs uploads, with and without the indexer",
    )
    parser.add_argument(
        "--compare",
        metavar="SEARCH_PY",
        help="only compare another version of app/services/search.py (before; e.g. from git show"
        " main:app/services/search.py) with this one (after), alternating query by query",
    )
    parser.add_argument(
        "--database",
        help="a database URL to use: filled when it has no tables, else measured as it is",
    )
    args = parser.parse_args()
    if args.uploads:
        upload_overhead(args.uploads, args.pages)
        return
    folder = tempfile.mkdtemp(prefix="pyshelf-bench-search-")
    url = args.database or f"sqlite:///{folder}/bench.sqlite3"
    server = None
    if args.postgres and not args.database:
        from tests.pgserver import PostgresServer, wait_until_ready  # only for this option

        server = PostgresServer().start()
        wait_until_ready(server)
        url = server.create_database("bench_search")
    try:
        run(args, url)
    finally:
        if server is not None:
            server.stop()


def run(args: argparse.Namespace, url: str) -> None:
    """Fill the database at `url`, then measure and print."""
    engine = make_engine(url)
    is_new = not inspect(engine).has_table("search_documents")
    if is_new:
        with engine.begin() as connection:
            schema.create_schema(connection, schema.head_revision())
    started = time.time()
    with Session(engine) as session:
        if is_new:
            vocabulary = fill(session, args.projects, args.docsets, args.pages)
        else:
            vocabulary = make_vocabulary(random.Random(SEED))  # noqa: S311 - as fill() made it
        if engine.dialect.name == "postgresql" and is_new:
            session.execute(text("ANALYZE"))
            session.commit()
        built = time.time() - started
        documents = session.scalar(select(func.count()).select_from(SearchDocument))
        # Queries people type: a name, the commonest word, a rare word, two words, a phrase, a
        # prefix, a docs-only word.
        queries = [
            f"{vocabulary[7]}-1",
            vocabulary[0],
            vocabulary[5000],
            f"{vocabulary[3]} {vocabulary[900]}",
            f'"{vocabulary[1]} {vocabulary[2]}"',
            vocabulary[40][:3] + "*",
            f"docs:{vocabulary[300]}",
        ]
        if args.compare:
            readable = session.scalars(select(Index.id).order_by(Index.id)).all()
            compare(session, Path(args.compare), queries, list(readable), args.rounds)
            return
        parsed = [search.parse_query(q) for q in queries]
        like_queries = [q.strip('"*').removeprefix("docs:") for q in queries]
        timed(lambda q: like_search(session, q), like_queries, 1)  # warm the caches
        old = timed(lambda q: like_search(session, q), like_queries, args.rounds)
        by_text = dict(zip(queries, parsed, strict=True))
        # As the web UI asks for a reader who may not read every index: the readable ones by id.
        readable = session.scalars(select(Index.id).order_by(Index.id)).all()

        def full_text(query: str) -> None:
            search.search(session, by_text[query], limit=51, index_ids=readable)

        timed(full_text, queries, 1)
        new = timed(full_text, queries, args.rounds)
        each = {q: statistics.median(timed(full_text, [q], args.rounds)) for q in queries}
        data = docs_zip(random.Random(SEED + 1), vocabulary, args.pages)  # noqa: S311
        docset = DocSet(
            index_id=1,
            normalized_name="zipbench",
            version="1.0",
            sha256="1" * 64,
            size=len(data),
            uncompressed_bytes=0,
            entry_count=args.pages + 1,
        )
        session.add(docset)
        session.flush()
        started = time.perf_counter()
        pages = fulltext_docs.read_docs(io.BytesIO(data), "html/")
        fulltext_docs.index_docset(session, docset, pages)
        session.commit()
        zip_seconds = time.perf_counter() - started
        session.delete(docset)  # the database can be measured again (--database)
        session.commit()
    engine.dispose()
    print(f"\n### Search ({engine.dialect.name}, {time.strftime('%Y-%m-%d')})\n")
    print(
        f"{args.projects:,} projects (and as many cached mirror pages), {args.docsets:,} doc sets"
        f" x {args.pages} pages: {documents:,} search documents, built in {built:.0f} s.\n"
    )
    print("| search | p50 ms | p99 ms | max ms |\n|---|---|---|---|")
    for label, values in (
        ("today: LIKE over names and summaries", old),
        ("full text: names, summaries, descriptions, docs", new),
    ):
        print(
            f"| {label} | {percentile(values, 0.5):.1f} | {percentile(values, 0.99):.1f} |"
            f" {max(values):.1f} |"
        )
    print("\n| full-text query | median ms |\n|---|---|")
    for query, median in each.items():
        print(f"| `{query}` | {median:.1f} |")
    print(
        f"\nIndexing a {args.pages}-page docs zip (read, parse, write, commit):"
        f" {zip_seconds * 1000:.0f} ms."
    )


def compare(
    session: Session, before_path: Path, queries: list[str], readable: list[int], rounds: int
) -> None:
    """Medians of `before_path`'s search and this one's, alternating which goes first query by
    query, each search in its own transaction (as a request); two rounds warm up (psycopg
    prepares a statement after five runs)."""
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location("search_before", before_path)
    assert spec is not None
    assert spec.loader is not None
    before = importlib.util.module_from_spec(spec)
    sys.modules["search_before"] = before  # dataclasses look their module up
    spec.loader.exec_module(before)
    versions = {"before": before, "after": search}
    times: dict[str, dict[str, list[float]]] = {v: {q: [] for q in queries} for v in versions}
    loads = []
    for number in range(rounds + 2):
        loads.append(os.getloadavg()[0])
        for position, query in enumerate(queries):
            order = list(versions) if (number + position) % 2 == 0 else list(versions)[::-1]
            for version in order:
                module = versions[version]
                started = time.perf_counter()
                module.search(session, module.parse_query(query), limit=51, index_ids=readable)
                if number >= 2:
                    times[version][query].append((time.perf_counter() - started) * 1000)
                session.commit()
    print(
        f"\n{rounds} rounds after 2 warm-up rounds,"
        f" load average {min(loads):.1f}-{max(loads):.1f}\n"
    )
    print("| median ms | before | after | ratio |\n|---|---|---|---|")
    for query in queries:
        old, new = (statistics.median(times[v][query]) for v in versions)
        print(f"| `{query}` | {old:.1f} | {new:.1f} | {new / old:.2f} |")
    every = {v: [t for values in times[v].values() for t in values] for v in versions}
    old_all, new_all = every["before"], every["after"]
    print(
        f"| p50 / p99 of {len(new_all)} searches | {percentile(old_all, 0.5):.1f} /"
        f" {percentile(old_all, 0.99):.1f} | {percentile(new_all, 0.5):.1f} /"
        f" {percentile(new_all, 0.99):.1f} | |"
    )


def upload_overhead(count: int, pages: int) -> None:
    """Time `count` wheel uploads (a 2,000-word Markdown README) and `count` docs uploads
    (`pages` pages) through the app, in rounds that rotate three modes: no indexer, indexed
    after the response (the default; the drain is timed on its own), indexed in the request."""
    import contextlib

    from werkzeug.security import generate_password_hash

    from app import create_app
    from app.core.config import Settings
    from app.data.db import Database
    from app.data.models import User as UserModel
    from app.ops.prepare import bootstrap, migrate
    from tests.builders import make_wheel  # only for this option
    from tests.web.helpers import doc_upload_form, upload_form

    folder = Path(tempfile.mkdtemp(prefix="pyshelf-bench-uploads-"))
    settings = Settings(data_dir=folder / "data", admin_password="bench-admin-pw")  # noqa: S106
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings)
    database = Database(settings.database_url)
    with database.session() as session:
        bootstrap(session, settings, out=io.StringIO())
        admin = session.scalars(select(UserModel).where(UserModel.username == "admin")).one()
        admin.password_hash = generate_password_hash("bench-admin-pw", "pbkdf2:sha256:1")
        session.commit()  # a cheap hash: the upload, not the password check, is measured
    database.engine.dispose()
    client = create_app(settings).test_client()
    import base64

    auth = {"Authorization": "Basic " + base64.b64encode(b"admin:bench-admin-pw").decode()}
    rng = random.Random(SEED)  # noqa: S311
    vocabulary = make_vocabulary(rng)
    readme = "\n\n".join(
        f"## {words(rng, vocabulary, 3)}\n\n{words(rng, vocabulary, 100)}" for _ in range(20)
    )
    zipped = docs_zip(rng, vocabulary, pages)

    app_settings = client.application.config["PYSHELF_SETTINGS"]
    modes = ("off", "after", "in-request")

    @contextlib.contextmanager
    def indexer(mode: str):  # type: ignore[no-untyped-def]
        saved = fulltext.queue
        if mode == "off":
            fulltext.queue = lambda _session, _kind, _target_id: None  # type: ignore[assignment]
        object.__setattr__(app_settings, "search_index_in_request", mode == "in-request")
        try:
            yield
        finally:
            fulltext.queue = saved

    seconds: dict[str, dict[str, list[float]]] = {
        mode: {"package": [], "docs": []} for mode in modes
    }
    drained = {"package": 0.0, "docs": 0.0}  # indexing after the response: until searchable
    for number in range(count):
        for mode in modes[number % 3 :] + modes[: number % 3]:  # rotate which goes first
            name = f"bench-{mode}-{number}"
            filename, data = make_wheel(
                name, "1.0", description=readme, description_content_type="text/markdown"
            )
            forms = {
                "package": upload_form(filename, data, name, "1.0"),
                "docs": doc_upload_form(name, "1.0", zipped),
            }
            for kind, form in forms.items():
                with indexer(mode):
                    started = time.perf_counter()
                    response = client.post("/admin/dev/", data=form, headers=auth)
                    seconds[mode][kind].append(time.perf_counter() - started)
                    assert response.status_code == 200, response.get_data(as_text=True)
                    started = time.perf_counter()
                    response.close()  # what a server does once it has sent it: the drain runs
                    if mode == "after":
                        drained[kind] += time.perf_counter() - started
    print(f"\n### Upload overhead of the indexer ({time.strftime('%Y-%m-%d')})\n")
    print(
        "| upload | no indexer, ms | indexed after the response, ms (ratio) |"
        " indexed in the request, ms (ratio) | indexing after the response, ms |"
    )
    print("|---|---|---|---|---|")
    # Means, then medians: one upload stalled by the disk (an fsync behind other work) moves a
    # mean by several percent, a median not.
    for label, average in (("mean", statistics.mean), ("median", statistics.median)):
        for kind in ("package", "docs"):
            off, after, inside = (average(seconds[mode][kind]) * 1000 for mode in modes)
            print(
                f"| {kind}, {label} | {off:.1f} | {after:.1f} ({after / off:.2f}x) |"
                f" {inside:.1f} ({inside / off:.2f}x) | {drained[kind] / count * 1000:.1f} |"
            )


if __name__ == "__main__":
    main()
