"""DATA_DIR and backups are for pyshelf's user only (issue #15): they hold the secret key that
signs sessions, so a readable copy lets anyone forge an admin's cookie."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.blobs import server_blob
from tests.builders import make_wheel
from tests.conftest import TEST_DATABASE, LiveServer
from tests.e2e.helpers import cli, publish, sha256

pytestmark = pytest.mark.e2e

WHEEL = make_wheel("private-bits", "1.0")


def mode(path: Path) -> int:
    """The permission bits of `path`."""
    return stat.S_IMODE(path.stat().st_mode)


def open_to_others(root: Path) -> list[str]:
    """Everything below `root` (and itself) that group or others may read, write or enter."""
    paths = [root, *root.rglob("*")]
    return [f"{p} {mode(p):04o}" for p in paths if not p.is_symlink() and mode(p) & 0o077]


@pytest.fixture
def server(server_factory: Callable[..., LiveServer], tmp_path: Path) -> LiveServer:
    """A live server started by entrypoint.sh, with one uploaded wheel."""
    started = server_factory(data_dir=tmp_path / "data")
    publish(started, "admin/dev", tmp_path / "dist", WHEEL)
    return started


@pytest.mark.skipif(
    TEST_DATABASE != "sqlite",
    reason="looks at the SQLite file and the generated secret_key (PostgreSQL passes SECRET_KEY)",
)
def test_the_server_creates_its_data_for_its_own_user_only(server: LiveServer) -> None:
    data = server.data_dir
    assert mode(data) == 0o700
    assert mode(data / "secret_key") == 0o600
    blob = server_blob(server, sha256(WHEEL[1]))
    if blob.path is not None:  # the local blob store (not S3)
        assert mode(blob.path) == 0o600
        assert mode(blob.path.parent) == 0o700
    if (data / "pyshelf.sqlite3").exists():  # SQLite (not PostgreSQL)
        assert mode(data / "pyshelf.sqlite3") == 0o600
    assert open_to_others(data) == []


def test_a_data_dir_open_to_others_is_closed_at_start_and_the_log_says_so(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    server = server_factory(data_dir=data)
    assert mode(data) == 0o700
    assert f"DATA_DIR {data} was open to other users (mode 755); made it 700" in server.log()


def test_a_backup_is_for_its_owner_only_even_in_a_folder_open_to_others(
    server: LiveServer, tmp_path: Path
) -> None:
    folder = tmp_path / "backups"
    folder.mkdir()
    folder.chmod(0o755)
    result = cli(server.data_dir, "backup", str(folder / "pyshelf.tar"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert mode(folder / "pyshelf.tar") == 0o600
    assert mode(folder) == 0o755  # the operator's folder is left as it is


@pytest.mark.skipif(
    TEST_DATABASE != "sqlite",
    reason="looks at the SQLite file and the generated secret_key (PostgreSQL passes SECRET_KEY)",
)
def test_verify_names_what_others_may_read_with_the_chmod_that_closes_it(
    server: LiveServer,
) -> None:
    data = server.data_dir
    data.chmod(0o755)
    (data / "secret_key").chmod(0o644)

    result = cli(data, "verify")
    assert result.returncode == 0, result.stdout + result.stderr  # a warning, not damage
    assert "result: ok" in result.stdout
    lines = result.stdout.splitlines()
    assert (
        "warning: 2 paths are open to other users of this machine; DATA_DIR holds the secret "
        "key (it signs sessions), the database and private packages:"
    ) in lines
    assert f"    {data} (mode 0755)" in lines
    assert f"    {data / 'secret_key'} (mode 0644)" in lines
    assert f"  fix: chmod -R go-rwx {data}" in lines

    data.chmod(0o700)
    (data / "secret_key").chmod(0o600)
    result = cli(data, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stdout
