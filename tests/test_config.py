"""app.core.config (with its kinds and its generated reference): Settings.from_env, sizes and
the .env file."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from app.core.config import (
    ALL_INTERFACES,
    DEFAULT_MIRROR_URL,
    SETTINGS,
    ConfigError,
    Settings,
    mask_database_url,
    read_dotenv,
)
from app.core.config_docs import env_example, markdown
from app.core.config_kinds import parse_duration, parse_size

NO_DOTENV = {"ENV_FILE": os.devnull}


def test_defaults_apply_when_nothing_is_set() -> None:
    """An empty environment gives a working configuration."""
    settings = Settings.from_env(NO_DOTENV)

    assert settings.data_dir == Path("./data")
    assert settings.database_url == f"sqlite:///{Path('./data').resolve() / 'pyshelf.sqlite3'}"
    assert settings.mirror_url == DEFAULT_MIRROR_URL
    assert settings.admin_user == "admin"
    assert settings.admin_password == ""
    assert settings.secret_key == ""
    assert settings.mirror_cache_expiry_seconds == 1800
    assert settings.mirror_not_found_seconds == 300
    assert settings.upstream_retries == 2
    assert settings.upstream_ca_bundle is None
    assert settings.max_upload_bytes == 1 << 30
    assert settings.log_level == "INFO"


def test_gunicorn_variables_are_settings_read_and_checked_like_the_others() -> None:
    """HOST, PORT, WEB_CONCURRENCY, THREADS and the timeouts go through the table too."""
    settings = Settings.from_env(
        {
            **NO_DOTENV,
            "HOST": "127.0.0.1",
            "PORT": "8080",
            "WEB_CONCURRENCY": "3",
            "THREADS": "16",
            "WORKER_TIMEOUT": "60",
            "GRACEFUL_TIMEOUT": "5",
            "TLS_CERT": "/etc/pyshelf/cert.pem",
            "TLS_KEY": "/etc/pyshelf/key.pem",
        }
    )
    assert (settings.host, settings.port, settings.web_concurrency) == ("127.0.0.1", 8080, 3)
    assert (settings.threads, settings.worker_timeout_seconds) == (16, 60)
    assert settings.graceful_timeout_seconds == 5
    assert (settings.tls_cert, settings.tls_key) == (
        "/etc/pyshelf/cert.pem",
        "/etc/pyshelf/key.pem",
    )
    defaults = Settings.from_env({**NO_DOTENV, "WEB_CONCURRENCY": ""})
    assert (defaults.host, defaults.port, defaults.web_concurrency) == (ALL_INTERFACES, 3141, None)
    assert (defaults.threads, defaults.tls_cert, defaults.tls_key) == (8, None, None)

    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                **NO_DOTENV,
                "PORT": "not-a-port",
                "WEB_CONCURRENCY": "abc",
                "THREADS": "0",
                "WORKER_TIMEOUT": "-1",
                "TLS_CERT": "/etc/pyshelf/cert.pem",
            }
        )

    assert str(caught.value).splitlines()[1:] == [
        "  PORT='not-a-port' is not a number",
        "  WEB_CONCURRENCY='abc' is not a number",
        "  THREADS='0': at least 1",
        "  WORKER_TIMEOUT='-1' must not be negative",
        "  TLS_CERT and TLS_KEY go together: set both, or neither",
    ]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "65536"}, "PORT='65536': a port is 1 to 65535"),
        ({"PORT": "0"}, "PORT='0': a port is 1 to 65535"),
        ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY='0': at least 1"),
        ({"TLS_KEY": "/k.pem"}, "TLS_CERT and TLS_KEY go together: set both, or neither"),
    ],
)
def test_a_bad_gunicorn_variable_is_reported_in_one_line(env: dict[str, str], message: str) -> None:
    """gunicorn never sees a value that from_env refused."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**NO_DOTENV, **env})

    assert [line.strip() for line in str(caught.value).splitlines()[1:]] == [message]


