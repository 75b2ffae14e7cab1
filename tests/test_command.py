"""The `pyshelf` command as an operator meets it, in subprocesses through entrypoint.sh (the
checkout's `pyshelf`): help, version, quiet success, confirmations, where .env comes from."""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app import __version__
from app.cli import main
from app.cli.parser import build_parser
from tests.conftest import ROOT, TEST_DATABASE, clean_env, free_port

COMMAND_TIMEOUT_SECONDS = 60
COMMANDS = {
    "serve",
    "healthcheck",
    "user",
    "index",
    "token",
    "backup",
    "restore",
    "verify",
    "cache",
    "prefetch",
    "refresh",
    "import-devpi",
    "advisories",
    "migrate",
    "config",
}
SECRETS = {
    "ADMIN_PASSWORD": "admin-pw-in-env",
    "SECRET_KEY": "key-in-dotenv-0123456789",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-in-env",
    "METRICS_TOKEN": "metrics-token-in-dotenv",
}


def pyshelf(
    *args: str, cwd: Path, stdin: int | None = subprocess.DEVNULL, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `entrypoint.sh ARGS` in `cwd` (no terminal: stdin is /dev/null unless given)."""
    environment = clean_env(PYSHELF_PYTHON=sys.executable, **env)
    for name in [name for name, value in env.items() if value == "-"]:
        del environment[name]  # "-": not set at all
    return subprocess.run(
        [str(ROOT / "entrypoint.sh"), *args],
        cwd=cwd,
        env=environment,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory after `pyshelf prepare`, with an extra index admin/team."""
    data = tmp_path / "data"
    env = {"DATA_DIR": str(data), "ADMIN_PASSWORD": "admin-pw-1"}
    assert pyshelf("prepare", cwd=tmp_path, **env).returncode == 0
    created = pyshelf("index", "create", "admin/team", cwd=tmp_path, **env)
    assert created.returncode == 0, created.stderr
    return data


def indexes(data: Path) -> list[str]:
    """`pyshelf index list`, one path per line."""
    listed = pyshelf("index", "list", cwd=data.parent, DATA_DIR=str(data))
    assert listed.returncode == 0, listed.stderr
    return [line.split()[0] for line in listed.stdout.splitlines()]


# --- help, version, exit codes ----------------------------------------------------------------


def test_help_lists_every_command_and_the_exit_codes(tmp_path: Path) -> None:
    """`pyshelf --help` names serve, healthcheck and every admin command."""
    result = pyshelf("--help", cwd=tmp_path)

    assert result.returncode == 0
    listed = set(re.findall(r"^    ([a-z-]+)", result.stdout, re.MULTILINE))
    assert listed >= COMMANDS
    assert "Exit codes: 0 done, 1 failed" in result.stdout
    assert result.stderr == ""


def test_version_is_the_package_version(tmp_path: Path) -> None:
    """`pyshelf --version` prints the version the package and the image carry."""
    result = pyshelf("--version", cwd=tmp_path)

    assert (result.returncode, result.stdout) == (0, f"pyshelf {__version__}\n")


def _every_command_path() -> list[list[str]]:
    """Every command and sub-command as argv prefixes: ["user"], ["user", "create"], ..."""
    paths: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    paths.append([*prefix, name])
                    walk(child, [*prefix, name])

    walk(build_parser(), [])
    return paths


@pytest.mark.parametrize("argv", _every_command_path(), ids=" ".join)
def test_every_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """`pyshelf ... --help` at every level: exit 0, a usage line, and a description."""
    code = main([*argv, "--help"])
    out = capsys.readouterr().out

    assert code == 0
    assert out.startswith(f"usage: pyshelf {' '.join(argv)}")
    assert len(out.split("\n\n")) >= 2  # usage, then what it does


def test_healthcheck_fails_in_one_line_and_loads_no_database_code(tmp_path: Path) -> None:
    """The image runs it every 30 s: nothing listening is exit 1 and one line, without
    importing SQLAlchemy or Flask (seconds of CPU on a small machine)."""
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "app", "healthcheck"],
        cwd=ROOT,
        env=clean_env(PORT=str(port), HOST="127.0.0.1", DATA_DIR=str(tmp_path / "data")),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )
    lines = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}

    assert result.returncode == 1
    assert len(lines) == 1
    assert lines[0].startswith(f"pyshelf: healthcheck http://127.0.0.1:{port}/+status: ")
    assert "sqlalchemy" not in imported
    assert "flask" not in imported
    assert not (tmp_path / "data").exists()


