"""Settings from environment variables: one table of them, and the only place that reads them
(how each kind of value reads: app/core/config_kinds.py; the reference: config_docs.py)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from app.core.config_kinds import (
    BODY_SIZE,
    BOOLEAN,
    CACHE_SIZE,
    DECIMAL_SECONDS,
    DURATION,
    FILE,
    FOLDER,
    HOSTS,
    LOG_FORMATS,
    LOG_LEVELS,
    MIRROR_CREATORS,
    NETWORKS,
    NUMBER,
    OPTIONAL_DURATION,
    OPTIONAL_TEXT,
    OPTIONAL_URL,
    PASSWORD,
    PORT,
    PREFIX,
    PROXIES,
    REQUEST_SECONDS,
    SECONDS,
    SECRET,
    SIZE,
    SQL_URL,
    STORAGE,
    TEXT,
    THREADS,
    URL,
    USER_NAME,
    VULNERABLE_THRESHOLDS,
    WORKERS,
    Kind,
)

DEFAULT_MIRROR_URL = "https://pypi.tuna.tsinghua.edu.cn/simple/"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - an appliance serves the LAN


class ConfigError(ValueError):
    """One or more environment variables are invalid; the message lists all of them.

    `settings` holds the others (each bad one at its default) and `bad` names the bad ones, so
    that a start can check what else is wrong and still report everything at once.
    """

    def __init__(
        self,
        problems: list[str],
        settings: Settings | None = None,
        bad: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems
        self.settings = settings
        self.bad = bad


def mask_database_url(url: str) -> str:
    """`url` with everything between `://` and its last `@` shown as `***`: SQLAlchemy takes a
    password up to the first `@` and lets it hold `/`, `?` and `#`, so an HTTP URL's rules for
    where the userinfo ends would show part of it (this masks too much rather than too little)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, after = rest.rpartition("@")
    if not sep or not at:
        return url
    return f"{scheme}://***:***@{after}" if userinfo else url


def read_dotenv(path: Path) -> dict[str, str]:
    """Read KEY=VALUE lines from a .env file (comments, blank lines and quotes allowed)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


# --- the table --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, kind, default (as it would be written) and meaning."""

    env: str
    kind: Kind
    default: str
    meaning: str
    section: str
    docker: str = ""  # the value the Docker image sets instead (.env.example comments it out)

    def parse(self, text: str) -> Any:
        """The value of this variable's text (empty: the default); ValueError when bad."""
        if self.kind.strip:
            text = text.strip()
        if not text:
            return self.kind.parse(self.env, self.default) if self.default else self.kind.empty
        return self.kind.parse(self.env, text)


def setting(
    section: str,
    env: str,
    kind: Kind,
    default: str,
    *,
    meaning: str,
    docker: str = "",
) -> Any:
    """A field of Settings read from the variable `env`, as the row of the table says."""
    row = Setting(env, kind, default, " ".join(meaning.split()), section, docker)
    return field(default=row.parse(""), repr=not kind.secret, metadata={"setting": row})


SERVER = "Server"
ACCOUNTS = "First start"
MIRROR = "Mirror and upstream"
LIMITS = "Requests and uploads"
DATABASE = "Database and sessions"
STORAGE_SECTION = "File storage"
PROCESSES = "Workers and logs"
MONITORING = "Metrics and status"