def test_every_variable_is_read() -> None:
    """Each documented variable reaches its setting."""
    settings = Settings.from_env(
        {
            **NO_DOTENV,
            "DATA_DIR": "/srv/pyshelf",
            "DATABASE_URL": "postgresql://db/pyshelf",
            "SECRET_KEY": "k" * 32,
            "ADMIN_USER": "boss",
            "ADMIN_PASSWORD": " spaces are kept ",
            "MIRROR_URL": "http://127.0.0.1:8080/simple/",
            "MIRROR_CACHE_EXPIRY": "60",
            "MIRROR_NOT_FOUND_EXPIRY": "10",
            "UPSTREAM_CONNECT_TIMEOUT": "1.5",
            "UPSTREAM_READ_TIMEOUT": "2.5",
            "UPSTREAM_RETRIES": "0",
            "UPSTREAM_CA_BUNDLE": "/etc/ssl/ca.pem",
            "MAX_UPLOAD_SIZE": "100M",
            "LOG_LEVEL": "debug",
        }
    )

    assert settings == Settings(
        data_dir=Path("/srv/pyshelf"),
        database_url="postgresql://db/pyshelf",
        secret_key="k" * 32,
        admin_user="boss",
        admin_password=" spaces are kept ",
        mirror_url="http://127.0.0.1:8080/simple/",
        mirror_cache_expiry_seconds=60,
        mirror_not_found_seconds=10,
        upstream_connect_timeout_seconds=1.5,
        upstream_read_timeout_seconds=2.5,
        upstream_retries=0,
        upstream_ca_bundle="/etc/ssl/ca.pem",
        max_upload_bytes=100 << 20,
        log_level="DEBUG",
    )


