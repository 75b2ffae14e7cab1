"""DATA_DIR checks that need a user other than root (the tests run as root, who may write
anywhere): `os.access` says no, as it would for pyshelf's uid, and nothing is created."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.ops.preflight import data_dir_problems


@pytest.fixture
def not_writable(monkeypatch: pytest.MonkeyPatch) -> set[Path]:
    """Paths added to this set are not writable by this process."""
    refused: set[Path] = set()
    real_access = os.access

    def access(path: os.PathLike[str] | str, mode: int, **kwargs: object) -> bool:
        if Path(path) in refused and mode & os.W_OK:
            return False
        return real_access(path, mode)

    monkeypatch.setattr(os, "access", access)
    return refused


def test_a_data_dir_of_another_owner_gets_the_chown_to_run(
    tmp_path: Path, not_writable: set[Path]
) -> None:
    """An existing folder pyshelf may not write: the chown, with this uid and path."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    not_writable.add(data_dir)

    assert data_dir_problems(data_dir) == [
        f"DATA_DIR={data_dir} is not writable by uid {os.getuid()}, which pyshelf runs as: "
        f"chown -R {os.getuid()}:{os.getgid()} {data_dir}"
    ]


def test_a_data_dir_below_a_folder_of_another_owner_gets_mkdir_and_chown(
    tmp_path: Path, not_writable: set[Path]
) -> None:
    """A folder to be made where pyshelf may not write: make it for pyshelf, nothing made."""
    not_writable.add(tmp_path)
    data_dir = tmp_path / "srv" / "pyshelf"

    assert data_dir_problems(data_dir) == [
        f"DATA_DIR={data_dir} does not exist and {tmp_path} is not writable by uid "
        f"{os.getuid()}: mkdir -p {data_dir} && chown {os.getuid()}:{os.getgid()} {data_dir}"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_database_file_of_another_owner_in_the_data_dir_is_named(
    tmp_path: Path, not_writable: set[Path]
) -> None:
    """The folder is fine but the SQLite file is not: name the file, chown the folder."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database = data_dir / "pyshelf.sqlite3"
    database.write_bytes(b"")
    not_writable.add(database)

    assert data_dir_problems(data_dir) == [
        f"DATA_DIR: {database} is not writable by uid {os.getuid()}, which pyshelf runs as: "
        f"chown -R {os.getuid()}:{os.getgid()} {data_dir}"
    ]


def test_a_file_where_the_blobs_folder_goes_is_named(tmp_path: Path) -> None:
    """DATA_DIR/blobs as a file would fail the first upload: say so at start."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "blobs").write_text("x")

    assert data_dir_problems(data_dir) == [
        f"DATA_DIR: {data_dir / 'blobs'} is a file, not a folder: move it away"
    ]
