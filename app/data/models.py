"""The data model: users, tokens, indexes, projects, files, doc sets, promotions, mirror cache,
logins, search documents, advisories.

It stays one module past ~500 lines on purpose: read top to bottom it is the whole schema, every
table with its foreign keys and the models its relationships name, as a migration sees it."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy import (
    Index as SQLIndex,
)
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.data.db import Base

INDEX_TYPES = ("stage", "mirror")
ANONYMOUS = ":ANONYMOUS:"  # in acl_read: everyone, logged in or not (devpi's spelling)
AUTHENTICATED = ":AUTHENTICATED:"  # in acl_read: any logged-in user


def utcnow() -> dt.datetime:
    """The current time in UTC, without tzinfo (as stored)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class User(Base):
    """A person (or robot) who may log in, upload and own indexes.

    flask-login reads the four members below (what its UserMixin would give; written out so
    that the data layer stays free of Flask). Two User objects are equal when their ids are:
    the same row loaded by two sessions is one person.
    """

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(255))
    is_superuser: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    indexes: Mapped[list[Index]] = relationship(back_populates="owner", cascade="all, delete")
    tokens: Mapped[list[Token]] = relationship(back_populates="user", cascade="all, delete")

    is_active = True  # no disabled accounts: a user is removed, not switched off
    is_authenticated = True
    is_anonymous = False

    def get_id(self) -> str:
        """The id flask-login keeps in the session cookie."""
        return str(self.id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, User) and self.id == other.id

    __hash__ = object.__hash__


class Token(Base):
    """An API token, used as the password of the username `__token__`; only its hash is stored."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # A token limited to one index authenticates only requests to that index; deleting the
    # index deletes the token (never widen it to every index).
    index_id: Mapped[int | None] = mapped_column(
        ForeignKey("indexes.id", ondelete="CASCADE"), index=True
    )
    last_used_at: Mapped[dt.datetime | None] = mapped_column()
    # What a token limited to one index may read, fixed when it was made: that index and its
    # bases then (app/http/auth.py). Changing the bases later never widens it. None: no limit.
    read_paths: Mapped[list[str] | None] = mapped_column(JSON)

    user: Mapped[User] = relationship(back_populates="tokens")
    index: Mapped[Index | None] = relationship(lazy="joined")


class WebSession(Base):
    """A logged-in browser: its session cookie names the row (only the sha256 is stored);
    logging out deletes the row, so a copy of the cookie ends with it (app/http/auth.py)."""

    __tablename__ = "web_sessions"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)  # SESSION_LIFETIME after login


class Index(Base):
    """`USER/NAME`: a stage (uploads, with ordered bases) or a mirror (of one upstream)."""

    __tablename__ = "indexes"
    __table_args__ = (UniqueConstraint("owner_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))
    bases: Mapped[list[str]] = mapped_column(JSON, default=list)
    volatile: Mapped[bool] = mapped_column(default=False)
    acl_upload: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Who may read (app/services/indexes.py may_read): user names, ":ANONYMOUS:" (everyone, the
    # default) or ":AUTHENTICATED:" (any logged-in user); the owner and superusers always may.
    acl_read: Mapped[list[str]] = mapped_column(
        JSON, default=lambda: [ANONYMOUS], server_default=f'["{ANONYMOUS}"]'
    )
    mirror_whitelist: Mapped[list[str]] = mapped_column(JSON, default=list)
    mirror_url: Mapped[str | None] = mapped_column(String(2048))
    mirror_cache_expiry: Mapped[int | None] = mapped_column()
    # None: off; "all", or the lowest severity whose advisories hide a release from installers
    # (app/services/advisories.py)
    block_vulnerable: Mapped[str | None] = mapped_column(String(16))
    # A mirror that never asks a network: it serves what bundles brought (app/ops/bundle_import.py)
    offline: Mapped[bool] = mapped_column(default=False, server_default=false())
    # The supply-chain guard (app/services/guard.py): upstream files younger than this many
    # seconds are held back (0: off); exemptions and block rules are lists of records
    # {"spec", "reason" (block rules), "by", "at"}, so each says who added it and when.
    mirror_min_age: Mapped[int] = mapped_column(default=0, server_default="0")
    mirror_min_age_exempt: Mapped[list[dict[str, str]]] = mapped_column(
        JSON, default=list, server_default="[]"
    )
    # Loaded only when asked for (a thousand rules are 100 kB of JSON): pages find the compiled
    # rules by `blocked_digest`, the sha256 of the rules ("" for none), without reading them.
    blocked: Mapped[list[dict[str, str]]] = mapped_column(
        JSON, default=list, server_default="[]", deferred=True
    )
    blocked_digest: Mapped[str] = mapped_column(String(64), default="", server_default="")
    title: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    owner: Mapped[User] = relationship(back_populates="indexes", lazy="joined")
    projects: Mapped[list[Project]] = relationship(back_populates="index", cascade="all, delete")

    @property
    def path(self) -> str:
        """`user/name`, as in URLs and in other indexes' `bases`."""
        return f"{self.owner.username}/{self.name}"

    @property
    def is_mirror(self) -> bool:
        """Whether this index proxies an upstream instead of holding uploads."""
        return self.type == "mirror"

    @property
    def is_offline(self) -> bool:
        """Whether this is a mirror that never asks an upstream (offline, or no mirror_url)."""
        return self.is_mirror and (bool(self.offline) or not self.mirror_url)


