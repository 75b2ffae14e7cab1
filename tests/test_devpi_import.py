"""`entrypoint.sh import-devpi DIR`: a devpi-server export (made by hand here) into pyshelf."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from app import create_app
from app.cli import main
from app.core.config import Settings
from app.data.models import DocSet, File, Index, Project, User
from app.ops.devpi_format import password_hash_from_devpi
from tests import test_cli
from tests.builders import make_sdist, make_wheel
from tests.conftest import basic_auth
from tests.test_cli import database
from tests.test_upload import fast_password_hashes  # noqa: F401 - autouse fixture

env = test_cli.env  # the same fixtures: DATA_DIR in tmp_path, then `prepare`
prepared = test_cli.prepared
CHEAP_ARGON2 = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
WHEEL = make_wheel("hello-devpi", "1.0")
SDIST = make_sdist("other-pkg", "2.0")
WHEN = [2024, 5, 6, 7, 8, 9]


def docs_zip() -> bytes:
    """A documentation zip as devpi-client builds it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.html", "<!DOCTYPE html><title>Docs</title>")
    return buffer.getvalue()


def file_entry(relpath: str, data: bytes, kind: str, project: str, version: str) -> dict:
    """One entry of an index's "files", as devpi-export writes it."""
    sha256 = hashlib.sha256(data).hexdigest()
    return {
        "version": version,
        "entrymapping": {
            "last_modified": "Fri, 27 Nov 2026 22:14:37 GMT",
            "hash_spec": f"sha256={sha256}",
            "hashes": {"sha256": sha256},
            "project": project,
            "version": version,
        },
        "log": [{"what": "upload", "who": "alice", "when": WHEN, "dst": "alice/dev"}],
        "type": kind,
        "projectname": project,
        "relpath": relpath,
    }


def stage(bases: list[str], **extra: Any) -> dict[str, Any]:
    """A stage's indexconfig as devpi-server 6 exports it."""
    return {
        "type": "stage",
        "bases": bases,
        "volatile": False,
        "acl_upload": ["alice"],
        "acl_toxresult_upload": [":ANONYMOUS:"],
        "mirror_whitelist": [],
        "mirror_whitelist_inheritance": "intersection",
        **extra,
    }


def write_export(directory: Path, **overrides: Any) -> Path:
    """A devpi-export directory: users alice (argon2), bob (salted sha256), carol (no hash),
    root; indexes root/pypi (mirror), alice/dev (a wheel, an sdist, docs, a tox result) and
    root/prod (listed first, based on alice/dev)."""
    files = {
        "alice/dev/hello-devpi/1.0/" + WHEEL[0]: WHEEL[1],
        "alice/dev/other-pkg/2.0/" + SDIST[0]: SDIST[1],
        "alice/dev/hello-devpi-1.0.doc.zip": docs_zip(),
        "alice/dev/hello-devpi/abc/tox.json": b"{}",
    }
    for relpath, data in files.items():
        (directory / relpath).parent.mkdir(parents=True, exist_ok=True)
        (directory / relpath).write_bytes(data)
    legacy = hashlib.sha256(b"c2FsdHNhbHQ=" + b"bob-password").hexdigest()
    index = {
        "dumpversion": "2",
        "devpi_server": "6.20.3",
        "users": {
            "alice": {
                "pwhash": CHEAP_ARGON2.hash("alice-password"),
                "email": "alice@example.org",
                "created": "2024-01-02T03:04:05Z",
                "username": "alice",
            },
            "bob": {"pwhash": legacy, "pwsalt": "c2FsdHNhbHQ=", "username": "bob"},
            "carol": {"username": "carol"},
            "root": {"pwhash": CHEAP_ARGON2.hash("root-password"), "username": "root"},
        },
        "indexes": {
            "root/prod": {"indexconfig": stage(["alice/dev"], volatile=True), "files": []},
            "root/pypi": {
                "indexconfig": {
                    "type": "mirror",
                    "volatile": False,
                    "title": "PyPI",
                    "mirror_url": "https://upstream.test/simple/",
                    "mirror_web_url_fmt": "https://upstream.test/project/{name}/",
                },
                "files": [file_entry("root/pypi/x/1/x-1.tar.gz", b"", "releasefile", "x", "1")],
            },
            "alice/dev": {
                "indexconfig": stage(["root/pypi"], title="Alice", custom_data="x"),
                "projects": {
                    "hello-devpi": {"1.0": {"name": "Hello-Devpi", "version": "1.0"}},
                    "other-pkg": {"2.0": {"name": "other-pkg", "version": "2.0"}},
                },
                "files": [
                    file_entry(path, data, kind, project, version)
                    for path, kind, project, version in (
                        (
                            "alice/dev/hello-devpi/1.0/" + WHEEL[0],
                            "releasefile",
                            "hello-devpi",
                            "1.0",
                        ),
                        ("alice/dev/other-pkg/2.0/" + SDIST[0], "releasefile", "other-pkg", "2.0"),
                        ("alice/dev/hello-devpi-1.0.doc.zip", "doczip", "hello-devpi", "1.0"),
                        ("alice/dev/hello-devpi/abc/tox.json", "toxresult", "hello-devpi", "1.0"),
                    )
                    for data in [files[path]]
                ],
            },
        },
    }
    index.update(overrides)
    (directory / "dataindex.json").write_text(json.dumps(index))
    return directory