def test_every_bad_variable_is_reported_at_once() -> None:
    """One ConfigError names each bad variable, so one restart fixes them all."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                **NO_DOTENV,
                "MAX_UPLOAD_SIZE": "lots",
                "MIRROR_URL": "ftp://mirror.example.org/simple/",
                "ADMIN_USER": "bad user",
                "LOG_LEVEL": "chatty",
                "MIRROR_CACHE_EXPIRY": "soon",
                "MIRROR_NOT_FOUND_EXPIRY": "-5",
                "UPSTREAM_READ_TIMEOUT": "slow",
                "UPSTREAM_RETRIES": "1.5",
            }
        )

    message = str(caught.value)
    lines = message.splitlines()
    assert lines[0] == "invalid configuration:"
    assert len(lines) == 9
    for name in (
        "MAX_UPLOAD_SIZE",
        "MIRROR_URL",
        "ADMIN_USER",
        "LOG_LEVEL",
        "MIRROR_CACHE_EXPIRY",
        "MIRROR_NOT_FOUND_EXPIRY",
        "UPSTREAM_READ_TIMEOUT",
        "UPSTREAM_RETRIES",
    ):
        assert sum(name in line for line in lines[1:]) >= 1, name
    assert "'lots' is not a size" in message
    assert "'-5' must not be negative" in message


def test_upstream_address_settings_are_read_and_default_to_the_safe_side() -> None:
    """UPSTREAM_ALLOW_PRIVATE and MIRROR_FILE_HOSTS are lists; MIRROR_CREATE a word."""
    # A data dir outside the temp folder: the tests' own loopback allowance (tests/conftest.py)
    # is not given to it, wherever the checkout lies.
    defaults = Settings.from_env({**NO_DOTENV, "DATA_DIR": "/var/lib/pyshelf"})
    assert (defaults.upstream_allow_private, defaults.mirror_file_hosts) == ((), ())
    assert (defaults.mirror_create, defaults.users_may_mirror) == ("superuser", False)

    settings = Settings.from_env(
        {
            **NO_DOTENV,
            "UPSTREAM_ALLOW_PRIVATE": " 10.0.0.0/8, fd00::/8 ,192.168.1.5",
            "MIRROR_FILE_HOSTS": "Files.Example, cdn.example",
            "MIRROR_CREATE": "Users",
        }
    )
    assert settings.upstream_allow_private == ("10.0.0.0/8", "fd00::/8", "192.168.1.5")
    assert settings.mirror_file_hosts == ("files.example", "cdn.example")
    assert (settings.mirror_create, settings.users_may_mirror) == ("users", True)


def test_bad_upstream_address_settings_are_reported_together() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                **NO_DOTENV,
                "UPSTREAM_ALLOW_PRIVATE": "10.0.0.0/8,intranet",
                "MIRROR_FILE_HOSTS": "https://files.example/",
                "MIRROR_CREATE": "everyone",
            }
        )

    assert str(caught.value).splitlines()[1:] == [
        "  UPSTREAM_ALLOW_PRIVATE: 'intranet' is not an IP address or network "
        "(use CIDR, e.g. 10.0.0.0/8,fd00::/8)",
        "  MIRROR_FILE_HOSTS: 'https://files.example/' is not a host name (no scheme or port)",
        "  MIRROR_CREATE='everyone': use superuser or users",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5242880", 5242880),
        ("100M", 100 << 20),
        ("1G", 1 << 30),
        ("512KiB", 512 << 10),
        ("512K", 512 << 10),
        ("2MB", 2 << 20),
        ("1gib", 1 << 30),
        ("1T", 1 << 40),
        (" 64 M ", 64 << 20),
        ("0", 0),
    ],
)
def test_sizes_accept_bytes_and_binary_units(text: str, expected: int) -> None:
    """MAX_UPLOAD_SIZE takes bytes or K/M/G/T, with optional B or iB."""
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "1.5G", "-1", "M", "10X", "1 G B", "1e9"])
def test_sizes_reject_anything_else(text: str) -> None:
    """Unreadable sizes are errors, not silently 0 or the default."""
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3600", 3600), ("90s", 90), ("30m", 1800), ("12h", 43_200), ("2d", 172_800), (" 1 H ", 3600)],
)
def test_durations_accept_seconds_and_units(text: str, expected: int) -> None:
    """SESSION_LIFETIME takes seconds, or a number with s, m, h or d."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", "SESSION_LIFETIME: 'soon' is not a duration (examples: 12h, 30m, 2d, 3600)"),
        ("1.5h", "SESSION_LIFETIME: '1.5h' is not a duration (examples: 12h, 30m, 2d, 3600)"),
        ("0", "SESSION_LIFETIME=0 would end every session at once"),
    ],
)
def test_a_bad_session_lifetime_is_reported(value: str, message: str) -> None:
    """Each bad SESSION_LIFETIME gets one line that says what is wrong."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**NO_DOTENV, "SESSION_LIFETIME": value})

    assert [line.strip() for line in str(caught.value).splitlines()[1:]] == [message]


def test_metrics_are_private_unless_metrics_public_says_true() -> None:
    """METRICS_PUBLIC: true/false (1/0, yes/no); anything else is reported."""
    assert Settings.from_env(NO_DOTENV).metrics_public is False
    assert Settings.from_env({**NO_DOTENV, "METRICS_PUBLIC": "true"}).metrics_public is True
    with pytest.raises(ConfigError, match="METRICS_PUBLIC='open': use true or false"):
        Settings.from_env({**NO_DOTENV, "METRICS_PUBLIC": "open"})


def test_a_session_lasts_12_hours_unless_session_lifetime_says_otherwise() -> None:
    """The default, and SESSION_LIFETIME=30m."""
    assert Settings.from_env(NO_DOTENV).session_lifetime_seconds == 43_200
    assert (
        Settings.from_env({**NO_DOTENV, "SESSION_LIFETIME": "30m"}).session_lifetime_seconds == 1800
    )


def test_dotenv_file_is_read_from_env_file(tmp_path: Path) -> None:
    """Comments, blank lines, quotes and `export` are handled like a shell would."""
    env_file = tmp_path / "pyshelf.env"
    env_file.write_text(
        "# pyshelf settings\n"
        "\n"
        "export ADMIN_USER=boss\n"
        'MIRROR_URL="http://127.0.0.1:8080/simple/"\n'
        "ADMIN_PASSWORD='s3cret # not a comment'\n"
        "   MAX_UPLOAD_SIZE = 100M   \n"
        "not a variable line\n"
        "EMPTY=\n",
        encoding="utf-8",
    )

    settings = Settings.from_env({"ENV_FILE": str(env_file)})

    assert settings.admin_user == "boss"
    assert settings.mirror_url == "http://127.0.0.1:8080/simple/"
    assert settings.admin_password == "s3cret # not a comment"
    assert settings.max_upload_bytes == 100 << 20
    assert read_dotenv(env_file)["EMPTY"] == ""


def test_environment_overrides_the_dotenv_file(tmp_path: Path) -> None:
    """A variable set in the environment wins over the same one in .env."""
    env_file = tmp_path / ".env"
    env_file.write_text("ADMIN_USER=from-file\nLOG_LEVEL=DEBUG\n", encoding="utf-8")

    settings = Settings.from_env({"ENV_FILE": str(env_file), "ADMIN_USER": "from-env"})

    assert settings.admin_user == "from-env"
    assert settings.log_level == "DEBUG"


def test_bad_values_in_the_dotenv_file_are_reported_too(tmp_path: Path) -> None:
    """The .env file goes through the same checks as the environment."""
    env_file = tmp_path / ".env"
    env_file.write_text("MAX_UPLOAD_SIZE=huge\n", encoding="utf-8")

    with pytest.raises(ConfigError, match="MAX_UPLOAD_SIZE"):
        Settings.from_env({"ENV_FILE": str(env_file)})


def test_missing_dotenv_file_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """./.env is optional."""
    monkeypatch.chdir(tmp_path)

    assert Settings.from_env({}).admin_user == "admin"


def test_an_env_file_that_does_not_exist_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENV_FILE names a file on purpose: missing, the defaults would make a new database."""
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ConfigError, match=f"ENV_FILE='absent.env': no such file in {tmp_path}"):
        Settings.from_env({"ENV_FILE": "absent.env"})