@dataclass(frozen=True)
class Settings:
    """Everything pyshelf can be told; built by `from_env`, or directly by tests."""

    # A table, one row per variable with its meaning below it: kept as written.
    # fmt: off
    data_dir: Path = setting(  # noqa: RUF009 - setting() returns a field()
        SERVER, "DATA_DIR", FOLDER, "./data", docker="/data", meaning="""
        Where all state lives: the SQLite database, the blobs, the secret key.""")
    host: str = setting(SERVER, "HOST", TEXT, ALL_INTERFACES, meaning="""
        The address gunicorn listens on.""")
    port: int = setting(SERVER, "PORT", PORT, "3141", meaning="""
        The port gunicorn listens on.""")
    tls_cert: str | None = setting(SERVER, "TLS_CERT", FILE, "", meaning="""
        HTTPS without a proxy: the PEM certificate (chain), readable by the user pyshelf runs
        as (uid 10001 in the image). Set TLS_CERT and TLS_KEY both, or neither (plain HTTP).""")
    tls_key: str | None = setting(SERVER, "TLS_KEY", FILE, "", meaning="""
        The private key of TLS_CERT (PEM), readable by pyshelf.""")
    forwarded_allow_ips: tuple[str, ...] = setting(
        SERVER, "FORWARDED_ALLOW_IPS", PROXIES, "127.0.0.1,::1", meaning="""
        Reverse proxies whose X-Forwarded-For/-Proto/-Host/-Prefix headers are believed:
        addresses or networks, comma-separated, or * (only when nothing but the proxy can
        reach pyshelf).""")
    script_name: str = setting(SERVER, "SCRIPT_NAME", PREFIX, "", meaning="""
        The path pyshelf is served under (/pypi) when a proxy passes the full path instead of
        sending X-Forwarded-Prefix. Empty: the root.""")
    public_url: str | None = setting(SERVER, "PUBLIC_URL", OPTIONAL_URL, "", meaning="""
        The URL clients reach pyshelf at (https://pyshelf.example.com, with the prefix if
        any), for links a standard wants absolute: PEP 740 provenance URLs in simple pages.
        Empty: those links are paths on this server.""")

    admin_user: str = setting(ACCOUNTS, "ADMIN_USER", USER_NAME, "admin", meaning="""
        The superuser created on the first start (also owner of the stage index
        ADMIN_USER/dev).""")
    admin_password: str = setting(ACCOUNTS, "ADMIN_PASSWORD", PASSWORD, "", meaning="""
        Empty on the first start: a strong password is generated, kept in
        DATA_DIR/initial-admin-password (mode 0600) and printed at every start until the admin
        logs in or changes it. Set later, the new password is applied at the next start.""")

    mirror_url: str = setting(MIRROR, "MIRROR_URL", URL, DEFAULT_MIRROR_URL, meaning="""
        The upstream simple index that the first start gives root/pypi; later the database wins
        (a changed value is logged at start with the command that applies it). Credentials
        may be given as https://user:password@host/simple/: they are sent as a header, never
        shown.""")
    mirror_cache_expiry_seconds: int = setting(
        MIRROR, "MIRROR_CACHE_EXPIRY", SECONDS, "1800", meaning="""
        Seconds a mirrored project page is used before it is revalidated (304 when unchanged);
        per index: mirror_cache_expiry.""")
    mirror_min_age_seconds: int = setting(
        MIRROR, "MIRROR_MIN_AGE", OPTIONAL_DURATION, "0", meaning="""
        Release cooldown of root/pypi, applied at start: upstream files younger than this
        (3d, 12h; 0: off) are held back (docs/supply-chain.md). 0 lifts no cooldown set on the
        index; per index: mirror_min_age.""")
    block_vulnerable: str | None = setting(
        MIRROR, "BLOCK_VULNERABLE", VULNERABLE_THRESHOLDS, "", meaning="""
        block_vulnerable of root/pypi, applied at start: releases that an imported advisory
        (pyshelf advisories import) affects are kept from installers: all, or those of at least
        a severity; off turns it off; empty: leave the index's setting as it is
        (docs/advisories.md).""")
    mirror_not_found_seconds: int = setting(
        MIRROR, "MIRROR_NOT_FOUND_EXPIRY", SECONDS, "300", meaning="""
        Seconds an upstream "404 no such project" is believed.""")
    upstream_connect_timeout_seconds: float = setting(
        MIRROR, "UPSTREAM_CONNECT_TIMEOUT", DECIMAL_SECONDS, "10", meaning="""
        Seconds to connect to the upstream.""")
    upstream_read_timeout_seconds: float = setting(
        MIRROR, "UPSTREAM_READ_TIMEOUT", DECIMAL_SECONDS, "30", meaning="""
        Seconds the upstream may stay silent while it answers.""")
    upstream_retries: int = setting(MIRROR, "UPSTREAM_RETRIES", NUMBER, "2", meaning="""
        Retries (with backoff) of failed idempotent upstream requests.""")
    upstream_ca_bundle: str | None = setting(MIRROR, "UPSTREAM_CA_BUNDLE", FILE, "", meaning="""
        A CA bundle (PEM file) for an upstream behind a private CA. HTTPS_PROXY, HTTP_PROXY
        and NO_PROXY are honoured as usual.""")
    upstream_allow_private: tuple[str, ...] = setting(
        MIRROR, "UPSTREAM_ALLOW_PRIVATE", NETWORKS, "", meaning="""
        Upstream requests (pages, files, redirects) connect only to public addresses:
        loopback, link-local (169.254.169.254), private (10/8, 172.16/12, 192.168/16,
        fc00::/7) and other non-public ones are refused. Networks listed here (CIDR,
        comma-separated) are allowed anyway, e.g. 10.20.0.0/16 for an internal mirror.
        MIRROR_URL's own host:port is always allowed for root/pypi. Through HTTPS_PROXY only
        the target's local DNS answer is checked.""")
    mirror_file_hosts: tuple[str, ...] = setting(MIRROR, "MIRROR_FILE_HOSTS", HOSTS, "", meaning="""
        Host names that file links on mirrored pages may point at, besides the mirror's own
        upstream host (comma-separated). Empty: any host with a public address.""")
    mirror_create: str = setting(MIRROR, "MIRROR_CREATE", MIRROR_CREATORS, "superuser", meaning="""
        Who may create mirror indexes and set mirror_url (which makes this server fetch URLs):
        superuser, or users (every logged-in user). The command line is never restricted.""")
    mirror_cache_max_bytes: int | None = setting(
        MIRROR, "MIRROR_CACHE_MAX_SIZE", CACHE_SIZE, "", meaning="""
        The most bytes of files the mirror cached (e.g. 50G). Beyond it the least recently
        downloaded are removed; a later request fetches them again. Uploads never count and
        are never removed. Empty: no cap.""")

    max_upload_bytes: int = setting(LIMITS, "MAX_UPLOAD_SIZE", SIZE, "1G", meaning="""
        The largest file an upload may send.""")
    max_request_body_bytes: int = setting(LIMITS, "MAX_REQUEST_BODY", BODY_SIZE, "1M", meaning="""
        The largest request body on any other URL (logins, the JSON API, web forms): larger
        ones are refused with 413 before they are read.""")
    request_timeout_seconds: float = setting(
        LIMITS, "REQUEST_TIMEOUT", REQUEST_SECONDS, "30", meaning="""
        Seconds a client has to send a whole request (head and body), plus one second per
        50 kB of body received (a large upload over a slow link still completes); then 408.""")
    docs_max_bytes: int = setting(LIMITS, "DOCS_MAX_SIZE", SIZE, "200M", meaning="""
        The most bytes a documentation zip may unpack to (stops zip bombs).""")
    docs_max_files: int = setting(LIMITS, "DOCS_MAX_FILES", NUMBER, "5000", meaning="""
        The most members a documentation zip may hold.""")
    search_index_in_request: bool = setting(
        LIMITS, "SEARCH_INDEX_IN_REQUEST", BOOLEAN, "false", meaning="""
        false: an upload, a newly mirrored page or file is indexed for search after its
        response, once the worker has had no request for a moment (at most seconds later under
        load), so neither it nor the requests after it wait; a search indexes what is still
        queued before it looks, so it finds it. true: before the response.""")

    database_url: str = setting(DATABASE, "DATABASE_URL", SQL_URL, "", meaning="""
        Empty: SQLite in DATA_DIR/pyshelf.sqlite3. Several replicas share one PostgreSQL
        database: postgresql+psycopg://USER:PASSWORD@HOST:5432/DATABASE (then set SECRET_KEY).""")
    secret_key: str = setting(DATABASE, "SECRET_KEY", SECRET, "", meaning="""
        Signs web sessions and form tokens. Empty: generated once into DATA_DIR/secret_key.
        Required with PostgreSQL, the same on every replica: python3 -c 'import secrets;
        print(secrets.token_hex(32))'""")
    session_lifetime_seconds: int = setting(
        DATABASE, "SESSION_LIFETIME", DURATION, "12h", meaning="""
        How long a web login lasts from the moment of login: 30m, 8h, 2d, or seconds. Logging
        out ends it sooner (on the server: a copied cookie stops working too).""")

    storage_url: str = setting(STORAGE_SECTION, "STORAGE_URL", STORAGE, "", meaning="""
        Where file contents (blobs) live: empty or file:///FOLDER for local disk (default
        DATA_DIR/blobs), or s3://BUCKET/PREFIX for an S3-compatible bucket.""")
    s3_endpoint_url: str | None = setting(
        STORAGE_SECTION, "S3_ENDPOINT_URL", OPTIONAL_URL, "", meaning="""
        The S3 API's address for MinIO, Ceph and other stores (e.g. http://minio:9000). Empty:
        AWS.""")
    s3_region: str | None = setting(STORAGE_SECTION, "S3_REGION", OPTIONAL_TEXT, "", meaning="""
        The bucket's region (AWS; most other stores ignore it). Empty: boto3's
        AWS_DEFAULT_REGION.""")
    s3_access_key_id: str = setting(STORAGE_SECTION, "AWS_ACCESS_KEY_ID", TEXT, "", meaning="""
        The bucket's access key. Empty: boto3's own chain (its environment variables, ~/.aws,
        an instance or task role).""")
    s3_secret_access_key: str = setting(
        STORAGE_SECTION, "AWS_SECRET_ACCESS_KEY", SECRET, "", meaning="""
        The secret of AWS_ACCESS_KEY_ID.""")
    s3_redirect: bool = setting(STORAGE_SECTION, "S3_REDIRECT", BOOLEAN, "false", meaning="""
        true: a file download answers 302 to a presigned S3 URL (5 minutes) instead of
        streaming the bytes through pyshelf; clients must reach the S3 endpoint themselves.""")
    accel_redirect_prefix: str = setting(
        STORAGE_SECTION, "ACCEL_REDIRECT_PREFIX", PREFIX, "", meaning="""
        Behind nginx, disk storage only: a file download that pyshelf allows answers with no
        body and X-Accel-Redirect: PREFIX/ab/cd/SHA256, and nginx sends the blob from an
        internal location over DATA_DIR/blobs (docs/operations.md). Empty: pyshelf sends it.""")

    web_concurrency: int | None = setting(PROCESSES, "WEB_CONCURRENCY", WORKERS, "", meaning="""
        gunicorn worker processes. Empty: one per CPU, 2 to 8.""")
    threads: int = setting(PROCESSES, "THREADS", THREADS, "8", meaning="""
        Threads per gunicorn worker.""")
    worker_timeout_seconds: int = setting(PROCESSES, "WORKER_TIMEOUT", SECONDS, "120", meaning="""
        Seconds a silent worker may take before it is restarted.""")
    graceful_timeout_seconds: int = setting(
        PROCESSES, "GRACEFUL_TIMEOUT", SECONDS, "30", meaning="""
        Seconds requests in flight have to finish on SIGTERM (give docker stop --time or
        compose's stop_grace_period a little more).""")
    log_level: str = setting(PROCESSES, "LOG_LEVEL", LOG_LEVELS, "INFO", meaning="""
        DEBUG, INFO, WARNING or ERROR (stderr).""")
    access_log: bool = setting(PROCESSES, "ACCESS_LOG", BOOLEAN, "true", meaning="""
        One line per request with its status, bytes, duration, client and request id (it
        replaces gunicorn's access log); false silences it.""")
    log_format: str = setting(PROCESSES, "LOG_FORMAT", LOG_FORMATS, "text", meaning="""
        text (each line starts with its time in ISO 8601 UTC), or json: one JSON object per
        line (time, level, logger, message, request_id, ...), gunicorn's lines too.""")

    metrics_token: str = setting(MONITORING, "METRICS_TOKEN", SECRET, "", meaning="""
        GET /+metrics (Prometheus) answers superusers, and "Authorization: Bearer TOKEN" when
        this is TOKEN. The token also shows the error texts in GET /+status (as a superuser's
        login does).""")
    metrics_public: bool = setting(MONITORING, "METRICS_PUBLIC", BOOLEAN, "false", meaning="""
        true: GET /+metrics answers anyone, leaving out the samples of indexes that are not
        public.""")
    status_min_free_bytes: int = setting(
        MONITORING, "STATUS_MIN_FREE_SPACE", SIZE, "100M", meaning="""
        GET /+status (and the Docker HEALTHCHECK) turns 503 when the data directory's disk has
        less free.""")
    # fmt: on

    # Not a setting: prometheus_client's own variable, which app/http/gunicorn_conf.py sets for its
    # workers (DATA_DIR/tmp/metrics) so that every worker's counters add up.
    prometheus_multiproc_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.database_url:
            url = f"sqlite:///{Path(self.data_dir).resolve() / 'pyshelf.sqlite3'}"
            object.__setattr__(self, "database_url", url)
        # postgresql:// alone would ask SQLAlchemy for psycopg2; pyshelf ships psycopg 3.
        scheme, sep, rest = self.database_url.partition("://")
        if sep and scheme in ("postgres", "postgresql"):
            object.__setattr__(self, "database_url", f"postgresql+psycopg://{rest}")

    @property
    def blob_dir(self) -> Path:
        """Where the local blob store keeps file contents (a file:// STORAGE_URL moves it)."""
        if self.storage_url.startswith("file:"):
            return Path(self.storage_url.removeprefix("file://").removeprefix("localhost"))
        return Path(self.data_dir) / "blobs"

    @property
    def users_may_mirror(self) -> bool:
        """Whether any user, not only superusers, may create mirrors and set mirror_url."""
        return self.mirror_create == "users"

    @property
    def uses_s3(self) -> bool:
        """Whether blobs live in an S3 bucket (STORAGE_URL=s3://...)."""
        return self.storage_url.startswith("s3:")

    @property
    def tmp_dir(self) -> Path:
        """Scratch space on the same filesystem as the blobs, so renames are atomic."""
        return Path(self.data_dir) / "tmp"

    @property
    def lock_dir(self) -> Path:
        """flock() files that serialize work across gunicorn workers and admin commands."""
        return Path(self.data_dir) / "locks"

    @property
    def metrics_dir(self) -> Path:
        """Where gunicorn's workers keep their Prometheus counters (emptied at every start)."""
        return self.tmp_dir / "metrics"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment and a .env file (ENV_FILE); report every bad one."""
        env, _sources, errors = _environment(environ)
        values: dict[str, Any] = {}
        bad: set[str] = set()
        for name, row in SETTINGS.items():
            try:
                values[name] = row.parse(env.get(row.env, ""))
            except ValueError as exc:
                errors += str(exc).splitlines()
                bad.add(row.env)
        multiproc_dir = env.get("PROMETHEUS_MULTIPROC_DIR", "").strip() or None
        settings = cls(**values, prometheus_multiproc_dir=multiproc_dir)
        errors += _problems_between(settings, bad, env.get("DATABASE_URL", "").strip())
        if errors:
            raise ConfigError(errors, settings, frozenset(bad))
        return settings


# Field name -> its row, in the order of the docs.
SETTINGS: dict[str, Setting] = {
    f.name: f.metadata["setting"] for f in fields(Settings) if "setting" in f.metadata
}


def env_file(environ: Mapping[str, str] | None = None) -> Path | None:
    """The .env file pyshelf reads: ENV_FILE (relative to the current directory), else ./.env
    of the current directory when there is one, else none."""
    env = os.environ if environ is None else environ
    named = env.get("ENV_FILE", "").strip()
    if named:
        return Path(named).absolute()
    default = Path(".env").absolute()
    return default if default.is_file() else None


def _environment(
    environ: Mapping[str, str] | None,
) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """The variables (the environment over the .env file), the source of each (`environment`
    or the file's path), and the problem with ENV_FILE if it names no file."""
    env = dict(os.environ if environ is None else environ)
    path = env_file(env)
    if path is not None and not path.exists():
        # A named file that is missing would run with the defaults: a new database in ./data.
        named = env["ENV_FILE"].strip()
        where = "" if Path(named).is_absolute() else f" in {Path.cwd()}"
        problem = f"ENV_FILE={named!r}: no such file{where}; name an existing .env file"
        return env, dict.fromkeys(env, "environment"), [problem]
    from_file = read_dotenv(path) if path is not None else {}
    sources = {**dict.fromkeys(from_file, str(path)), **dict.fromkeys(env, "environment")}
    return {**from_file, **env}, sources, []


def sources(environ: Mapping[str, str] | None = None) -> list[tuple[Setting, str, str]]:
    """Each row with the text it is read from and where that came from: `environment`, the
    .env file's path, or `default` (for `pyshelf config show`)."""
    env, source_of, _errors = _environment(environ)
    shown = []
    for row in SETTINGS.values():
        text = env.get(row.env, "")
        if (text.strip() if row.kind.strip else text) and row.env in source_of:
            shown.append((row, text, source_of[row.env]))
        else:
            shown.append((row, row.default, "default"))
    return shown


def set_server_environ(environ: MutableMapping[str, str] = os.environ) -> None:
    """Make the environment what gunicorn reads when `pyshelf serve` becomes it: ENV_FILE made
    absolute (the same file whatever gunicorn's directory), and no empty WEB_CONCURRENCY
    (gunicorn reads it itself and fails on an empty one, as compose passes .env.example's
    `WEB_CONCURRENCY=`)."""
    path = env_file(environ)
    if path is not None:
        environ["ENV_FILE"] = str(path)
    if not environ.get("WEB_CONCURRENCY", "").strip():
        environ.pop("WEB_CONCURRENCY", None)


def _problems_between(settings: Settings, bad: set[str], url: str) -> list[str]:
    """What is wrong between variables that each read well (`bad` names those that did not;
    `url` is DATABASE_URL as the operator wrote it, empty for the SQLite default)."""
    problems = []
    if url and not url.startswith("sqlite"):
        if not re.match(r"^postgres(ql)?(\+psycopg)?://", url):
            problems.append(
                "DATABASE_URL: use postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE, "
                "or leave it empty for SQLite in DATA_DIR"
            )
        elif not settings.secret_key:
            # Replicas that share the database would each generate their own key into
            # their DATA_DIR: a session or CSRF token signed by one fails on the others.
            problems.append(
                "SECRET_KEY must be set with a PostgreSQL DATABASE_URL, the same on every "
                "replica (make one: python3 -c 'import secrets; print(secrets.token_hex(32))')"
            )
    # TLS_CERT alone would serve plain HTTP to clients that expect HTTPS.
    if bool(settings.tls_cert) != bool(settings.tls_key):
        problems.append("TLS_CERT and TLS_KEY go together: set both, or neither")
    if settings.s3_redirect and not settings.uses_s3 and "STORAGE_URL" not in bad:
        problems.append("S3_REDIRECT=true needs STORAGE_URL=s3://BUCKET/PREFIX")
    if settings.accel_redirect_prefix and settings.uses_s3:
        problems.append("ACCEL_REDIRECT_PREFIX is for disk storage: leave it empty with S3")
    return problems