def import_devpi(directory: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the command; (exit code, stdout, stderr)."""
    code = main(["import-devpi", str(directory)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_import_brings_users_indexes_files_and_docs(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = write_export(tmp_path / "export")

    code, out, err = import_devpi(export, capsys)

    assert code == 0, err
    assert "users: 4 (alice, bob, carol, root)" in out
    assert "release files: 2" in out
    assert "documentation sets: 1" in out
    assert "  carol: the export has no password for this account" in out
    assert "entrypoint.sh user passwd carol" in out
    assert "setting not imported (pyshelf has no 'custom_data'): alice/dev" in out
    assert "acl_toxresult_upload" not in out  # devpi's default: no noise
    assert "root/pypi: 1 mirrored files not imported (fetched on demand)" in out
    assert "alice/dev: 1 tox results not imported" in out
    assert "root/pypi keeps MIRROR_URL; devpi mirrored https://upstream.test/simple/" in out
    assert "mirror_web_url_fmt" not in out  # no meaning in pyshelf: no noise
    with database() as session:
        indexes = {i.path: i for i in session.scalars(select(Index))}
        assert indexes["root/prod"].bases == ["alice/dev"]
        assert indexes["root/prod"].volatile is True
        assert indexes["alice/dev"].title == "Alice"
        assert indexes["root/pypi"].mirror_url == "http://127.0.0.1:9/simple/"
        files = {f.filename: f for f in session.scalars(select(File))}
        wheel = files[WHEEL[0]]
        assert wheel.sha256 == hashlib.sha256(WHEEL[1]).hexdigest()
        assert wheel.uploader == "alice"
        assert wheel.uploaded_at.timetuple()[:6] == tuple(WHEN)
        assert wheel.metadata_sha256  # the PEP 658 sidecar, as for uploads
        assert wheel.project.name == "Hello-Devpi"
        docs = session.scalars(select(DocSet)).one()
        assert (docs.normalized_name, docs.version) == ("hello-devpi", "1.0")
        users = {u.username: u for u in session.scalars(select(User))}
        assert users["root"].is_superuser
        assert not users["alice"].is_superuser
        assert users["alice"].email == "alice@example.org"
        assert users["alice"].created_at.year == 2024


def test_imported_users_log_in_with_their_devpi_passwords(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert import_devpi(write_export(tmp_path / "export"), capsys)[0] == 0
    client = create_app(Settings.from_env()).test_client()

    def status(user: str, password: str) -> int:
        headers = {"Authorization": basic_auth(user, password), "Accept": "application/json"}
        return client.patch(f"/{user}", json={}, headers=headers).status_code

    assert status("alice", "alice-password") == 200
    assert status("bob", "bob-password") == 200
    assert status("root", "root-password") == 200
    assert status("bob", "wrong-password") == 403
    response = client.get("/alice/dev/+simple/other-pkg/")
    assert response.status_code == 200
    assert SDIST[0] in response.get_data(as_text=True)
    assert client.get("/alice/dev/hello-devpi/1.0/+doc/").status_code == 200


def test_a_corrupt_file_stops_the_import_with_nothing_recorded(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = write_export(tmp_path / "export")
    (export / "alice/dev/other-pkg/2.0" / SDIST[0]).write_bytes(b"tampered")
    (export / "alice/dev/hello-devpi-1.0.doc.zip").unlink()

    code, _out, err = import_devpi(export, capsys)

    assert code == 1
    assert "nothing was imported; fix the export and retry:" in err
    assert f"alice/dev: alice/dev/other-pkg/2.0/{SDIST[0]} is corrupt: sha256 is" in err
    assert "alice/dev: alice/dev/hello-devpi-1.0.doc.zip is missing from the export" in err
    with database() as session:
        assert session.scalar(select(User).where(User.username == "alice")) is None
        assert session.scalars(select(Project)).all() == []


def test_files_pyshelf_would_refuse_are_skipped_and_named(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = write_export(tmp_path / "export")
    data = json.loads((export / "dataindex.json").read_text())
    egg = export / "alice/dev/old/0.1/old-0.1-py2.7.egg"
    egg.parent.mkdir(parents=True)
    egg.write_bytes(b"egg")
    data["indexes"]["alice/dev"]["files"].append(
        file_entry("alice/dev/old/0.1/old-0.1-py2.7.egg", b"egg", "releasefile", "old", "0.1")
    )
    (export / "dataindex.json").write_text(json.dumps(data))

    code, out, _err = import_devpi(export, capsys)

    assert code == 0
    assert "not imported:\n    alice/dev: old-0.1-py2.7.egg: Invalid file extension" in out


def test_import_refuses_a_pyshelf_that_holds_data(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["user", "create", "dave", "--password", "dave-password"]) == 0
    capsys.readouterr()

    code, _out, err = import_devpi(write_export(tmp_path / "export"), capsys)

    assert code == 1
    assert "already has users or indexes (dave)" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "dataindex.json does not exist: give the directory that devpi-export wrote"),
        ('{"dumpversion": "9", "users": {}, "indexes": {}}', "has dumpversion '9'"),
        ("not json", "cannot read"),
    ],
)
def test_import_refuses_what_is_not_an_export(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    directory = tmp_path / "export"
    directory.mkdir()
    if content is not None:
        (directory / "dataindex.json").write_text(content)

    code, _out, err = import_devpi(directory, capsys)

    assert code == 1
    assert message in err


def test_import_into_a_volume_no_server_started_yet(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The import into a volume no server started is its first start: ADMIN_USER, admin/dev
    and root/pypi of MIRROR_URL are there, and the server start after it adds nothing."""
    code, _out, err = import_devpi(write_export(tmp_path / "export"), capsys)
    assert code == 0, err

    assert main(["prepare"]) == 0
    with database() as session:
        paths = sorted(i.path for i in session.scalars(select(Index)))
        mirror = session.scalar(select(Index).where(Index.name == "pypi"))
        assert mirror.mirror_url == "http://127.0.0.1:9/simple/"
    assert paths == ["admin/dev", "alice/dev", "root/prod", "root/pypi"]


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        ({"pwhash": "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"}, "argon2"),
        ({"pwhash": "a" * 64, "pwsalt": "salt"}, "salted sha256"),
        ({"pwhash": "a" * 63, "pwsalt": "salt"}, "a salted hash of an unknown kind"),
        ({"pwhash": "$argon2id$broken"}, "an argon2 hash that cannot be read"),
        ({"pwhash": "$2b$12$abc"}, "a hash of a scheme pyshelf cannot check (2b)"),
        ({}, "the export has no password for this account (an auth plugin's user?)"),
    ],
)
def test_password_hashes_pyshelf_can_and_cannot_check(data: dict, kind: str) -> None:
    stored, found = password_hash_from_devpi(data)

    assert found == kind
    assert (stored is not None) == (kind in ("argon2", "salted sha256"))
