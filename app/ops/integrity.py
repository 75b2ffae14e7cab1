"""Integrity of the database and the blob store: what verify checks, and what --repair may fix.

Blob kinds: *private* blobs are what uploads reference (release files, wheels' METADATA
sidecars, doc zips): only a backup or a new upload can bring them back, so they are reported and
never touched. *Mirror* blobs are cached copies of upstream files: a damaged one is fetched
again, or removed so the next request fetches it. Orphans (blobs nothing references) are removed
by --repair once they are older than ORPHAN_GRACE_SECONDS, under the blob lock, after a last
look at the database.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, make_url, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.progress import Progress
from app.core.storage import Storage
from app.core.storage_choice import make_storage
from app.core.upstream_client import UpstreamClient
from app.data.db import Database, begin_write
from app.data.models import (
    DocSet,
    File,
    Index,
    MirrorBlob,
    MirrorFile,
    MirrorHolding,
    MirrorPage,
    MirrorSidecar,
    MirrorStats,
    Project,
    Token,
    User,
)
from app.services.cache import MirrorCache, human_bytes
from app.services.cache_blobs import BlobLock, forget_metadata, uploaded_blobs
from app.services.mirror import Mirror, Stream

log = logging.getLogger("pyshelf")

ORPHAN_GRACE_SECONDS = 600  # younger unreferenced blobs may belong to a write in progress
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
SHOWN = 20  # problems listed one per line; the rest are counted


@dataclass
class Refs:
    """Every blob the database references, by kind, with something a person recognizes."""

    private: dict[str, str] = field(default_factory=dict)  # sha256 -> "admin/dev demo-1.0.whl"
    private_sizes: dict[str, int] = field(default_factory=dict)
    mirror: dict[str, int] = field(default_factory=dict)  # sha256 -> size (mirror_blobs)
    mirror_index: dict[str, int] = field(default_factory=dict)  # sha256 -> index id
    # Files and sidecars that mirror pages list (cached or not): sha256 -> (index id, the page's
    # entry of the file, name); a sidecar's entry is its file's
    listed: dict[str, tuple[int, dict[str, Any], str]] = field(default_factory=dict)

    def all_keys(self) -> set[str]:
        """Keys referenced in any way."""
        return set(self.private) | set(self.mirror) | set(self.listed)


def blob_references(session: Any) -> Refs:
    """Read the references from a Session or Connection (a backup's snapshot, or the live one)."""
    refs = Refs()
    paths = {
        index_id: f"{owner}/{name}"
        for index_id, owner, name in session.execute(
            select(Index.id, User.username, Index.name).join(User, User.id == Index.owner_id)
        )
    }
    files = session.execute(
        select(File.sha256, File.metadata_sha256, File.filename, File.size, Project.index_id).join(
            Project, Project.id == File.project_id
        )
    )
    for sha256, metadata_sha256, filename, size, index_id in files:
        where = f"{paths.get(index_id, '?')} {filename}"
        refs.private.setdefault(sha256, where)
        refs.private_sizes.setdefault(sha256, size)
        if metadata_sha256:
            refs.private.setdefault(metadata_sha256, where + ".metadata")
    docs = session.execute(
        select(DocSet.sha256, DocSet.size, DocSet.index_id, DocSet.normalized_name, DocSet.version)
    )
    for sha256, size, index_id, name, version in docs:
        refs.private.setdefault(sha256, f"{paths.get(index_id, '?')} {name} {version} docs")
        refs.private_sizes.setdefault(sha256, size)
    for sha256, size, index_id in session.execute(
        select(MirrorBlob.sha256, MirrorBlob.size, MirrorBlob.index_id)
    ):
        refs.mirror[sha256] = size
        refs.mirror_index[sha256] = index_id
    pages = session.execute(
        select(MirrorPage.index_id, MirrorPage.files).where(MirrorPage.is_found.is_(True))
    )
    for index_id, entries in pages:
        for entry in entries or []:
            if entry.get("sha256"):
                refs.listed.setdefault(entry["sha256"], (index_id, entry, entry["filename"]))
            if entry.get("metadata_sha256"):
                refs.listed.setdefault(
                    entry["metadata_sha256"], (index_id, entry, entry["filename"] + ".metadata")
                )
    return refs


@dataclass
class Problem:
    """One damaged or suspicious thing."""

    kind: str  # missing, corrupt, orphan, dangling
    key: str  # a sha256, a path, or a table
    detail: str
    is_private: bool = False
    is_recent: bool = False  # an orphan too young to remove: maybe a write in progress
    repaired: str | None = None  # what --repair did about it


@dataclass
class Report:
    """What verify found (and repaired)."""

    blobs: int = 0
    bytes: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)
    adopted: int = 0

    def of(self, kind: str) -> list[Problem]:
        """Problems of one kind."""
        return [p for p in self.problems if p.kind == kind]

    @property
    def is_damaged(self) -> bool:
        """Whether anything is missing, corrupt or dangling and was not repaired."""
        return any(p.kind != "orphan" and p.repaired is None for p in self.problems)