def test_a_usage_mistake_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A missing argument: one line naming it and where help is, no usage dump."""
    result = pyshelf("index", "delete", cwd=tmp_path, DATA_DIR=str(tmp_path / "data"))

    assert result.returncode == 2
    assert result.stderr == (
        "pyshelf index delete: the following arguments are required: USER/NAME "
        "(see pyshelf index delete --help)\n"
    )
    assert not (tmp_path / "data").exists()


def test_a_command_succeeds_quietly_and_logs_with_v(data_dir: Path) -> None:
    """No "database schema is up to date" on every command: only its result; -v logs."""
    quiet = pyshelf("user", "list", cwd=data_dir.parent, DATA_DIR=str(data_dir))
    verbose = pyshelf("user", "list", "-v", cwd=data_dir.parent, DATA_DIR=str(data_dir))

    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (
        0,
        "admin (superuser)\nroot (superuser)\n",
        "",
    )
    assert verbose.stdout == quiet.stdout
    assert "database schema is up to date" in verbose.stderr


@pytest.mark.skipif(
    TEST_DATABASE != "sqlite", reason="looks for the SQLite file a new data directory gets"
)
def test_migrate_makes_the_schema_and_says_nothing(tmp_path: Path) -> None:
    """`pyshelf migrate` on a new data directory: a database at head, no output."""
    result = pyshelf("migrate", cwd=tmp_path, DATA_DIR=str(tmp_path / "data"))

    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert (tmp_path / "data" / "pyshelf.sqlite3").is_file()


def test_serve_hands_its_own_process_to_gunicorn_before_prometheus_client_is_loaded(
    tmp_path: Path,
) -> None:
    """`serve` becomes gunicorn's master in the process that prepared (its workers fork with the
    imports done), with gunicorn's command line and environment; prometheus_client must not be
    loaded by then, or it would pick its single-process mode before gunicorn_conf.py sets
    PROMETHEUS_MULTIPROC_DIR, and each worker would count alone."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "pyshelf.env").write_text("ADMIN_USER=conf-admin\n", encoding="utf-8")
    # gunicorn's application class, stood in for when `serve` imports it; gunicorn.config reads
    # WEB_CONCURRENCY as it is imported (an empty one fails), so the environment must be fixed
    # by then.
    script = (
        "import importlib.abc, importlib.util, json, os, sys\n"
        "seen = {'pid': os.getpid()}\n"
        "print(json.dumps(seen))\n"
        "class WSGIApplication:\n"
        "    def __init__(self, usage, prog):\n"
        "        pass\n"
        "    def run(self):\n"
        "        seen.update(prometheus='prometheus_client' in sys.modules, argv=sys.argv,\n"
        "                    pid=os.getpid(), env_file=os.environ.get('ENV_FILE'))\n"
        "        print(json.dumps(seen))\n"
        "        sys.exit(0)\n"
        "class StandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'gunicorn.app.wsgiapp':\n"
        "            return importlib.util.spec_from_loader(name, self)\n"
        "    def create_module(self, spec):\n"
        "        return None\n"
        "    def exec_module(self, module):\n"
        "        seen['web_concurrency'] = os.environ.get('WEB_CONCURRENCY', 'unset')\n"
        "        module.WSGIApplication = WSGIApplication\n"
        "sys.meta_path.insert(0, StandIn())\n"
        "from app.cli import main\n"
        "main(['serve'])\n"
    )
    env = clean_env(
        DATA_DIR=str(tmp_path / "data"),
        ADMIN_PASSWORD="admin-pw-1",
        ENV_FILE="conf/pyshelf.env",
        PORT=str(free_port()),
        HOST="127.0.0.1",
        WEB_CONCURRENCY="",
        PYTHONPATH=str(ROOT),
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    started, seen = (json.loads(line) for line in result.stdout.splitlines()[-2:])

    assert result.returncode == 0, result.stderr
    assert seen["pid"] == started["pid"]
    assert seen["prometheus"] is False
    assert Path(seen["argv"][0]).parts[-2:] == ("gunicorn", "__main__.py")
    assert seen["argv"][1:] == ["--config", "python:app.http.gunicorn_conf", "app:create_app()"]
    assert seen["env_file"] == str(tmp_path / "conf" / "pyshelf.env")  # absolute for gunicorn
    assert seen["web_concurrency"] == "unset"  # when gunicorn is imported: it fails on ""


# --- destructive commands ask ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "question"),
    [
        (["index", "delete", "admin/team"], "Delete index admin/team"),
        (["user", "delete", "admin"], "Delete user admin and the indexes admin/dev, admin/team"),
    ],
)
def test_a_delete_without_yes_and_without_a_terminal_is_refused_with_exit_2(
    data_dir: Path, argv: list[str], question: str
) -> None:
    """A script that forgot --yes deletes nothing: exit 2, one line saying how to confirm."""
    result = pyshelf(*argv, cwd=data_dir.parent, DATA_DIR=str(data_dir))

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"pyshelf: {question}")
    assert "add --yes" in result.stderr
    assert indexes(data_dir) == ["root/pypi", "admin/dev", "admin/team"]