def test_a_relative_env_file_is_read_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENV_FILE=conf/pyshelf.env means the file below the directory the command runs in."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "pyshelf.env").write_text("ADMIN_USER=from-conf\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)

    assert Settings.from_env({"ENV_FILE": "conf/pyshelf.env"}).admin_user == "from-conf"


def test_dotenv_in_the_working_directory_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ENV_FILE, ./.env is read."""
    (tmp_path / ".env").write_text("ADMIN_USER=from-cwd\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)

    assert Settings.from_env({}).admin_user == "from-cwd"


EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"


def test_the_shipped_env_example_is_valid_and_matches_the_defaults() -> None:
    """.env.example says "the value shown is the default": loading it changes nothing."""
    settings = Settings.from_env({"ENV_FILE": str(EXAMPLE)})
    defaults = Settings.from_env(NO_DOTENV)

    assert dataclasses.replace(settings, forwarded_allow_ips=()) == dataclasses.replace(
        defaults, forwarded_allow_ips=()
    )


def test_the_env_example_shows_the_default_forwarded_allow_ips() -> None:
    """Copying .env.example must not silently stop trusting a proxy on ::1."""
    settings = Settings.from_env({"ENV_FILE": str(EXAMPLE)})

    assert settings.forwarded_allow_ips == Settings.from_env(NO_DOTENV).forwarded_allow_ips


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no mapping given, os.environ is the source (the only place that reads it)."""
    monkeypatch.setenv("ENV_FILE", os.devnull)
    monkeypatch.setenv("ADMIN_USER", "from-os-environ")

    assert Settings.from_env().admin_user == "from-os-environ"


def test_a_postgresql_database_needs_a_secret_key_shared_by_every_replica() -> None:
    """Replicas with keys of their own would reject each other's sessions and form tokens."""
    env = {**NO_DOTENV, "DATA_DIR": "/srv/pyshelf", "DATABASE_URL": "postgresql://u:p@db/shelf"}

    with pytest.raises(ConfigError, match="SECRET_KEY must be set with a PostgreSQL"):
        Settings.from_env(env)

    settings = Settings.from_env({**env, "SECRET_KEY": "k" * 64})
    assert settings.database_url == "postgresql+psycopg://u:p@db/shelf"  # the shipped driver


def test_a_database_url_of_another_kind_is_refused() -> None:
    env = {**NO_DOTENV, "DATABASE_URL": "mysql://u@db/shelf", "SECRET_KEY": "k"}

    with pytest.raises(ConfigError, match="DATABASE_URL: use postgresql"):
        Settings.from_env(env)