def blob_sha256(storage: Storage, key: str) -> str:
    """The sha256 of a stored blob's bytes (streamed)."""
    with storage.open(key) as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


def _dangling(session: Session) -> list[tuple[str, int, bool]]:
    """(table, rows whose parent is gone, is_private) for every parent link."""
    checks = [
        ("files without their project", File, File.project_id, Project.id, True),
        ("projects without their index", Project, Project.index_id, Index.id, True),
        ("doc_sets without their index", DocSet, DocSet.index_id, Index.id, True),
        ("indexes without their owner", Index, Index.owner_id, User.id, True),
        ("tokens without their user", Token, Token.user_id, User.id, True),
        ("mirror_pages without their index", MirrorPage, MirrorPage.index_id, Index.id, False),
        ("mirror_blobs without their index", MirrorBlob, MirrorBlob.index_id, Index.id, False),
        (
            "mirror_sidecars without their index",
            MirrorSidecar,
            MirrorSidecar.index_id,
            Index.id,
            False,
        ),
        ("mirror_stats without their index", MirrorStats, MirrorStats.index_id, Index.id, False),
        ("mirror_files without their index", MirrorFile, MirrorFile.index_id, Index.id, False),
    ]
    found = []
    for label, model, column, parent_id, is_private in checks:
        count = session.scalar(
            select(func.count()).select_from(model).where(column.not_in(select(parent_id)))
        )
        if count:
            found.append((label, count, is_private))
    return found


