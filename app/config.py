"""Settings from environment variables: the only place that reads os.environ."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MIRROR_URL = "https://pypi.tuna.tsinghua.edu.cn/simple/"
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


class ConfigError(ValueError):
    """One or more environment variables are invalid; the message lists all of them."""


def parse_size(text: str) -> int:
    """Parse '100M', '1G', '5242880' or '512KiB' into bytes."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 104857600, 100M, 1G)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def parse_duration(text: str) -> int:
    """Parse '12h', '30m', '2d', '90s' or '3600' (seconds) into seconds."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 12h, 30m, 2d, 3600)")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


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


@dataclass(frozen=True)
class Settings:
    """Everything pyshelf can be told; built by `from_env`, or directly by tests."""

    data_dir: Path
    database_url: str = ""
    secret_key: str = ""
    admin_user: str = "admin"
    admin_password: str = ""
    mirror_url: str = DEFAULT_MIRROR_URL
    mirror_cache_expiry_seconds: int = 1800  # 30 minutes
    mirror_not_found_seconds: int = 300  # 5 minutes: how long an upstream 404 is believed
    upstream_connect_timeout_seconds: float = 10.0
    upstream_read_timeout_seconds: float = 30.0
    upstream_retries: int = 2
    upstream_ca_bundle: str | None = None
    # UPSTREAM_ALLOW_PRIVATE: networks upstream requests may reach although not public
    # (loopback, link-local, RFC 1918, ULA, ...); empty: only public addresses (app/egress.py).
    upstream_allow_private: tuple[str, ...] = ()
    # MIRROR_FILE_HOSTS: when set, the only hosts (besides a mirror's own upstream host) that
    # file links on mirrored pages may point at; empty: any host with a public address.
    mirror_file_hosts: tuple[str, ...] = ()
    mirror_create: str = "superuser"  # MIRROR_CREATE: who may create mirrors, set mirror_url
    max_upload_bytes: int = 1 << 30  # 1 GiB
    # MAX_REQUEST_BODY: the largest body of any other request (a login, a JSON API call);
    # bigger ones are refused with 413 before they are read (app/serving.py).
    max_request_body_bytes: int = 1 << 20  # 1 MiB
    # REQUEST_TIMEOUT: seconds a client has to send a request's head and body, plus one second
    # per MIN_UPLOAD_BYTES_PER_SECOND of body received (app/serving.py); then 408.
    request_timeout_seconds: float = 30.0
    script_name: str = ""  # SCRIPT_NAME: "/pypi" when a proxy passes the full path; "" the root
    docs_max_bytes: int = 200 << 20  # 200 MiB uncompressed per documentation zip
    docs_max_files: int = 5000  # entries per documentation zip
    log_level: str = "INFO"
    log_format: str = "text"  # LOG_FORMAT: "text" lines, or "json" (one object per line)
    access_log: bool = True  # ACCESS_LOG: one line per request, with its request id
    # MIRROR_CACHE_MAX_SIZE: mirror-cached files beyond this are evicted, least recently used
    # first; None keeps everything. Uploads never count and are never evicted.
    mirror_cache_max_bytes: int | None = None
    metrics_token: str = ""  # METRICS_TOKEN: /+metrics also answers "Bearer <token>"
    metrics_public: bool = False  # METRICS_PUBLIC: /+metrics answers anyone (no private names)
    session_lifetime_seconds: int = 43_200  # SESSION_LIFETIME: 12 hours from login
    status_min_free_bytes: int = 100 << 20  # STATUS_MIN_FREE_SPACE: /+status is 503 below it
    # PROMETHEUS_MULTIPROC_DIR: set by gunicorn.conf.py so every worker's metrics add up.
    prometheus_multiproc_dir: str | None = None
    # Reverse proxies whose X-Forwarded-* headers are believed: addresses, networks, or "*".
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    # STORAGE_URL: file:///FOLDER (default DATA_DIR/blobs) or s3://BUCKET/PREFIX; the S3 client
    # reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and the rest of boto3's chain) itself.
    storage_url: str = ""
    s3_endpoint_url: str | None = None  # S3_ENDPOINT_URL: MinIO, Ceph, ...; unset for AWS
    s3_region: str | None = None  # S3_REGION (or boto3's AWS_DEFAULT_REGION)
    s3_redirect: bool = False  # S3_REDIRECT: downloads answer 302 to a presigned URL
    # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, also from the .env file; empty: boto3's own chain
    # (its environment variables, ~/.aws, an instance or task role).
    s3_access_key_id: str = ""
    s3_secret_access_key: str = field(default="", repr=False)

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
        env = dict(os.environ if environ is None else environ)
        dotenv = read_dotenv(Path(env.get("ENV_FILE", ".env")))
        env = {**dotenv, **env}
        errors: list[str] = []

        def number(name: str, default: float, kind: type = int) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = kind(raw)
            except ValueError:
                errors.append(f"{name}={raw!r} is not a number")
                return default
            if value < 0:
                errors.append(f"{name}={raw!r} must not be negative")
            return value

        max_upload = 1 << 30
        if env.get("MAX_UPLOAD_SIZE", "").strip():
            try:
                max_upload = parse_size(env["MAX_UPLOAD_SIZE"])
            except ValueError as exc:
                errors.append(f"MAX_UPLOAD_SIZE: {exc}")

        docs_max = 200 << 20
        if env.get("DOCS_MAX_SIZE", "").strip():
            try:
                docs_max = parse_size(env["DOCS_MAX_SIZE"])
            except ValueError as exc:
                errors.append(f"DOCS_MAX_SIZE: {exc}")

        def size(name: str, default: int | None) -> int | None:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                return parse_size(raw)
            except ValueError as exc:
                errors.append(f"{name}: {exc}")
                return default

        cache_max = size("MIRROR_CACHE_MAX_SIZE", None)
        if cache_max == 0:
            errors.append("MIRROR_CACHE_MAX_SIZE=0 would evict every file; leave it empty")
        min_free = size("STATUS_MIN_FREE_SPACE", 100 << 20)
        max_request_body = size("MAX_REQUEST_BODY", 1 << 20) or 0
        if max_request_body < 1024:
            errors.append(
                f"MAX_REQUEST_BODY={env['MAX_REQUEST_BODY'].strip()!r}: at least 1K, "
                "or logins and API calls are refused"
            )
        request_timeout = float(number("REQUEST_TIMEOUT", 30.0, float))
        if 0 <= request_timeout < 1:
            errors.append(f"REQUEST_TIMEOUT={request_timeout!r}: at least 1 second")
        prefix = env.get("SCRIPT_NAME", "").strip().strip("/")  # "" and "/" both mean the root

        session_lifetime = 43_200  # 12 hours
        if env.get("SESSION_LIFETIME", "").strip():
            try:
                session_lifetime = parse_duration(env["SESSION_LIFETIME"])
            except ValueError as exc:
                errors.append(f"SESSION_LIFETIME: {exc}")
            if session_lifetime == 0:
                errors.append("SESSION_LIFETIME=0 would end every session at once")

        log_format = (env.get("LOG_FORMAT", "").strip() or "text").lower()
        if log_format not in {"text", "json"}:
            errors.append(f"LOG_FORMAT={log_format!r}: use text or json")
        metrics_public = env.get("METRICS_PUBLIC", "").strip().lower()
        if metrics_public not in {"", "true", "false", "1", "0", "yes", "no"}:
            errors.append(f"METRICS_PUBLIC={metrics_public!r}: use true or false")
        access_log = env.get("ACCESS_LOG", "").strip().lower()
        if access_log not in {"", "true", "false", "1", "0", "yes", "no"}:
            errors.append(f"ACCESS_LOG={access_log!r}: use true or false")

        mirror_url = env.get("MIRROR_URL", "").strip() or DEFAULT_MIRROR_URL
        if not re.match(r"^https?://[^/]+", mirror_url):
            errors.append(
                f"MIRROR_URL must be an http(s) URL of a simple index, not {mirror_url!r}"
            )

        admin_user = env.get("ADMIN_USER", "").strip() or "admin"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", admin_user):
            errors.append(f"ADMIN_USER={admin_user!r}: use letters, digits, '.', '_' or '-'")

        log_level = (env.get("LOG_LEVEL", "").strip() or "INFO").upper()
        if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            errors.append(f"LOG_LEVEL={log_level!r}: use DEBUG, INFO, WARNING or ERROR")

        allowed = [i.strip() for i in env.get("FORWARDED_ALLOW_IPS", "").split(",") if i.strip()]
        for item in allowed:
            try:
                if item != "*":
                    ipaddress.ip_network(item, strict=False)
            except ValueError:
                errors.append(f"FORWARDED_ALLOW_IPS: {item!r} is not an IP address, network or *")

        allow_private = [
            i.strip() for i in env.get("UPSTREAM_ALLOW_PRIVATE", "").split(",") if i.strip()
        ]
        for item in allow_private:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                errors.append(
                    f"UPSTREAM_ALLOW_PRIVATE: {item!r} is not an IP address or network "
                    "(use CIDR, e.g. 10.0.0.0/8,fd00::/8)"
                )
        file_hosts = [
            h.strip().lower() for h in env.get("MIRROR_FILE_HOSTS", "").split(",") if h.strip()
        ]
        for host in file_hosts:
            if not re.fullmatch(r"[a-z0-9.-]+|\[[0-9a-f:.]+\]", host):
                errors.append(f"MIRROR_FILE_HOSTS: {host!r} is not a host name (no scheme or port)")
        mirror_create = (env.get("MIRROR_CREATE", "").strip() or "superuser").lower()
        if mirror_create not in {"superuser", "users"}:
            errors.append(f"MIRROR_CREATE={mirror_create!r}: use superuser or users")

        database_url = env.get("DATABASE_URL", "").strip()
        if database_url and not database_url.startswith("sqlite"):
            if not re.match(r"^postgres(ql)?(\+psycopg)?://", database_url):
                errors.append(
                    "DATABASE_URL: use postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE, "
                    "or leave it empty for SQLite in DATA_DIR"
                )
            if not env.get("SECRET_KEY", "").strip():
                # Replicas that share the database would each generate their own key into
                # their DATA_DIR: a session or CSRF token signed by one fails on the others.
                errors.append(
                    "SECRET_KEY must be set with a PostgreSQL DATABASE_URL, the same on every "
                    "replica (make one: python3 -c 'import secrets; print(secrets.token_hex(32))')"
                )

        storage_url = env.get("STORAGE_URL", "").strip()
        if storage_url:
            from app.storage import parse_storage_url

            try:
                parse_storage_url(storage_url)
            except ValueError as exc:
                errors.append(f"STORAGE_URL: {exc}")
        s3_endpoint = env.get("S3_ENDPOINT_URL", "").strip()
        if s3_endpoint and not re.match(r"^https?://[^/]+", s3_endpoint):
            errors.append(f"S3_ENDPOINT_URL must be an http(s) URL, not {s3_endpoint!r}")
        s3_redirect = env.get("S3_REDIRECT", "").strip().lower()
        if s3_redirect not in {"", "true", "false", "1", "0", "yes", "no"}:
            errors.append(f"S3_REDIRECT={s3_redirect!r}: use true or false")
        if s3_redirect in {"true", "1", "yes"} and not storage_url.startswith("s3:"):
            errors.append("S3_REDIRECT=true needs STORAGE_URL=s3://BUCKET/PREFIX")

        settings = cls(
            data_dir=Path(env.get("DATA_DIR", "").strip() or "./data"),
            database_url=env.get("DATABASE_URL", "").strip(),
            secret_key=env.get("SECRET_KEY", "").strip(),
            admin_user=admin_user,
            admin_password=env.get("ADMIN_PASSWORD", ""),
            mirror_url=mirror_url,
            mirror_cache_expiry_seconds=int(number("MIRROR_CACHE_EXPIRY", 1800)),
            mirror_not_found_seconds=int(number("MIRROR_NOT_FOUND_EXPIRY", 300)),
            upstream_connect_timeout_seconds=float(number("UPSTREAM_CONNECT_TIMEOUT", 10.0, float)),
            upstream_read_timeout_seconds=float(number("UPSTREAM_READ_TIMEOUT", 30.0, float)),
            upstream_retries=int(number("UPSTREAM_RETRIES", 2)),
            upstream_ca_bundle=env.get("UPSTREAM_CA_BUNDLE", "").strip() or None,
            upstream_allow_private=tuple(allow_private),
            mirror_file_hosts=tuple(file_hosts),
            mirror_create=mirror_create,
            max_upload_bytes=max_upload,
            max_request_body_bytes=max_request_body,
            request_timeout_seconds=request_timeout,
            script_name=f"/{prefix}" if prefix else "",
            docs_max_bytes=docs_max,
            docs_max_files=int(number("DOCS_MAX_FILES", 5000)),
            log_level=log_level,
            log_format=log_format,
            access_log=access_log not in {"false", "0", "no"},
            mirror_cache_max_bytes=cache_max or None,
            metrics_token=env.get("METRICS_TOKEN", "").strip(),
            metrics_public=metrics_public in {"true", "1", "yes"},
            session_lifetime_seconds=session_lifetime,
            status_min_free_bytes=min_free or 0,
            prometheus_multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR", "").strip() or None,
            forwarded_allow_ips=tuple(allowed) or cls.forwarded_allow_ips,
            storage_url=storage_url,
            s3_endpoint_url=s3_endpoint or None,
            s3_region=env.get("S3_REGION", "").strip() or None,
            s3_redirect=s3_redirect in {"true", "1", "yes"},
            s3_access_key_id=env.get("AWS_ACCESS_KEY_ID", "").strip(),
            s3_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY", "").strip(),
        )
        if errors:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
        return settings