def test_secrets_stay_out_of_the_repr() -> None:
    """A logged or printed Settings never shows a password, key or token."""
    settings = Settings(
        data_dir=Path("/srv"),
        admin_password="pw-in-repr",
        secret_key="key-in-repr",
        metrics_token="token-in-repr",
        s3_secret_access_key="s3-in-repr",
    )

    assert "in-repr" not in repr(settings)


ROOT = EXAMPLE.parent


def test_the_configuration_reference_is_generated_from_the_table() -> None:
    """docs/configuration.md is what `make docs` writes now: a new row needs a regenerate."""
    assert (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8") == markdown()


def test_the_env_example_is_generated_from_the_table() -> None:
    """.env.example is what `make docs` writes now, with every variable and nothing else."""
    shipped = EXAMPLE.read_text(encoding="utf-8")
    listed = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", shipped, re.MULTILINE))

    assert listed == {row.env for row in SETTINGS.values()}
    assert shipped == env_example()


def test_every_setting_is_a_row_of_the_table() -> None:
    """No field of Settings is read from a variable of its own, past the table."""
    rows = {f.name for f in dataclasses.fields(Settings)} - {"prometheus_multiproc_dir"}

    assert set(SETTINGS) == rows
    assert len({row.env for row in SETTINGS.values()}) == len(SETTINGS)


def test_every_default_reads_back_as_itself() -> None:
    """The default written in the docs is the default Settings() has."""
    for name, row in SETTINGS.items():
        field = next(f for f in dataclasses.fields(Settings) if f.name == name)
        if name == "database_url":
            continue  # __post_init__ puts the SQLite file into DATA_DIR
        assert field.default == row.parse(row.default), name


# Reads of the environment outside app/core/config.py, each with the reason it is not a setting.
COMMAND_INPUT = "a command's input, not a setting"
ENVIRONMENT_READS = {
    ("app/cli/accounts.py", 'if os.environ.get("PYSHELF_PASSWORD"):'): COMMAND_INPUT,
    ("app/cli/accounts.py", 'return os.environ["PYSHELF_PASSWORD"]'): COMMAND_INPUT,
    ("app/ops/backup.py", "return {**os.environ, **{k: v for k, v in values.items() if v}}"): (
        "passes the whole environment on to pg_dump/psql, reads no variable of its own"
    ),
    ("app/core/metrics.py", 'if multiproc_dir := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):'): (
        "the variable prometheus_client itself reads when the counters are made: its directory"
        " must exist by then"
    ),
}
_ENVIRONMENT_RE = re.compile(r"\bos\.environ\b|\bgetenv\b|\bfrom os import\b")
# app/http/gunicorn_conf.py hands values to gunicorn and prometheus_client through the environment.
_ENVIRONMENT_WRITE_RE = re.compile(r"os\.environ\[[^]]+\] = |os\.environ\.pop\(")


def test_only_app_config_reads_the_environment() -> None:
    """Every variable pyshelf reads is a row of the table: nothing else looks at os.environ."""
    sources = sorted((ROOT / "app").rglob("*.py"))
    reads = set()
    for path in sources:
        relative = path.relative_to(ROOT).as_posix()
        if relative == "app/core/config.py":
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            code = line.split("#", 1)[0].strip()
            if _ENVIRONMENT_RE.search(code) and not _ENVIRONMENT_WRITE_RE.search(code):
                reads.add((relative, code))

    assert reads == set(ENVIRONMENT_READS)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # SQLAlchemy takes `ab/cd+ef` as the password: an HTTP parser would stop at the `/`
        (
            "postgresql+psycopg://pyshelf:ab/cd+ef@db:5432/p",
            "postgresql+psycopg://***:***@db:5432/p",
        ),
        ("postgresql://u:s3c@ret@db/p", "postgresql://***:***@db/p"),
        ("postgresql://u:p?x#y@db/p", "postgresql://***:***@db/p"),
        ("postgresql://db/p", "postgresql://db/p"),
        ("sqlite:////data/pyshelf.sqlite3", "sqlite:////data/pyshelf.sqlite3"),
    ],
)
def test_a_database_url_is_shown_without_any_part_of_its_password(url: str, shown: str) -> None:
    assert mask_database_url(url) == shown
