"""The `pyshelf` command (app.cli.main): prepare, user, index, token, refresh."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash

from app import create_app
from app.cli import main
from app.core.config import Settings
from app.data.db import Database
from app.data.models import Index, MirrorPage, User, utcnow
from app.services.indexes import get_index_by_path
from tests.conftest import (
    ADMIN_PASSWORD,
    ROOT,
    TEST_STORAGE,
    basic_auth,
    clean_env,
    free_port,
)
from tests.test_upload import fast_password_hashes  # noqa: F401 - autouse fixture

DEAD_UPSTREAM = "http://127.0.0.1:9/simple/"
GENERATED_RE = re.compile(r"Generated password for 'admin': (\S+)")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean pyshelf environment with DATA_DIR in tmp_path and no .env file."""
    for name in list(os.environ):
        if name in {"DATABASE_URL", "ADMIN_USER", "SECRET_KEY", "PYSHELF_PASSWORD"} or (
            name.startswith(("MIRROR_", "UPSTREAM_", "MAX_UPLOAD", "LOG_LEVEL"))
        ):
            monkeypatch.delenv(name)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    monkeypatch.setenv("ENV_FILE", os.devnull)
    monkeypatch.setenv("ADMIN_PASSWORD", ADMIN_PASSWORD)
    monkeypatch.setenv("MIRROR_URL", DEAD_UPSTREAM)
    monkeypatch.setenv("HOST", "127.0.0.1")
    monkeypatch.setenv("PORT", str(free_port()))  # `prepare` checks that it is free
    return data_dir


