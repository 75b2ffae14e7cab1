"""app.services.promote without Flask: a database session, users and indexes are all a copy
needs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.data.models import DocSet, File, Project, Promotion, User
from app.services.indexes import Reader, get_index_by_path
from app.services.indexes_config import create_index
from app.services.promote import (
    FileConflict,
    InvalidPromotion,
    PromoteRefused,
    ReleaseNotFound,
    promote,
    promotions_of,
)
from app.services.releases import FILE_FIELDS

SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_DOCS = "d" * 64
UPLOADED_AT = dt.datetime(2026, 1, 2, 3, 4, 5)


@pytest.fixture
def session(app: Any) -> Iterator[Session]:
    """A session on the bootstrapped app's database, outside any request."""
    with app.extensions["pyshelf.db"].session() as db_session:
        yield db_session


def admin(session: Session) -> User:
    found = session.scalar(select(User).where(User.username == "admin"))
    assert found is not None
    return found


def host(session: Session, path: str, filename: str, sha256: str, **extra: Any) -> File:
    """A file of demo-pkg on `path`, as an upload would have recorded it."""
    index = get_index_by_path(session, path)
    assert index is not None
    project = session.scalar(
        select(Project).where(Project.index_id == index.id, Project.normalized_name == "demo-pkg")
    )
    if project is None:
        project = Project(index_id=index.id, name="Demo_Pkg", normalized_name="demo-pkg")
        session.add(project)
        session.flush()
    record = File(
        project_id=project.id,
        filename=filename,
        version=filename.split("-")[1],
        filetype="bdist_wheel",
        pyversion="py3",
        sha256=sha256,
        blake2_256="c" * 64,
        md5="e" * 32,
        size=123,
        metadata_sha256="f" * 64,
        core_metadata={"summary": "demo"},
        uploader="admin",
        uploaded_at=UPLOADED_AT,
        **extra,
    )
    session.add(record)
    session.flush()
    return record


@pytest.fixture
def stages(session: Session) -> Session:
    """admin/dev with demo-pkg 1.0 (a yanked wheel and the docs), admin/prod, a volatile
    admin/scratch."""
    create_index(session, admin(session), "prod")
    create_index(session, admin(session), "scratch", {"volatile": True})
    session.flush()
    host(session, "admin/dev", "demo_pkg-1.0-py3-none-any.whl", SHA_A, yanked=True)
    dev = get_index_by_path(session, "admin/dev")
    assert dev is not None
    session.add(
        DocSet(
            index_id=dev.id,
            normalized_name="demo-pkg",
            version="1.0",
            sha256=SHA_DOCS,
            size=10,
            uncompressed_bytes=20,
            entry_count=1,
            path_prefix="",
            uploader="admin",
            uploaded_at=UPLOADED_AT,
        )
    )
    session.commit()
    return session


def run(session: Session, target: str, version: str = "1.0", **options: Any) -> Any:
    user = admin(session)
    source = get_index_by_path(session, options.pop("source", "admin/dev"))
    assert source is not None
    return promote(
        session, source, "demo-pkg", version, target, user=user, reader=Reader(user), **options
    )


def test_a_copy_keeps_every_field_of_the_files_and_docs_and_records_the_promotion(
    stages: Session,
) -> None:
    result = run(stages, "admin/prod", "1.0.0")  # 1.0.0 is 1.0 (PEP 440)
    stages.commit()

    assert (result.copied, result.unchanged, result.docs) == (
        ["demo_pkg-1.0-py3-none-any.whl"],
        [],
        "copied",
    )
    prod = get_index_by_path(stages, "admin/prod")
    assert prod is not None
    copy = stages.scalar(select(File).join(Project).where(Project.index_id == prod.id))
    assert copy is not None
    assert (copy.project.name, copy.sha256, copy.uploaded_at, copy.yanked) == (
        "Demo_Pkg",
        SHA_A,
        UPLOADED_AT,
        True,
    )
    assert (copy.metadata_sha256, copy.core_metadata, copy.uploader) == (
        "f" * 64,
        {"summary": "demo"},
        "admin",
    )
    docs = stages.scalar(select(DocSet).where(DocSet.index_id == prod.id))
    assert docs is not None
    assert (docs.sha256, docs.version, docs.uploaded_at) == (SHA_DOCS, "1.0", UPLOADED_AT)
    [record] = promotions_of(stages, prod, "demo-pkg", "1.0")
    assert (record.source_path, record.promoted_by, record.filenames, record.has_docs) == (
        "admin/dev",
        "admin",
        ["demo_pkg-1.0-py3-none-any.whl"],
        True,
    )


def test_a_second_copy_changes_nothing_and_records_nothing(stages: Session) -> None:
    run(stages, "admin/prod")
    stages.commit()

    again = run(stages, "admin/prod")

    assert again.is_noop
    assert (again.copied, again.unchanged, again.docs) == (
        [],
        ["demo_pkg-1.0-py3-none-any.whl"],
        "unchanged",
    )
    assert len(stages.scalars(select(Promotion)).all()) == 1


def test_other_bytes_are_a_conflict_on_a_non_volatile_target_and_replace_on_a_volatile_one(
    stages: Session,
) -> None:
    for target in ("admin/prod", "admin/scratch"):
        host(stages, target, "demo_pkg-1.0-py3-none-any.whl", SHA_B)
    stages.commit()

    with pytest.raises(FileConflict, match="Index admin/prod is not volatile"):
        run(stages, "admin/prod")
    stages.rollback()
    result = run(stages, "admin/scratch")
    stages.commit()

    assert result.copied == ["demo_pkg-1.0-py3-none-any.whl"]
    scratch = get_index_by_path(stages, "admin/scratch")
    assert scratch is not None
    shas = stages.scalars(select(File.sha256).join(Project).where(Project.index_id == scratch.id))
    assert list(shas) == [SHA_A]


@pytest.mark.parametrize(
    ("target", "options", "error", "message"),
    [
        ("admin/prod", {"version": "2.0"}, ReleaseNotFound, "There is no release demo-pkg 2.0"),
        ("admin/prod", {"version": "x y"}, InvalidPromotion, "'x y' is not a valid version"),
        ("root/pypi", {}, InvalidPromotion, "Target index root/pypi is a mirror"),
        ("admin/prod", {"source": "root/pypi"}, InvalidPromotion, "Index root/pypi is a mirror"),
        ("pypi:x", {}, InvalidPromotion, "pyshelf does not push to other servers"),
        ("admin/prod", {"with_files": False}, InvalidPromotion, "docs alone need the project"),
        ("admin/prod", {"token_index": "admin/dev"}, PromoteRefused, "isn't allowed to upload"),
    ],
)
def test_what_cannot_be_promoted_raises_an_error_that_says_what_to_do(
    stages: Session, target: str, options: dict[str, Any], error: type, message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(")):
        run(stages, target, **options)
    stages.rollback()
    assert stages.scalars(select(Promotion)).all() == []


def test_a_copy_of_a_file_row_takes_every_column_but_its_id_and_project() -> None:
    """releases.FILE_FIELDS is the one list of a File row's fields (promote copies them, bundles
    carry them): a new column must be added to it."""
    columns = {column.key for column in File.__table__.columns} - {"id", "project_id"}
    assert set(FILE_FIELDS) == columns