def test_a_delete_with_yes_deletes(data_dir: Path) -> None:
    """--yes is the script's confirmation."""
    result = pyshelf(
        "index", "delete", "admin/team", "--yes", cwd=data_dir.parent, DATA_DIR=str(data_dir)
    )

    assert (result.returncode, result.stdout) == (0, "deleted admin/team\n")
    assert indexes(data_dir) == ["root/pypi", "admin/dev"]


def test_restore_force_without_yes_keeps_the_data(data_dir: Path, tmp_path: Path) -> None:
    """Replacing a server's data needs the same confirmation as a delete."""
    env = {"DATA_DIR": str(data_dir)}
    archive = tmp_path / "backup.tar"
    assert pyshelf("backup", str(archive), cwd=tmp_path, **env).returncode == 0
    assert pyshelf("index", "create", "admin/later", cwd=tmp_path, **env).returncode == 0

    result = pyshelf("restore", str(archive), "--force", cwd=tmp_path, **env)

    assert result.returncode == 2
    assert result.stderr.startswith(f"pyshelf: Replace pyshelf's data in {data_dir}")
    assert "add --yes" in result.stderr
    assert "admin/later" in indexes(data_dir)


def answer_at_a_terminal(data: Path, argv: list[str], answer: bytes) -> tuple[int, str]:
    """Run a command with a terminal as stdin, type `answer`: (exit code, what it printed)."""
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer)  # typed ahead; the prompt's input() reads it
        result = pyshelf(*argv, cwd=data.parent, stdin=terminal, DATA_DIR=str(data))
    finally:
        os.close(terminal)
        os.close(controller)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("answer", "code", "left"),
    [
        (b"n\n", 2, ["root/pypi", "admin/dev", "admin/team"]),
        (b"\n", 2, ["root/pypi", "admin/dev", "admin/team"]),
        (b"yes\n", 0, ["root/pypi", "admin/dev"]),
    ],
    ids=["no", "enter", "yes"],
)
def test_a_delete_at_a_terminal_asks_and_only_yes_deletes(
    data_dir: Path, answer: bytes, code: int, left: list[str]
) -> None:
    """At a terminal the command asks; the default (Enter) is no."""
    result, printed = answer_at_a_terminal(data_dir, ["index", "delete", "admin/team"], answer)

    assert "Delete index admin/team and every file and page in it? [y/N]" in printed
    assert result == code
    assert indexes(data_dir) == left


# --- where the settings come from --------------------------------------------------------------