class Verifier:
    """Walks the database and the blob store; repairs what may be repaired."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        storage: Storage,
        upstream: UpstreamClient | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.storage = storage
        self.cache = MirrorCache(settings, database, storage)
        # Repairs fetch through the mirror's download engine, as a request would.
        self.mirror = Mirror(settings, database, storage, upstream) if upstream else None

    def run(self, *, repair: bool = False, progress: bool = True) -> Report:
        """Check everything; with `repair`, fix mirror damage and remove orphans."""
        report = Report()
        started = time.monotonic()
        with self.database.session() as session:
            before = blob_references(session)
        files = list(self.storage.objects())
        bar = Progress("verify", sum(found.size for found in files)) if progress else None
        on_disk: set[str] = set()
        corrupt: dict[str, str] = {}
        for found in files:
            if found.key is not None:
                try:
                    actual = blob_sha256(self.storage, found.key)
                except FileNotFoundError:  # evicted meanwhile
                    continue
                on_disk.add(found.key)
                if actual != found.key:
                    corrupt[found.key] = actual
            report.blobs += 1
            report.bytes += found.size
            if bar:
                bar.advance(found.size)
        if bar:
            bar.finish()
        with self.database.session() as session:
            after = blob_references(session)
            dangling = _dangling(session)
        referenced = before.all_keys() | after.all_keys()

        for key, actual in corrupt.items():
            is_private = key in before.private or key in after.private
            where = (
                after.private.get(key) or before.private.get(key) or self._mirror_name(after, key)
            )
            report.problems.append(
                Problem("corrupt", key, f"{where}: content hashes to {actual}", is_private)
            )
        for key, where in before.private.items():
            if key not in on_disk and not self.storage.exists(key):
                report.problems.append(Problem("missing", key, where, is_private=True))
        for key in after.mirror:
            if key not in on_disk and key not in after.private and not self.storage.exists(key):
                detail = f"{self._mirror_name(after, key)} (cached copy; fetched again on demand)"
                report.problems.append(Problem("missing", key, detail))
        grace = time.time() - ORPHAN_GRACE_SECONDS
        for found in files:
            if found.key is not None and found.key in referenced:
                continue
            is_old = found.modified_at < grace
            what = "not referenced" if found.key else "not a blob name or not where its name says"
            detail = f"{what}, {human_bytes(found.size)}" + ("" if is_old else " (recent)")
            report.problems.append(
                Problem("orphan", found.key or found.name, detail, is_recent=not is_old)
            )
        for label, count, is_private in dangling:
            report.problems.append(Problem("dangling", label, f"{count} rows", is_private))

        if repair:
            self._repair(report, after)
        report.seconds = time.monotonic() - started
        return report

    def _mirror_name(self, refs: Refs, key: str) -> str:
        listed = refs.listed.get(key)
        return listed[2] if listed else "mirror-cached file"

    # --- repair --------------------------------------------------------------------------

    def _repair(self, report: Report, refs: Refs) -> None:
        for problem in report.problems:
            if problem.is_private:
                continue  # never touched: restore it from a backup, or upload it again
            if problem.kind in ("missing", "corrupt"):
                problem.repaired = self._refetch(problem, refs)
        self._remove_orphans(report)
        self._drop_dangling_cache_rows(report)
        report.adopted, _bytes = self.cache.adopt()

    def _refetch(self, problem: Problem, refs: Refs) -> str | None:
        key = problem.key
        listed = refs.listed.get(key)
        if listed is not None and self.mirror is not None:
            index_id, entry, name = listed
            try:
                self._fetch_again(self.mirror, index_id, entry, name, key)
            except Exception as exc:
                log.warning("could not fetch %s again: %s", name, exc)
            else:
                return "fetched again from the upstream"
        # Not refetchable now: drop it, so that the next request fetches it (never serve it).
        with BlobLock(self.settings).exclusive() as is_locked:
            if not is_locked:
                return None
            with self.database.session() as session:
                if uploaded_blobs(session, [key]):
                    return None  # an upload took these bytes meanwhile: private now
                begin_write(session)
                session.execute(delete(MirrorBlob).where(MirrorBlob.sha256 == key))
                session.execute(delete(MirrorHolding).where(MirrorHolding.sha256 == key))
                forget_metadata(session, [key])
                session.commit()
            if problem.kind == "corrupt":
                self.storage.delete(key)
        return "removed; the next request fetches it"

    def _fetch_again(
        self, mirror: Mirror, index_id: int, entry: dict[str, Any], name: str, key: str
    ) -> None:
        """Fetch a listed file (or its sidecar) over the damaged blob `key` through the mirror's
        own download (single flight with the server, hash check, commit, accounting, the
        METADATA it reads from a release file); raises when the blob is not right after."""
        with self.database.session() as session:
            index = session.get(Index, index_id)
            if index is None:
                raise ValueError("its mirror is gone")
            if name.endswith(".metadata"):
                mirror.sidecar(session, index, entry, replace=True)
                served = None
            else:
                served = mirror.downloads.fetch(index, entry, replace=True)
        if isinstance(served, Stream):
            try:
                for _chunk in served.chunks:  # the engine checks the bytes before committing
                    pass
            finally:
                served.close()
        actual = blob_sha256(self.storage, key)
        if actual != key:
            raise ValueError(f"the stored bytes still hash to {actual}")

    def _remove_orphans(self, report: Report) -> None:
        old = [p for p in report.of("orphan") if not p.is_recent]
        orphans = [p for p in old if _KEY_RE.match(p.key)]
        strays = [p for p in old if not _KEY_RE.match(p.key)]
        if not orphans and not strays:
            return
        with BlobLock(self.settings).exclusive() as is_locked:
            if not is_locked:
                log.warning("uploads kept the blob lock busy: orphans not removed, try again")
                return
            # One last look, under the lock: a write may have recorded one of them since.
            with self.database.session() as session:
                still = blob_references(session).all_keys()
            for problem in orphans:
                if problem.key in still:
                    continue
                self.storage.delete(problem.key)
                problem.repaired = "removed"
            for problem in strays:
                self.storage.remove_stray(problem.key)
                problem.repaired = "removed"

    def _drop_dangling_cache_rows(self, report: Report) -> None:
        dangling = [p for p in report.of("dangling") if not p.is_private]
        if not dangling:
            return
        with self.database.session() as session:
            begin_write(session)
            models = (MirrorPage, MirrorBlob, MirrorHolding, MirrorSidecar, MirrorStats, MirrorFile)
            for model in models:
                session.execute(delete(model).where(model.index_id.not_in(select(Index.id))))
            session.commit()
        for problem in dangling:
            problem.repaired = "deleted"


def format_report(report: Report) -> str:
    """A summary for people: counts, then each problem (the first SHOWN of each kind)."""
    rate = report.bytes / report.seconds if report.seconds else 0.0
    lines = [
        f"verify: {report.blobs} blobs ({human_bytes(report.bytes)}) checked in "
        f"{report.seconds:.1f} s ({human_bytes(rate)}/s)"
    ]
    titles = {
        "missing": "missing blobs",
        "corrupt": "hash mismatches",
        "dangling": "rows pointing nowhere",
        "orphan": "orphan blobs",
    }
    for kind, title in titles.items():
        problems = report.of(kind)
        lines.append(f"  {title}: {len(problems)}")
        for problem in problems[:SHOWN]:
            who = "private" if problem.is_private else "cache" if kind != "orphan" else ""
            fix = f" -> {problem.repaired}" if problem.repaired else ""
            label = f"[{who}] " if who else ""
            lines.append(f"    {label}{problem.key}: {problem.detail}{fix}")
        if len(problems) > SHOWN:
            lines.append(f"    ... and {len(problems) - SHOWN} more")
    if report.adopted:
        lines.append(f"  cached files added to the cache accounting: {report.adopted}")
    private = [p for p in report.problems if p.is_private and p.kind != "orphan"]
    if private:
        lines.append(
            "private files are damaged: restore them from a backup "
            "(entrypoint.sh restore) or upload them again; verify never changes them"
        )
    if report.is_damaged:
        lines.append("result: DAMAGED")
    else:
        lines.append("result: ok")
    return "\n".join(lines)


def open_to_others(settings: Settings) -> list[tuple[Path, int]]:
    """Paths of pyshelf's data that other users of this machine may reach, with their modes:
    DATA_DIR and what it holds (not below a folder closed to them), and a SQLite database kept
    elsewhere. DATA_DIR holds the secret key that signs sessions: readable, it lets anyone
    forge an admin's session cookie."""
    roots = [Path(settings.data_dir)]
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        database = Path(url.database).resolve()
        if not database.is_relative_to(roots[0].resolve()):
            roots += [database.with_name(database.name + end) for end in ("", "-wal", "-shm")]
    found: list[tuple[Path, int]] = []
    for root in roots:
        if not root.exists():
            continue
        if not root.is_dir():
            mode = stat.S_IMODE(root.stat().st_mode)
            if mode & 0o077:
                found.append((root, mode))
            continue
        for folder, dirs, files in os.walk(root):
            here = Path(folder)
            mode = stat.S_IMODE(here.stat().st_mode)
            if not mode & 0o077:
                dirs.clear()  # nobody else can enter it: what it holds is out of reach
                continue
            found.append((here, mode))
            for name in files:
                path = here / name
                mode = stat.S_IMODE(path.lstat().st_mode)
                if mode & 0o077 and not stat.S_ISLNK(path.lstat().st_mode):
                    found.append((path, mode))
    return found


def format_open_paths(found: list[tuple[Path, int]], settings: Settings) -> str:
    """A warning naming what others may read, and the chmod that closes it."""
    lines = [
        f"warning: {len(found)} paths are open to other users of this machine; DATA_DIR holds "
        "the secret key (it signs sessions), the database and private packages:"
    ]
    lines += [f"    {path} (mode {mode:04o})" for path, mode in found[:SHOWN]]
    if len(found) > SHOWN:
        lines.append(f"    ... and {len(found) - SHOWN} more")
    tops = sorted({str(path) for path, _ in found if not path.is_relative_to(settings.data_dir)})
    targets = " ".join(shlex.quote(p) for p in [str(settings.data_dir), *tops])
    lines.append(f"  fix: chmod -R go-rwx {targets}")
    return "\n".join(lines)


def verify(settings: Settings, *, repair: bool = False) -> Report:
    """Check every blob and row of this DATA_DIR; with `repair`, fix what may be fixed."""
    # Refetching goes through the server's own client: the same address checks (app/core/egress.py).
    upstream = UpstreamClient.from_settings(settings) if repair else None
    database = Database(settings.database_url)
    try:
        return Verifier(settings, database, make_storage(settings), upstream).run(repair=repair)
    finally:
        database.engine.dispose()
