"""`pip install` of a wheel built from the checkout gives a working `pyshelf` command, with the
migrations and templates inside the package (offline: nothing is downloaded)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app import __version__
from tests.conftest import ROOT, START_TIMEOUT_SECONDS, TEST_DATABASE, clean_env, free_port

pytestmark = pytest.mark.e2e

INSTALL_TIMEOUT_SECONDS = 180
# What the wheel is built from: pyproject.toml names everything else it needs.
SOURCES = ("pyproject.toml", "requirements.txt", "app", "migrations")


def _can_build_wheels() -> bool:
    """setuptools can build a wheel offline: it has bdist_wheel (from 70.1, else `wheel`)."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    if importlib.util.find_spec("wheel") is not None:
        return True
    from setuptools import __version__ as setuptools_version  # only when it is there

    return tuple(int(part) for part in setuptools_version.split(".")[:2]) >= (70, 1)


def run(*argv: str | Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a program offline (pip sees no index), failing the test on a non-zero exit."""
    result = subprocess.run(
        [str(arg) for arg in argv],
        cwd=cwd,
        env=clean_env(PIP_NO_INDEX="1", **env),
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with pyshelf's wheel installed (its requirements: this venv's, by a .pth)."""
    if not _can_build_wheels():
        pytest.skip("building a wheel offline needs `wheel` or setuptools >= 70.1 in this venv")
    work = tmp_path_factory.mktemp("install")
    source = work / "source"  # a copy: the build writes build/ and *.egg-info next to it
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--wheel-dir", work / "dist", source, cwd=work,
    )  # fmt: skip
    wheel = next((work / "dist").glob("pyshelf-*.whl"))
    venv = work / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=work)
    packages = next(venv.glob("lib/python3*/site-packages"))
    # Flask, SQLAlchemy, ... from the test venv, without downloading them again.
    found = [path for path in sys.path if path.endswith("site-packages")]
    (packages / "requirements.pth").write_text("\n".join(found) + "\n")
    run(
        sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install",
        "--no-deps", "--no-index", wheel, cwd=work,
    )  # fmt: skip
    return venv


def test_the_installed_command_has_help_and_version(installed: Path, tmp_path: Path) -> None:
    """`pyshelf --help` and `--version` from the console script, far from the checkout."""
    helped = run(installed / "bin" / "pyshelf", "--help", cwd=tmp_path)
    version = run(installed / "bin" / "pyshelf", "--version", cwd=tmp_path)

    assert "serve" in helped.stdout
    assert "import-devpi" in helped.stdout
    assert version.stdout == f"pyshelf {__version__}\n"


@pytest.mark.skipif(
    TEST_DATABASE != "sqlite", reason="looks for the SQLite file a new data directory gets"
)
def test_the_installed_package_migrates_and_bootstraps_from_its_own_files(
    installed: Path, tmp_path: Path
) -> None:
    """`pyshelf prepare` runs the migrations shipped in the package (not the checkout's), and
    the templates and the stylesheet are there for the web UI."""
    data = tmp_path / "data"
    run(
        installed / "bin" / "pyshelf", "prepare", cwd=tmp_path,
        DATA_DIR=str(data), ADMIN_PASSWORD="installed-pw",
    )  # fmt: skip
    located = run(
        installed / "bin" / "python", "-c",
        "import app, app.data.schema; print(app.__file__); print(app.data.schema.MIGRATIONS_DIR)",
        cwd=tmp_path,
    )  # fmt: skip

    package = Path(located.stdout.splitlines()[0]).parent
    assert ROOT not in package.parents
    assert Path(located.stdout.splitlines()[1]) == package / "migrations"
    assert (package / "migrations" / "alembic.ini").is_file()
    assert (package / "http" / "web" / "templates" / "base.html").is_file()
    assert (package / "http" / "web" / "static" / "style.css").is_file()
    assert (data / "pyshelf.sqlite3").is_file()
    listed = run(installed / "bin" / "pyshelf", "user", "list", cwd=tmp_path, DATA_DIR=str(data))
    assert listed.stdout == "admin (superuser)\nroot (superuser)\n"


def wait_for(url: str, process: subprocess.Popen[bytes]) -> int:
    """The status of GET `url` once the server answers (bounded by START_TIMEOUT_SECONDS)."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    return 0


def test_the_installed_command_serves(installed: Path, tmp_path: Path) -> None:
    """`pyshelf serve` from the console script: gunicorn with the package's own config, the
    web UI rendered from the packaged templates and stylesheet."""
    port = free_port()
    env = {"DATA_DIR": str(tmp_path / "data"), "HOST": "127.0.0.1", "PORT": str(port)}
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [installed / "bin" / "pyshelf", "serve"],
            cwd=tmp_path,
            env=clean_env(ADMIN_PASSWORD="installed-pw", WEB_CONCURRENCY="1", **env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        statuses = [
            wait_for(base + path, process) for path in ("/+status", "/", "/+static/style.css")
        ]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)

    assert statuses == [200, 200, 200], log.read_text(errors="replace")