class Project(Base):
    """A project on one index, known by its normalized name (PEP 503)."""

    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("index_id", "normalized_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    index_id: Mapped[int] = mapped_column(ForeignKey("indexes.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    normalized_name: Mapped[str] = mapped_column(String(255), index=True)
    summary: Mapped[str | None] = mapped_column(Text)  # of the latest upload; for search
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # PEP 792 project status (None: never set, which means active) and why; who set it, when
    status: Mapped[str | None] = mapped_column(String(16))
    status_reason: Mapped[str | None] = mapped_column(Text)
    status_by: Mapped[str | None] = mapped_column(String(64))
    status_at: Mapped[dt.datetime | None] = mapped_column()

    index: Mapped[Index] = relationship(back_populates="projects")
    files: Mapped[list[File]] = relationship(back_populates="project", cascade="all, delete")


class File(Base):
    """An uploaded release file; its bytes live in the blob store under `sha256`."""

    __tablename__ = "files"
    __table_args__ = (UniqueConstraint("project_id", "filename"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(128))
    filetype: Mapped[str] = mapped_column(String(16))
    pyversion: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    blake2_256: Mapped[str] = mapped_column(String(64))
    md5: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(BigInteger)  # past 2 GiB: PostgreSQL's integer is 32-bit
    requires_python: Mapped[str | None] = mapped_column(String(255))
    yanked: Mapped[bool] = mapped_column(default=False)
    yanked_reason: Mapped[str | None] = mapped_column(Text)
    metadata_sha256: Mapped[str | None] = mapped_column(String(64))
    core_metadata: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    uploader: Mapped[str] = mapped_column(String(64), default="")
    uploaded_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    project: Mapped[Project] = relationship(back_populates="files")


class ServerBlock(Base):
    """A block rule of the whole server (app/services/guard.py): set by superusers, it applies to
    every index and no index owner can lift it."""

    __tablename__ = "server_blocks"

    id: Mapped[int] = mapped_column(primary_key=True)
    spec: Mapped[str] = mapped_column(String(1024))  # PEP 508 name and specifiers, or *
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class FileProvenance(Base):
    """The PEP 740 provenance object of an uploaded file (its attestations, checked at upload)."""

    __tablename__ = "file_provenance"

    file_id: Mapped[int] = mapped_column(
        ForeignKey("files.id", ondelete="CASCADE"), primary_key=True
    )
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON)


class MirrorPage(Base):
    """A cached upstream project page of a mirror index (or a remembered upstream 404)."""

    __tablename__ = "mirror_pages"
    __table_args__ = (UniqueConstraint("index_id", "normalized_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    index_id: Mapped[int] = mapped_column(ForeignKey("indexes.id", ondelete="CASCADE"))
    normalized_name: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(String(255))
    is_found: Mapped[bool] = mapped_column(default=True)  # False: upstream said 404
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    status: Mapped[str | None] = mapped_column(String(16))  # the upstream's PEP 792 status
    status_reason: Mapped[str | None] = mapped_column(Text)
    etag: Mapped[str | None] = mapped_column(String(255))
    last_modified: Mapped[str | None] = mapped_column(String(64))
    checked_at: Mapped[dt.datetime | None] = (
        mapped_column()
    )  # last answer from upstream; None: refresh
    fetched_at: Mapped[dt.datetime] = mapped_column(default=utcnow)  # last time the content changed


class MirrorStats(Base):
    """Cache counters of one mirror index, and how its upstream last answered."""

    __tablename__ = "mirror_stats"

    index_id: Mapped[int] = mapped_column(
        ForeignKey("indexes.id", ondelete="CASCADE"), primary_key=True
    )
    hits: Mapped[int] = mapped_column(BigInteger, default=0)
    misses: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_fetched: Mapped[int] = mapped_column(BigInteger, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[dt.datetime | None] = mapped_column()
    last_ok_at: Mapped[dt.datetime | None] = mapped_column()


class MirrorBlob(Base):
    """A blob that a mirror cached: what the cache cap counts and evicts, least recently used first.

    Blobs that uploads (File, DocSet) reference are never evicted, even when a mirror cached the
    same bytes too. `last_access_at` is written in batches, not on every download.
    """

    __tablename__ = "mirror_blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    index_id: Mapped[int] = mapped_column(ForeignKey("indexes.id", ondelete="CASCADE"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    cached_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_access_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


class MirrorHolding(Base):
    """Bytes a mirror fetched from its own upstream and verified: what it may serve.

    All indexes share one blob store, keyed by sha256; an upstream page can list any sha256
    (another index's private upload, say), so a mirror serves a stored blob only when it holds
    it. One row per (mirror, blob), for files and PEP 658 sidecars; `mirror_blobs` counts each
    blob once for the cache cap, and eviction drops every mirror's holding of what it removes.
    """

    __tablename__ = "mirror_holdings"

    index_id: Mapped[int] = mapped_column(
        ForeignKey("indexes.id", ondelete="CASCADE"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    fetched_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class MirrorSidecar(Base):
    """Which cached PEP 658 sidecar belongs to a mirrored file: the sidecar's URL names the
    file's sha256, the store keeps the sidecar under its own. Recorded when the sidecar is first
    served (app/services/mirror/), dropped when the project's upstream page no longer lists the
    pair, so a cached sidecar is found without decoding the project's page (app/http/files.py).
    """

    __tablename__ = "mirror_sidecars"

    index_id: Mapped[int] = mapped_column(
        ForeignKey("indexes.id", ondelete="CASCADE"), primary_key=True
    )
    dist_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    filename: Mapped[str] = mapped_column(String(255))  # of the file, without ".metadata"
    normalized_name: Mapped[str] = mapped_column(String(255))
    metadata_sha256: Mapped[str] = mapped_column(String(64))


class MirrorFile(Base):
    """A file a mirror cached: its size, and the core metadata extracted from it then.

    `metadata_sha256` keys the METADATA of a wheel or the PKG-INFO of an sdist in the blob store
    (this mirror holds it too, as it holds the file); only a wheel's is served, as its PEP 658
    sidecar (`is_sidecar`): an sdist's dependencies are known only after a build. Written once
    per file by app/services/mirror_metadata.py; page-cache triggers (migration 0012) forget the
    project's pages when a row changes, so a page shows the size and core metadata from then on.
    """

    __tablename__ = "mirror_files"

    index_id: Mapped[int] = mapped_column(
        ForeignKey("indexes.id", ondelete="CASCADE"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    normalized_name: Mapped[str] = mapped_column(String(255), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    metadata_sha256: Mapped[str | None] = mapped_column(String(64))  # None: none could be read
    is_sidecar: Mapped[bool] = mapped_column(default=False)
    cached_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class BundleImport(Base):
    """The last bundle imported into one project of an index (app/ops/bundle_import.py): an
    import of the same bundle changes nothing, one made before it is refused as a replay."""

    __tablename__ = "bundle_imports"

    index_id: Mapped[int] = mapped_column(
        ForeignKey("indexes.id", ondelete="CASCADE"), primary_key=True
    )
    normalized_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    bundle_id: Mapped[str] = mapped_column(String(64))
    bundle_created_at: Mapped[dt.datetime] = mapped_column()  # when `bundle export` wrote it
    imported_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    files: Mapped[int] = mapped_column(default=0)  # how many files that bundle brought


class DocSet(Base):
    """A zip of built HTML documentation for one project version; the zip is a blob."""

    __tablename__ = "doc_sets"
    __table_args__ = (UniqueConstraint("index_id", "normalized_name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    index_id: Mapped[int] = mapped_column(ForeignKey("indexes.id", ondelete="CASCADE"))
    normalized_name: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(128))  # normalized: str(Version(...))
    sha256: Mapped[str] = mapped_column(String(64))  # of the zip, its blob key
    size: Mapped[int] = mapped_column(BigInteger)  # bytes of the zip
    uncompressed_bytes: Mapped[int] = mapped_column(BigInteger)
    entry_count: Mapped[int] = mapped_column()
    path_prefix: Mapped[str] = mapped_column(String(255), default="")  # stripped top folder
    uploader: Mapped[str] = mapped_column(String(64), default="")
    uploaded_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Promotion(Base):
    """A release copied into an index from another stage (devpi push, the web's Promote, the
    JSON API): who copied what from where, and when; shown on the target's version page."""

    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(primary_key=True)
    index_id: Mapped[int] = mapped_column(
        ForeignKey("indexes.id", ondelete="CASCADE"), index=True
    )  # the target
    normalized_name: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(128))  # as the files spell it (PEP 440)
    # USER/INDEX as text: the audit trail outlives a source index that is deleted later
    source_path: Mapped[str] = mapped_column(String(130))
    promoted_by: Mapped[str] = mapped_column(String(64))
    promoted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    filenames: Mapped[list[str]] = mapped_column(JSON, default=list)  # the files copied
    has_docs: Mapped[bool] = mapped_column(default=False)  # whether the docs were copied


class LoginFailure(Base):
    """Failed password checks of one key ("user:IP/NAME" or "addr:IP"), or anonymous refreshes
    of one address ("refresh:IP"), shared by all workers."""

    __tablename__ = "login_failures"

    key: Mapped[str] = mapped_column(String(320), primary_key=True)
    count: Mapped[int] = mapped_column(default=0)
    window_started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[dt.datetime | None] = mapped_column()


class CachedPage(Base):
    """A rendered simple page (one index, project and representation), shared by all workers.

    Database triggers (migration 0005) delete the rows of a project name whenever a file,
    project or mirror page of that name changes, and every row when an index changes; a page
    that shows mirrored files is also good only until `expires_at` (app/services/pagecache.py).
    """

    __tablename__ = "cached_pages"
    __table_args__ = (UniqueConstraint("normalized_name", "index_path", "variant"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    normalized_name: Mapped[str] = mapped_column(String(255))
    index_path: Mapped[str] = mapped_column(String(130))  # USER/INDEX, as in the URL
    variant: Mapped[str] = mapped_column(String(1024))  # media type and URL prefix
    etag: Mapped[str] = mapped_column(String(64))
    cache_control: Mapped[str] = mapped_column(String(64))
    is_public: Mapped[bool] = mapped_column()  # every index it was made from is public
    # Unix time when a mirror page it shows is due for a check (None: no mirror data in it);
    # a number, so that the hot path compares it without SQLAlchemy's type processing
    expires_epoch_seconds: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Bodies last: SQLite reads the columns above without walking a body's overflow pages.
    has_gzip: Mapped[bool] = mapped_column()
    body_gzip: Mapped[bytes | None] = mapped_column(LargeBinary)  # only for large bodies
    body: Mapped[bytes] = mapped_column(LargeBinary)


class PageCacheState(Base):
    """One row: bumped by the same triggers, so a page built from older data is not stored."""

    __tablename__ = "page_cache_state"

    id: Mapped[int] = mapped_column(primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)


class SearchDocument(Base):
    """What full-text search finds (app/services/fulltext.py): a project's newest release, one page
    of its uploaded docs, or a project a mirror cached. Rows go with their project, doc set,
    mirror page or index (ON DELETE CASCADE); on SQLite the FTS5 table `search_fts` indexes
    them (kept in step by triggers, app/data/schema.py), on PostgreSQL the GIN index on `tsv`."""

    __tablename__ = "search_documents"
    # No pending list (fastupdate off, migration 0022): every search scanned all of it, up to
    # 4 MB of entries not yet merged, 5-20 ms per statement; inserts take about 8% longer.
    __table_args__ = (
        SQLIndex(
            "ix_search_documents_tsv",
            "tsv",
            postgresql_using="gin",
            postgresql_with={"fastupdate": "off"},
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    index_id: Mapped[int] = mapped_column(ForeignKey("indexes.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[int | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    docset_id: Mapped[int | None] = mapped_column(
        ForeignKey("doc_sets.id", ondelete="CASCADE"), index=True
    )
    mirror_page_id: Mapped[int | None] = mapped_column(
        ForeignKey("mirror_pages.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # release, docs or mirror
    normalized_name: Mapped[str] = mapped_column(String(255), index=True)
    version: Mapped[str] = mapped_column(String(128), default="")
    path: Mapped[str] = mapped_column(String(1024), default="")  # of a docs page in its zip
    # The searched fields; `name` is empty on docs pages (a project's name would match every
    # page of its docs), `keywords` holds keywords, classifiers, author and project URLs.
    name: Mapped[str] = mapped_column(String(255), default="")
    summary: Mapped[str] = mapped_column(Text, default="")
    keywords: Mapped[str] = mapped_column(Text, default="")
    description: Mapped[str] = mapped_column(Text, default="")  # rendered, as text
    body: Mapped[str] = mapped_column(Text, default="")  # a docs page's visible text
    title: Mapped[str] = mapped_column(Text, default="")  # a docs page's <title>
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)  # the recency tie-break
    # PostgreSQL's weighted tsvector of the fields (always NULL on SQLite, which uses FTS5)
    tsv: Mapped[Any] = mapped_column(TSVECTOR().with_variant(Text(), "sqlite"), nullable=True)


class SearchJob(Base):
    """A change full-text search has yet to index (app/services/fulltext.py): written in the
    transaction of the change, deleted in the one that indexes it, so a crash between the two
    leaves it here for the next drain. `kind` is project, docset or mirror; `target_id` the id
    of that row (gone by then: its documents went with it, ON DELETE CASCADE)."""

    __tablename__ = "search_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    target_id: Mapped[int]
    queued_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Advisory(Base):
    """A security advisory from an imported OSV export (app/ops/osv_import.py): one OSV record."""

    __tablename__ = "advisories"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # OSV id: GHSA-..., PYSEC-...
    summary: Mapped[str] = mapped_column(Text, default="")
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)
    severity: Mapped[str | None] = mapped_column(String(16))  # low, moderate, high, critical
    url: Mapped[str] = mapped_column(String(2048), default="")
    modified: Mapped[str] = mapped_column(String(64), default="")  # as the record says (RFC 3339)


class AdvisoryAffected(Base):
    """One affected package of an advisory: the PyPI project and the versions it covers."""

    __tablename__ = "advisory_affected"

    id: Mapped[int] = mapped_column(primary_key=True)
    advisory_id: Mapped[str] = mapped_column(
        ForeignKey("advisories.id", ondelete="CASCADE"), index=True
    )
    normalized_name: Mapped[str] = mapped_column(String(255), index=True)
    # [introduced, fixed, last_affected] per ECOSYSTEM range (None where an event is absent)
    ranges: Mapped[list[list[str | None]]] = mapped_column(JSON, default=list)
    versions: Mapped[list[str]] = mapped_column(JSON, default=list)  # listed one by one
    fixed: Mapped[list[str]] = mapped_column(JSON, default=list)  # the versions that fix it
