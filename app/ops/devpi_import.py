"""Import what `devpi-export DIR` wrote into an empty pyshelf: `entrypoint.sh import-devpi DIR`.

The export is a directory with `dataindex.json` (users, index configs, version metadata and
a list of files with their hashes) and the files under `USER/INDEX/...`. What comes over:

- users, with their password hashes when pyshelf can check them: devpi-server >= 6 stores
  argon2 (kept as is), older ones a salted sha256 (kept as `devpi-sha256$SALT$HEX`); both are
  re-hashed to scrypt at the user's next login (app/http/auth.py). A user without a usable hash
  (an auth plugin's account, an unknown scheme) gets a locked password: the report names
  them, and `entrypoint.sh user passwd NAME` sets a new one. devpi's `root` is a superuser.
- indexes with the settings pyshelf knows (type, bases, volatile, acl_upload, acl_read,
  mirror_whitelist, mirror_url, mirror_cache_expiry, title, description); the others are
  named in the report. root/pypi keeps pyshelf's MIRROR_URL.
- release files and documentation zips, each checked against the hashes the export lists
  and against pyshelf's own rules for uploads; upload time and uploader come from devpi's log.
  Files of mirror indexes and tox results are not imported (mirrors fetch again on demand).

"Empty" means no project, file or doc set yet, and no users or indexes besides the ones
that the first start creates (ADMIN_USER, root, root/pypi, ADMIN_USER/dev), which the import
fills in; into a volume no server started yet, the import creates them first, as a first start
would. The import is one transaction: a missing or corrupt file, or a setting pyshelf
refuses, stops it with every problem listed and nothing recorded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import secrets
from pathlib import Path
from typing import Any, BinaryIO

from packaging.version import InvalidVersion, Version
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.dist_metadata import read_metadata
from app.core.dists import InvalidDistribution, normalize_name, parse_filename
from app.core.storage import Storage
from app.core.storage_choice import make_storage
from app.data.db import Database, begin_write
from app.data.models import DocSet, File, Index, Project, User, utcnow
from app.ops.devpi_format import (
    Digests,
    ExportError,
    expected_hashes,
    hash_file,
    parse_time,
    password_hash_from_devpi,
    read_dataindex,
)
from app.ops.prepare import MIRROR_INDEX, STAGE_INDEX, OperationError, bootstrap, is_first_start
from app.services.cache_blobs import BlobLock
from app.services.docs import InvalidDocs, inspect_zip
from app.services.fulltext import drain
from app.services.fulltext_docs import index_docset, read_docs
from app.services.indexes import get_index_by_path
from app.services.indexes_config import IndexConfigError, apply_config, create_index
from app.services.passwords import USERNAME_RE
from app.services.releases import add_file, release_fields, store_sidecar

log = logging.getLogger(__name__)

INDEX_KEYS = (
    "type",
    "bases",
    "volatile",
    "acl_upload",
    "acl_read",  # never dropped: a private index would turn public
    "mirror_whitelist",
    "mirror_url",
    "mirror_cache_expiry",
    "title",
    "description",
)
# Settings pyshelf lacks, at devpi's defaults: not worth a line in the report.
DEVPI_DEFAULTS = {
    "acl_toxresult_upload": [":ANONYMOUS:"],
    "mirror_whitelist_inheritance": "intersection",
}
# devpi settings with no meaning here, whatever their value: never reported.
DEVPI_UNUSED = {"mirror_web_url_fmt"}  # a link template to the upstream's project pages
LOCKED_PREFIX = "!devpi-import-reset-"  # a hash no password matches: set one with `user passwd`


class NotEmpty(OperationError):
    """This pyshelf already holds users, indexes or projects of its own: an import needs a new,
    empty data directory."""


@dataclasses.dataclass
class Report:
    """What an import did, and what it could not do."""

    users: list[str] = dataclasses.field(default_factory=list)
    password_resets: list[str] = dataclasses.field(default_factory=list)
    indexes: list[str] = dataclasses.field(default_factory=list)
    file_count: int = 0
    file_bytes: int = 0
    doc_count: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)
    ignored_settings: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        """The report as lines for people."""
        out = [
            f"users: {len(self.users)} ({', '.join(self.users) or 'none'})",
            f"indexes: {len(self.indexes)} ({', '.join(self.indexes) or 'none'})",
            f"release files: {self.file_count} ({self.file_bytes} bytes), "
            f"documentation sets: {self.doc_count}",
        ]
        if self.password_resets:
            out.append("passwords that must be reset (the accounts are locked until then):")
            out += [f"  {line}" for line in self.password_resets]
        for key, paths in sorted(self.ignored_settings.items()):
            out.append(f"setting not imported (pyshelf has no {key!r}): {', '.join(paths)}")
        if self.skipped:
            out.append("not imported:")
            out += [f"  {line}" for line in self.skipped]
        out += [f"note: {line}" for line in self.notes]
        return out


class Importer:
    """One import: reads the export, writes through one session, collects a Report."""

    def __init__(
        self, session: Session, storage: Storage, settings: Settings, directory: Path
    ) -> None:
        self.session = session
        self.storage = storage
        self.settings = settings
        self.directory = directory.resolve()
        self.report = Report()

    # --- checks ------------------------------------------------------------------------------

    def check_empty(self) -> None:
        """Refuse to import into a pyshelf that already holds projects, users or indexes."""
        hosted = self.session.scalar(select(func.count()).select_from(Project)) or 0
        docs = self.session.scalar(select(func.count()).select_from(DocSet)) or 0
        if hosted or docs:
            raise NotEmpty(
                f"this pyshelf already holds {hosted} projects and {docs} doc sets; "
                "import a devpi export into a new, empty data directory"
            )
        known_users = {self.settings.admin_user, MIRROR_INDEX[0]}
        others = [u for u in self.session.scalars(select(User.username)) if u not in known_users]
        known_indexes = {"/".join(MIRROR_INDEX), f"{self.settings.admin_user}/{STAGE_INDEX}"}
        indexes = [i.path for i in self.session.scalars(select(Index))]
        others += [path for path in indexes if path not in known_indexes]
        if others:
            raise NotEmpty(
                f"this pyshelf already has users or indexes ({', '.join(sorted(others)[:10])}); "
                "import a devpi export into a new, empty data directory"
            )

    def _path(self, relpath: str) -> Path | None:
        """A file of the export, never outside its directory."""
        path = (self.directory / relpath).resolve()
        return path if path.is_relative_to(self.directory) else None

    # --- users -------------------------------------------------------------------------------

    def import_users(self, users: dict[str, Any]) -> None:
        """Create the export's users (devpi's root as a superuser), with checkable hashes."""
        for name, data in sorted(users.items()):
            if not isinstance(data, dict) or not USERNAME_RE.match(name):
                self.report.errors.append(f"user {name!r}: not a valid pyshelf username")
                continue
            password_hash, kind = password_hash_from_devpi(data)
            email = data.get("email") if isinstance(data.get("email"), str) else None
            user = self.session.scalar(select(User).where(User.username == name))
            if user is not None:  # made by the first start: ADMIN_USER or root
                if not user.email and email:
                    user.email = email[:255]
                if name == MIRROR_INDEX[0] and user.password_hash.startswith("!"):
                    if password_hash:
                        user.password_hash = password_hash
                    else:
                        self.report.password_resets.append(f"{name}: {kind}")
                else:
                    self.report.notes.append(
                        f"user {name} existed already; kept its password (ADMIN_PASSWORD)"
                    )
                self.report.users.append(name)
                continue
            if password_hash is None:
                self.report.password_resets.append(
                    f"{name}: {kind}; set one with: entrypoint.sh user passwd {name}"
                )
            self.session.add(
                User(
                    username=name,
                    password_hash=password_hash or LOCKED_PREFIX + secrets.token_hex(16),
                    email=email[:255] if email else None,
                    is_superuser=name == MIRROR_INDEX[0],  # devpi's root is its superuser
                    created_at=parse_time(data.get("created")) or utcnow(),
                )
            )
            self.report.users.append(name)
        self.session.flush()

    # --- indexes -----------------------------------------------------------------------------

    def _settings_of(self, path: str, config: dict[str, Any]) -> dict[str, Any]:
        config = dict(config)
        if "pypi_whitelist" in config:  # renamed in devpi-server 3.0
            config.setdefault("mirror_whitelist", config.pop("pypi_whitelist"))
        if "acl_pkg_read" in config:  # devpi's read ACL lives in a plugin, named so in its docs
            config.setdefault("acl_read", config.pop("acl_pkg_read"))
        for key in sorted(set(config) - set(INDEX_KEYS) - DEVPI_UNUSED):
            if config[key] not in (None, "", [], {}) and config[key] != DEVPI_DEFAULTS.get(key):
                self.report.ignored_settings.setdefault(key, []).append(path)
        wanted = {k: v for k, v in config.items() if k in INDEX_KEYS and k not in ("bases",)}
        # devpi leaves out or nulls what is unset; pyshelf's columns want values.
        return {k: v for k, v in wanted.items() if v is not None}

    def import_indexes(self, indexes: dict[str, Any]) -> dict[str, Index]:
        """Create (or, for the first start's, configure) the indexes; bases once all exist."""
        created: dict[str, Index] = {}
        for path, meta in indexes.items():
            username, _, name = path.partition("/")
            config = (meta or {}).get("indexconfig") if isinstance(meta, dict) else None
            if not isinstance(config, dict):
                self.report.errors.append(f"index {path}: no indexconfig in the export")
                continue
            kind = config.get("type", "stage")
            if kind not in ("stage", "mirror"):
                self.report.skipped.append(
                    f"index {path}: type {kind!r} (pyshelf has stage, mirror)"
                )
                continue
            settings = self._settings_of(path, config)
            if ":ANONYMOUS:" in (settings.get("acl_upload") or ()):
                self.report.notes.append(
                    f"{path}: acl_upload has :ANONYMOUS:, but pyshelf wants a login for uploads"
                )
            existing = get_index_by_path(self.session, path)
            try:
                if existing is None:
                    owner = self.session.scalar(select(User).where(User.username == username))
                    if owner is None:
                        self.report.errors.append(f"index {path}: its user is not in the export")
                        continue
                    index = create_index(self.session, owner, name, settings)
                else:
                    if existing.type != kind:
                        self.report.errors.append(
                            f"index {path} is a {kind} in devpi and a {existing.type} here"
                        )
                        continue
                    if path == "/".join(MIRROR_INDEX):
                        old_url = settings.pop("mirror_url", None)
                        if old_url and old_url != existing.mirror_url:
                            self.report.notes.append(
                                f"{path} keeps MIRROR_URL; devpi mirrored {old_url} "
                                "(set MIRROR_URL to keep that)"
                            )
                    settings.pop("type", None)
                    apply_config(self.session, existing, settings)
                    index = existing
            except IndexConfigError as exc:
                self.report.errors.append(f"index {path}: {exc}")
                continue
            self.session.flush()
            created[path] = index
            self.report.indexes.append(path)
        for path, index in created.items():
            bases = indexes[path]["indexconfig"].get("bases") or []
            if index.is_mirror:
                continue
            try:
                apply_config(self.session, index, {"bases": bases})
            except IndexConfigError as exc:
                self.report.errors.append(f"index {path}: {exc}")
        self.session.flush()
        return created

    # --- files -------------------------------------------------------------------------------

    def _save_blob(self, key: str, source: BinaryIO) -> None:
        if not self.storage.exists(key):
            self.storage.save(key, source)

    def _project(self, index: Index, name: str) -> Project:
        normalized = normalize_name(name)
        project = self.session.scalar(
            select(Project).where(
                Project.index_id == index.id, Project.normalized_name == normalized
            )
        )
        if project is None:
            project = Project(index_id=index.id, name=name, normalized_name=normalized)
            self.session.add(project)
            self.session.flush()
        return project

    def _checked_file(self, path_label: str, entry: dict[str, Any]) -> tuple[Path, Digests] | None:
        relpath = str(entry.get("relpath") or "")
        path = self._path(relpath)
        if path is None or not path.is_file():
            self.report.errors.append(f"{path_label}: {relpath} is missing from the export")
            return None
        expected = expected_hashes(entry)
        digests, mismatches = hash_file(path, expected)
        if mismatches:
            self.report.errors.append(
                f"{path_label}: {relpath} is corrupt: {'; '.join(mismatches)}"
            )
            return None
        if not digests.checked:
            self.report.notes.append(f"{relpath}: the export lists no hash to check it against")
        return path, digests

    @staticmethod
    def _upload_log(entry: dict[str, Any]) -> tuple[str, dt.datetime | None]:
        """Who uploaded a file and when, from devpi's log (the last upload or push)."""
        who, when = "", None
        for item in entry.get("log") or ():
            if isinstance(item, dict) and item.get("what") in ("upload", "push"):
                who, when = str(item.get("who") or "")[:64], parse_time(item.get("when"))
        mapping = entry.get("entrymapping") or {}
        return who, when or parse_time(mapping.get("last_modified"))

    def import_release(self, index: Index, entry: dict[str, Any], versions: dict[str, Any]) -> None:
        """One release file: checked, stored as a blob, recorded with its core metadata."""
        checked = self._checked_file(index.path, entry)
        if checked is None:
            return
        path, digests = checked
        try:
            info = parse_filename(path.name)
            meta = read_metadata(path, info)
        except InvalidDistribution as exc:
            self.report.skipped.append(f"{index.path}: {path.name}: {exc}")
            return
        versiondata = (versions.get(info.normalized_name) or {}).get(str(entry.get("version")))
        versiondata = versiondata if isinstance(versiondata, dict) else {}
        project = self._project(index, str(versiondata.get("name") or meta.name))
        if meta.summary:
            project.summary = meta.summary[:1000]
        exists = self.session.scalar(
            select(File.id).where(File.project_id == project.id, File.filename == info.filename)
        )
        if exists is not None:
            self.report.skipped.append(f"{index.path}: {path.name}: listed twice in the export")
            return
        with path.open("rb") as source:
            self._save_blob(digests.sha256, source)
        metadata_sha256 = store_sidecar(self.storage, info, meta)  # PEP 658, as uploads get
        who, when = self._upload_log(entry)
        yanked = versiondata.get("yanked")
        fields = release_fields(
            info,
            meta,
            digests,
            metadata_sha256=metadata_sha256,
            uploader=who,
            uploaded_at=when,
            yanked=yanked if isinstance(yanked, str) else bool(yanked),
        )
        add_file(self.session, project, fields)
        self.report.file_count += 1
        self.report.file_bytes += digests.size

    def import_docs(self, index: Index, entry: dict[str, Any]) -> None:
        """One documentation zip: checked as uploads are, stored as a blob, recorded."""
        checked = self._checked_file(index.path, entry)
        if checked is None:
            return
        path, digests = checked
        try:
            version = str(Version(str(entry.get("version"))))
            info = inspect_zip(
                path,
                max_bytes=self.settings.docs_max_bytes,
                max_files=self.settings.docs_max_files,
            )
        except InvalidVersion:
            self.report.skipped.append(f"{index.path}: {path.name}: no valid version")
            return
        except InvalidDocs as exc:
            self.report.skipped.append(f"{index.path}: {path.name}: {exc}")
            return
        project = self._project(index, str(entry.get("projectname") or path.name))
        with path.open("rb") as source:
            self._save_blob(digests.sha256, source)
        who, when = self._upload_log(entry)
        docset = DocSet(
            index_id=index.id,
            normalized_name=project.normalized_name,
            version=version,
            sha256=digests.sha256,
            size=digests.size,
            uncompressed_bytes=info.uncompressed_bytes,
            entry_count=info.entry_count,
            path_prefix=info.path_prefix,
            uploader=who,
            uploaded_at=when or utcnow(),
        )
        self.session.add(docset)
        index_docset(self.session, docset, read_docs(str(path), info.path_prefix))
        self.report.doc_count += 1  # devpi-export writes one zip per version (the newest)

    def import_files(self, path: str, index: Index, meta: dict[str, Any]) -> None:
        """The release files and docs of one index, in the order the export lists them."""
        entries = [e for e in meta.get("files") or () if isinstance(e, dict)]
        if index.is_mirror:
            if entries:
                self.report.notes.append(
                    f"{path}: {len(entries)} mirrored files not imported (fetched on demand)"
                )
            return
        versions = {
            normalize_name(name): data
            for name, data in (meta.get("projects") or {}).items()
            if isinstance(data, dict)
        }
        toxresults = 0
        for entry in entries:
            kind = entry.get("type")
            if kind == "releasefile":
                self.import_release(index, entry, versions)
            elif kind == "doczip":
                self.import_docs(index, entry)
            elif kind == "toxresult":
                toxresults += 1
            else:
                self.report.skipped.append(f"{path}: {entry.get('relpath')}: type {kind!r}")
        if toxresults:
            self.report.notes.append(f"{path}: {toxresults} tox results not imported")

    def run(self) -> Report:
        """Import everything; on any error roll back and raise ExportError with all of them."""
        data = read_dataindex(self.directory)
        begin_write(self.session)
        if is_first_start(self.session):  # no server started here yet: the import is the start
            bootstrap(self.session, self.settings)
            begin_write(self.session)
        self.check_empty()
        # As uploads: blobs stored before the commit that references them must not be taken
        # for orphans (app/services/cache.py). After a rollback they are orphans, removed later.
        with BlobLock(self.settings).shared():
            self.import_users(data["users"])
            indexes = self.import_indexes(data["indexes"])
            for path, index in indexes.items():
                self.import_files(path, index, data["indexes"][path])
            if self.report.errors:
                self.session.rollback()
                problems = "\n  ".join(self.report.errors)
                raise ExportError(f"nothing was imported; fix the export and retry:\n  {problems}")
            self.session.commit()
        return self.report


def import_export(settings: Settings, directory: Path) -> Report:
    """Import the devpi-server export in `directory` into this (empty) pyshelf, all or nothing."""
    database = Database(settings.database_url)
    try:
        storage = make_storage(settings)
        with database.session() as session:
            report = Importer(session, storage, settings, directory).run()
        drain(database, storage)  # the releases it added, queued for search
        return report
    finally:
        database.engine.dispose()