def test_dotenv_of_the_current_directory_is_read(tmp_path: Path) -> None:
    """The operator's ./.env counts, wherever the checkout is (entrypoint.sh used to cd)."""
    (tmp_path / ".env").write_text("ADMIN_USER=dotenv-admin\n", encoding="utf-8")
    env = {"DATA_DIR": str(tmp_path / "data"), "ADMIN_PASSWORD": "pw-123", "ENV_FILE": "-"}

    prepared = pyshelf("prepare", cwd=tmp_path, **env)
    listed = pyshelf("user", "list", cwd=tmp_path, **env)

    assert prepared.returncode == 0, prepared.stderr
    assert listed.stdout == "dotenv-admin (superuser)\nroot (superuser)\n"


def test_a_relative_env_file_is_found_from_the_current_directory(tmp_path: Path) -> None:
    """ENV_FILE=conf/pyshelf.env is below the operator's directory, not the checkout."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "pyshelf.env").write_text("ADMIN_USER=conf-admin\n", encoding="utf-8")
    env = {"DATA_DIR": str(tmp_path / "data"), "ADMIN_PASSWORD": "pw-123"}

    prepared = pyshelf("prepare", cwd=tmp_path, ENV_FILE="conf/pyshelf.env", **env)
    listed = pyshelf("user", "list", cwd=tmp_path, ENV_FILE="conf/pyshelf.env", **env)

    assert prepared.returncode == 0, prepared.stderr
    assert listed.stdout == "conf-admin (superuser)\nroot (superuser)\n"


def test_a_missing_env_file_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    """A misspelt ENV_FILE does not start with the defaults (a new, empty database): exit 2."""
    data = tmp_path / "data"

    result = pyshelf("prepare", cwd=tmp_path, ENV_FILE="pyshelf.evn", DATA_DIR=str(data))

    assert result.returncode == 2
    assert f"ENV_FILE='pyshelf.evn': no such file in {tmp_path}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not data.exists()


@pytest.mark.skipif(
    TEST_DATABASE != "sqlite",
    reason="reads DATABASE_URL from .env: the PostgreSQL pass sets it in the environment",
)
def test_config_show_names_each_source_and_masks_secrets(tmp_path: Path) -> None:
    """Environment over .env over default, each line saying which; no secret is printed."""
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        f"SECRET_KEY={SECRETS['SECRET_KEY']}\nMETRICS_TOKEN={SECRETS['METRICS_TOKEN']}\n"
        "PORT=4000\nDATABASE_URL=postgresql://shelf:db-password@db.example:5432/shelf\n",
        encoding="utf-8",
    )

    result = pyshelf(
        "config",
        "show",
        cwd=tmp_path,
        ENV_FILE="-",
        DATA_DIR="-",
        PORT="5000",
        ADMIN_PASSWORD=SECRETS["ADMIN_PASSWORD"],
        AWS_SECRET_ACCESS_KEY=SECRETS["AWS_SECRET_ACCESS_KEY"],
        MIRROR_URL="https://mirror-user:mirror-pw@pkgs.example/simple/",
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"# .env file: {dotenv}"
    assert "PORT=5000  # environment" in lines
    assert f"DATABASE_URL=postgresql://***:***@db.example:5432/shelf  # {dotenv}" in lines
    assert f"SECRET_KEY=********  # {dotenv}" in lines
    assert "ADMIN_PASSWORD=********  # environment" in lines
    assert "MIRROR_URL=https://***:***@pkgs.example/simple/  # environment" in lines
    assert "DATA_DIR=./data  # default" in lines
    assert "S3_REDIRECT=false  # default" in lines
    printed = result.stdout + result.stderr
    for secret in (*SECRETS.values(), "db-password", "mirror-pw"):
        assert secret not in printed
    assert not (tmp_path / "data").exists()  # showing changes nothing


def test_config_show_prints_everything_then_exits_2_on_a_bad_setting(tmp_path: Path) -> None:
    """The table still shows what was read; the errors follow on stderr."""
    result = pyshelf("config", "show", cwd=tmp_path, THREADS="0", PORT="abc")

    assert result.returncode == 2
    assert "THREADS=0  # environment" in result.stdout
    assert "PORT=abc  # environment" in result.stdout
    assert "THREADS='0': at least 1" in result.stderr
    assert "PORT='abc' is not a number" in result.stderr
    assert "Traceback" not in result.stderr