@pytest.fixture
def prepared(env: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A data directory after `entrypoint.sh prepare`."""
    assert main(["prepare"]) == 0
    capsys.readouterr()
    return env


@contextmanager
def database() -> Iterator[Session]:
    """A session on the database the environment points at."""
    db = Database(Settings.from_env().database_url)
    try:
        with db.session() as session:
            yield session
    finally:
        db.engine.dispose()


def snapshot() -> dict[str, Any]:
    """Users and indexes as rows, to compare two states."""
    with database() as session:
        users = [
            (u.username, u.password_hash, u.is_superuser)
            for u in session.scalars(select(User).order_by(User.username))
        ]
        indexes = [
            (i.path, i.type, i.bases, i.acl_upload, i.mirror_url, i.volatile)
            for i in session.scalars(select(Index).order_by(Index.id))
        ]
    return {"users": users, "indexes": indexes}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run one command: (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def password_works(username: str, password: str) -> bool:
    """Whether `password` is the user's password now."""
    with database() as session:
        user = session.scalar(select(User).where(User.username == username))
        return user is not None and check_password_hash(user.password_hash, password)


# --- prepare ---------------------------------------------------------------------------------


def test_prepare_creates_the_admin_the_mirror_and_the_stage(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fresh data directory gets admin, root/pypi (MIRROR_URL) and admin/dev."""
    code, out, _err = run(capsys, "prepare")

    assert code == 0
    assert "Generated password" not in out  # ADMIN_PASSWORD was given
    state = snapshot()
    assert [(u[0], u[2]) for u in state["users"]] == [("admin", True), ("root", True)]
    assert [(i[0], i[1], i[2], i[4]) for i in state["indexes"]] == [
        ("root/pypi", "mirror", [], DEAD_UPSTREAM),
        ("admin/dev", "stage", ["root/pypi"], None),
    ]
    assert password_works("admin", ADMIN_PASSWORD)
    assert (env / "blobs").is_dir() != (TEST_STORAGE == "s3")  # S3: no local blob folder
    assert (env / "tmp").is_dir()


def test_prepare_is_idempotent(prepared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second start changes no row (not even the password hash)."""
    before = snapshot()

    code, _out, _err = run(capsys, "prepare")

    assert code == 0
    assert snapshot() == before


def test_prepare_applies_a_new_admin_password(
    prepared: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A changed ADMIN_PASSWORD is applied at the next start (the environment's way back in)."""
    monkeypatch.setenv("ADMIN_PASSWORD", "a-brand-new-password")

    code, _out, _err = run(capsys, "prepare")

    assert code == 0
    assert password_works("admin", "a-brand-new-password")
    assert not password_works("admin", ADMIN_PASSWORD)


def test_prepare_keeps_the_mirror_url_of_the_database_and_says_how_to_apply_a_new_one(
    prepared: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A changed MIRROR_URL is logged with the command that applies it; that command does,
    and the pages cached from the old upstream go stale."""
    with database() as session:
        mirror = get_index_by_path(session, "root/pypi")
        session.add(
            MirrorPage(index_id=mirror.id, normalized_name="six", name="six", checked_at=utcnow())
        )
        session.commit()
    before = snapshot()
    monkeypatch.setenv("MIRROR_URL", "http://me:pw-123@127.0.0.1:10/simple/")

    code, _out, _err = run(capsys, "prepare")

    assert code == 0
    assert snapshot() == before
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "MIRROR_URL=http://***:***@127.0.0.1:10/simple/ differs from the mirror_url of"
        f" root/pypi, {DEAD_UPSTREAM}: the database wins (MIRROR_URL only seeds the first"
        ' start); to use MIRROR_URL: entrypoint.sh index modify root/pypi mirror_url="$MIRROR_URL"'
    ]

    code, _out, err = run(
        capsys, "index", "modify", "root/pypi", "mirror_url=http://127.0.0.1:10/simple/"
    )

    assert code == 0, err
    with database() as session:
        assert get_index_by_path(session, "root/pypi").mirror_url == "http://127.0.0.1:10/simple/"
        assert session.scalar(select(MirrorPage)).checked_at is None


def test_prepare_does_not_recreate_what_was_deleted_after_the_first_start(
    prepared: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """admin/dev, root/pypi and the admin deleted on purpose stay deleted; the missing
    ADMIN_USER is named with the command that makes one."""
    assert run(capsys, "index", "delete", "admin/dev", "--yes")[0] == 0
    assert run(capsys, "index", "delete", "root/pypi", "--yes")[0] == 0
    assert run(capsys, "user", "create", "carol", "--password", "carol-pw-1", "--superuser")[0] == 0
    assert run(capsys, "user", "delete", "admin", "--yes")[0] == 0
    before = snapshot()

    code, out, _err = run(capsys, "prepare")

    assert code == 0
    assert snapshot() == before
    assert [i[0] for i in before["indexes"]] == []
    assert "bootstrap:" not in out + caplog.text
    assert (
        "ADMIN_USER=admin: no such user (deleted, or ADMIN_USER changed after the first start):"
        " the database wins, nothing is created; to make one: entrypoint.sh user create admin"
        " --superuser"
    ) in caplog.text


def test_prepare_prints_the_generated_password_until_it_is_changed(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ADMIN_PASSWORD the first start generates one into DATA_DIR (0600) and every
    start prints it; after `user passwd admin` the file is gone and nothing is printed."""
    monkeypatch.delenv("ADMIN_PASSWORD")

    code, out, _err = run(capsys, "prepare")

    assert code == 0
    found = GENERATED_RE.findall(out)
    assert len(found) == 1
    assert len(found[0]) >= 20
    assert password_works("admin", found[0])
    kept = env / "initial-admin-password"
    assert kept.read_text() == found[0] + "\n"
    assert kept.stat().st_mode & 0o777 == 0o600

    code, out, _err = run(capsys, "prepare")

    assert code == 0
    assert GENERATED_RE.findall(out) == found
    assert password_works("admin", found[0])

    assert run(capsys, "user", "passwd", "admin", "--password", "my-own-password")[0] == 0
    code, out, _err = run(capsys, "prepare")

    assert code == 0
    assert "Generated password" not in out
    assert not kept.exists()
    assert password_works("admin", "my-own-password")


def test_prepare_keeps_the_password_when_admin_password_is_unset_later(
    prepared: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty ADMIN_PASSWORD on a later start leaves the existing password alone."""
    monkeypatch.delenv("ADMIN_PASSWORD")

    assert run(capsys, "prepare")[0] == 0

    assert password_works("admin", ADMIN_PASSWORD)


# --- users -----------------------------------------------------------------------------------


def test_user_create_passwd_list_and_delete(
    prepared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The user subcommands manage accounts."""
    code, out, _ = run(capsys, "user", "create", "bob", "--password", "first-password")
    assert (code, out) == (0, "user bob: create done\n")
    assert password_works("bob", "first-password")

    code, out, _ = run(capsys, "user", "list")
    assert (code, out) == (0, "admin (superuser)\nbob\nroot (superuser)\n")

    code, out, _ = run(capsys, "user", "passwd", "bob", "--password", "second-password")
    assert (code, out) == (0, "user bob: passwd done\n")
    assert password_works("bob", "second-password")
    assert not password_works("bob", "first-password")

    code, out, _ = run(capsys, "user", "delete", "bob", "--yes")
    assert (code, out) == (0, "user bob: delete done\n")
    assert "bob" not in run(capsys, "user", "list")[1]


def test_user_create_takes_the_password_from_the_environment(
    prepared: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """$PYSHELF_PASSWORD keeps passwords out of the process list."""
    monkeypatch.setenv("PYSHELF_PASSWORD", "from-the-environment")

    code, out, _ = run(capsys, "user", "create", "carol", "--superuser", "--email", "c@example.org")

    assert code == 0
    assert "from-the-environment" not in out
    assert password_works("carol", "from-the-environment")
    assert "carol (superuser)" in run(capsys, "user", "list")[1]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["user", "create", "admin", "--password", "x" * 10], 1, "user admin already exists"),
        (["user", "passwd", "nobody", "--password", "x" * 10], 1, "user nobody does not exist"),
        (["user", "delete", "nobody"], 1, "user nobody does not exist"),
        (["user", "create"], 2, "the following arguments are required: NAME"),
        (["token", "create", "nobody"], 1, "user nobody does not exist"),
        (["index", "show", "admin/nope"], 1, "index admin/nope does not exist"),
        (["index", "create", "nobody/dev"], 1, "user nobody does not exist"),
        (["index", "create", "nopath"], 1, "expected USER/NAME, got 'nopath'"),
        (["index", "modify", "admin/dev", "volatile"], 1, "expected key=value, got 'volatile'"),
        (["index", "modify", "admin/dev", "colour=blue"], 1, "unknown index setting 'colour'"),
        (["index", "show"], 2, "the following arguments are required: USER/NAME"),
        (["refresh", "admin/nope", "six"], 1, "index admin/nope does not exist"),
    ],
)
def test_commands_fail_with_one_line_on_stderr(
    prepared: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    """Mistakes exit non-zero with one actionable line, and change nothing."""
    before = snapshot()

    result, out, err = run(capsys, *argv)

    assert result == code
    assert out == ""
    assert err.count("\n") == 1
    assert message in err
    assert snapshot() == before


# --- indexes ---------------------------------------------------------------------------------


def test_index_create_modify_show_list_and_delete(
    prepared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Index settings are given as key=value pairs; show prints the JSON config."""
    code, out, _ = run(
        capsys, "index", "create", "admin/team", "bases=admin/dev", "volatile=true", "title=Team"
    )
    assert code == 0
    assert json.loads(out)["admin/team"] == {
        "type": "stage",
        "bases": ["admin/dev"],
        "volatile": True,
        "acl_upload": ["admin"],
        "acl_read": [":ANONYMOUS:"],
        "mirror_whitelist": [],
        "blocked": [],
        "block_vulnerable": None,
        "title": "Team",
        "description": "",
    }

    code, out, _ = run(
        capsys, "index", "modify", "admin/team", "mirror_whitelist=six,Requests", "volatile=no"
    )
    assert code == 0
    assert json.loads(out)["admin/team"]["mirror_whitelist"] == ["six", "Requests"]

    code, out, _ = run(capsys, "index", "show", "admin/team")
    shown = json.loads(out)["admin/team"]
    assert (code, shown["volatile"], shown["bases"]) == (0, False, ["admin/dev"])

    code, out, _ = run(capsys, "index", "list")
    assert (code, out) == (0, "root/pypi (mirror)\nadmin/dev (stage)\nadmin/team (stage)\n")

    code, out, _ = run(capsys, "index", "delete", "admin/team", "--yes")
    assert (code, out) == (0, "deleted admin/team\n")
    assert "admin/team" not in run(capsys, "index", "list")[1]


def test_index_create_of_a_mirror_masks_its_credentials(
    prepared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The printed config never shows the password in mirror_url."""
    code, out, _ = run(
        capsys,
        "index",
        "create",
        "admin/corp",
        "type=mirror",
        "mirror_url=https://me:s3cret@pypi.corp.example/simple/",
    )

    assert code == 0
    assert "s3cret" not in out
    assert (
        json.loads(out)["admin/corp"]["mirror_url"] == "https://***:***@pypi.corp.example/simple/"
    )


def test_index_cycle_is_refused_with_one_line(
    prepared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """a -> b -> a exits 1 with the reason, and a keeps its bases."""
    assert run(capsys, "index", "create", "admin/a")[0] == 0
    assert run(capsys, "index", "create", "admin/b", "bases=admin/a")[0] == 0

    code, out, err = run(capsys, "index", "modify", "admin/a", "bases=admin/b")

    assert (code, out) == (1, "")
    assert err == "pyshelf: bases would make a cycle: admin/a reaches itself\n"
    assert json.loads(run(capsys, "index", "show", "admin/a")[1])["admin/a"]["bases"] == []


def test_index_delete_refuses_an_index_others_build_on(
    prepared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Like DELETE /USER/INDEX (409): deleting root/pypi would orphan admin/dev's base."""
    code, out, err = run(capsys, "index", "delete", "root/pypi")

    assert (code, out) == (1, "")
    assert err == "pyshelf: root/pypi is a base of admin/dev; change those first\n"
    assert "root/pypi (mirror)" in run(capsys, "index", "list")[1]


def test_user_delete_refuses_a_user_whose_index_others_build_on(
    prepared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deleting root would delete root/pypi under admin/dev's feet."""
    code, out, err = run(capsys, "user", "delete", "root")

    assert (code, out) == (1, "")
    assert err == "pyshelf: root/pypi is a base of admin/dev; change those first\n"


# --- tokens and refresh ----------------------------------------------------------------------


def test_token_create_prints_a_token_that_authenticates(
    prepared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The printed token works as the password of __token__ and as a Bearer token (RFC 7617)."""
    code, out, _ = run(capsys, "token", "create", "admin", "--description", "ci")
    token = out.strip()

    assert code == 0
    assert re.fullmatch(r"pyshelf-[A-Za-z0-9_-]{40,}", token)
    app = create_app(Settings.from_env())
    client = app.test_client()
    for header in (basic_auth("__token__", token), f"Bearer {token}"):
        response = client.patch("/admin", json={}, headers={"Authorization": header})
        assert response.status == "200 OK", header
    wrong = client.patch("/admin", json={}, headers={"Authorization": f"Bearer {token}x"})
    assert wrong.status_code == 403
    app.extensions["pyshelf.db"].engine.dispose()


def test_refresh_marks_the_cached_pages_of_a_project_stale(
    prepared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """refresh USER/INDEX PROJECT clears checked_at on the mirrors behind the index."""
    with database() as session:
        mirror = get_index_by_path(session, "root/pypi")
        for name in ("requests", "six"):
            session.add(
                MirrorPage(index_id=mirror.id, normalized_name=name, name=name, checked_at=utcnow())
            )
        session.commit()

    code, out, _ = run(capsys, "refresh", "admin/dev", "Requests")

    assert (code, out) == (0, "1 cached page(s) of requests marked for refresh\n")
    with database() as session:
        pages = {p.normalized_name: p.checked_at for p in session.scalars(select(MirrorPage))}
    assert pages["requests"] is None
    assert pages["six"] is not None


def test_bad_configuration_exits_2_before_doing_anything(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Config errors are reported (all at once) with exit code 2."""
    monkeypatch.setenv("MAX_UPLOAD_SIZE", "huge")
    monkeypatch.setenv("LOG_LEVEL", "chatty")

    code, out, err = run(capsys, "prepare")

    assert (code, out) == (2, "")
    assert err.startswith("pyshelf: invalid configuration:")
    assert "MAX_UPLOAD_SIZE" in err
    assert "LOG_LEVEL" in err
    assert not env.exists()


def test_a_command_of_another_module_fails_in_one_line_under_python_m(tmp_path: Path) -> None:
    """`python -m app.cli` (entrypoint.sh) reports an error raised in another module
    (import-devpi, backup, ...) as one line and exit 1, not as a traceback."""
    env = clean_env(DATA_DIR=str(tmp_path / "data"), ADMIN_PASSWORD=ADMIN_PASSWORD)

    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "import-devpi", str(tmp_path / "missing")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith("pyshelf: ")
    assert "dataindex.json does not exist" in done.stderr
