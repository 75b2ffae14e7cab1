"""app.services.indexes and indexes_view: resolution order, merged project views and the
dependency-confusion rule."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.dists import normalize_name, parse_filename
from app.data.models import File, Index, Project, User
from app.services.indexes import get_index_by_path, resolution_order
from app.services.indexes_config import create_index
from app.services.indexes_view import Dist, project_names, project_view
from tests.test_upload import fast_password_hashes  # noqa: F401 - autouse fixture

SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_M = "c" * 64


class FakeMirror:
    """A MirrorSource that serves canned upstream projects and records every call."""

    def __init__(self, projects: dict[str, list[str]] | None = None) -> None:
        self.projects = projects or {}  # display name -> filenames
        self.calls: list[tuple[str, str]] = []

    def project(self, index: Index, normalized_name: str) -> tuple[str, list[Dist]] | None:
        self.calls.append((index.path, normalized_name))
        for name, filenames in self.projects.items():
            if normalize_name(name) == normalized_name:
                return name, [mirror_dist(index.path, f) for f in filenames]
        return None

    def project_names(self, index: Index) -> list[str]:
        self.calls.append((index.path, "+names"))
        return list(self.projects)

    def project_status(self, index: Index, normalized_name: str) -> None:
        return None  # canned projects carry no PEP 792 status


def mirror_dist(index_path: str, filename: str) -> Dist:
    """A file as a mirror would list it."""
    return Dist(
        filename=filename,
        path=f"{index_path}/+f/{SHA_M}/{filename}",
        version=parse_filename(filename).version,
        sha256=SHA_M,
        size=1,
        requires_python=None,
        yanked=False,
        upload_time=None,
        metadata_sha256=None,
        index_path=index_path,
    )


@pytest.fixture
def session(app: Any) -> Iterator[Session]:
    """A database session on the bootstrapped app (admin, root/pypi, admin/dev)."""
    with app.extensions["pyshelf.db"].session() as db_session:
        yield db_session


def admin(session: Session) -> User:
    """The bootstrapped superuser."""
    return session.scalar(select(User).where(User.username == "admin"))


def index(session: Session, path: str) -> Index:
    """An existing index by path."""
    found = get_index_by_path(session, path)
    assert found is not None
    return found


def stage(session: Session, name: str, *bases: str, **config: Any) -> Index:
    """Create admin/NAME with the given bases."""
    created = create_index(session, admin(session), name, {"bases": list(bases), **config})
    session.flush()
    return created


def host(session: Session, on: Index, name: str, filename: str, sha256: str = SHA_A) -> None:
    """Record an uploaded file of project `name` on a stage."""
    normalized = normalize_name(name)
    project = session.scalar(
        select(Project).where(Project.index_id == on.id, Project.normalized_name == normalized)
    )
    if project is None:
        project = Project(index_id=on.id, name=name, normalized_name=normalized)
        session.add(project)
        session.flush()
    info = parse_filename(filename)
    session.add(
        File(
            project_id=project.id,
            filename=filename,
            version=info.version,
            filetype=info.filetype,
            pyversion=info.pyversion,
            sha256=sha256,
            blake2_256="0" * 64,
            md5="0" * 32,
            size=1,
        )
    )
    session.flush()


def paths(indexes: list[Index]) -> list[str]:
    """The paths of some indexes."""
    return [i.path for i in indexes]


def listing(view: Any) -> list[tuple[str, str]]:
    """(filename, index it came from) of a project view, in page order."""
    return [(d.filename, d.index_path) for d in view.dists]


# --- resolution order ------------------------------------------------------------------------


def test_resolution_order_is_the_index_then_its_bases(session: Session) -> None:
    """admin/dev inherits root/pypi."""
    assert paths(resolution_order(session, index(session, "admin/dev"))) == [
        "admin/dev",
        "root/pypi",
    ]


def test_resolution_order_follows_bases_depth_first_in_their_order(session: Session) -> None:
    """A base's own bases come before the next base (no sharing: plain depth-first)."""
    stage(session, "a1")
    stage(session, "a", "admin/a1")
    stage(session, "b")
    top = stage(session, "top", "admin/a", "admin/b")

    assert paths(resolution_order(session, top)) == [
        "admin/top",
        "admin/a",
        "admin/a1",
        "admin/b",
    ]


def test_resolution_order_puts_a_shared_base_after_every_index_built_on_it(
    session: Session,
) -> None:
    """Diamond top -> (left, right) -> root/pypi: the mirror must not come before `right`,
    or its files would shadow right's own (each index's own files come before its bases')."""
    stage(session, "left", "root/pypi")
    stage(session, "right", "root/pypi")
    top = stage(session, "top", "admin/left", "admin/right")

    assert paths(resolution_order(session, top)) == [
        "admin/top",
        "admin/left",
        "admin/right",
        "root/pypi",
    ]


def test_diamond_listing_prefers_the_second_branch_over_the_shared_mirror(
    session: Session,
) -> None:
    """With a whitelisted name, `right`'s file wins over the mirror's file of the same name."""
    stage(session, "left", "root/pypi")
    right = stage(session, "right", "root/pypi", mirror_whitelist=["demo-pkg"])
    top = stage(session, "top", "admin/left", "admin/right")
    host(session, right, "demo-pkg", "demo_pkg-1.0.0-py3-none-any.whl")
    mirror = FakeMirror({"demo-pkg": ["demo_pkg-1.0.0-py3-none-any.whl"]})

    view = project_view(session, top, "demo-pkg", mirror)

    assert listing(view) == [("demo_pkg-1.0.0-py3-none-any.whl", "admin/right")]


def test_resolution_order_skips_missing_bases(session: Session) -> None:
    """A base that no longer exists is skipped, not an error."""
    left = stage(session, "left")
    top = stage(session, "top", "admin/left")
    top.bases = ["admin/gone", "admin/left", "nobody/nothing"]  # as if deleted behind our back
    session.flush()

    assert paths(resolution_order(session, top)) == ["admin/top", "admin/left"]
    assert left.path == "admin/left"


def test_resolution_order_survives_a_stored_cycle(session: Session) -> None:
    """Cycles are refused by configuration; should one be stored anyway, each index shows once."""
    a = stage(session, "a")
    b = stage(session, "b", "admin/a")
    a.bases = ["admin/b"]
    session.flush()

    assert paths(resolution_order(session, a)) == ["admin/a", "admin/b"]
    assert paths(resolution_order(session, b)) == ["admin/b", "admin/a"]


# --- merged views ----------------------------------------------------------------------------


def test_project_view_lists_own_files_first_and_the_first_filename_wins(
    session: Session,
) -> None:
    """An index shadows a base's file of the same filename; other base files follow."""
    base = stage(session, "base")
    top = stage(session, "top", "admin/base")
    host(session, top, "Demo.Pkg", "demo_pkg-1.0.0-py3-none-any.whl", SHA_A)
    host(session, base, "demo_pkg", "demo_pkg-1.0.0-py3-none-any.whl", SHA_B)
    host(session, base, "demo_pkg", "demo_pkg-2.0.0-py3-none-any.whl", SHA_B)
    mirror = FakeMirror()

    view = project_view(session, top, "demo-pkg", mirror)

    assert view is not None
    assert (view.name, view.normalized_name) == ("Demo.Pkg", "demo-pkg")
    assert listing(view) == [
        ("demo_pkg-1.0.0-py3-none-any.whl", "admin/top"),
        ("demo_pkg-2.0.0-py3-none-any.whl", "admin/base"),
    ]
    assert view.dists[0].sha256 == SHA_A
    assert view.dists[0].path == f"admin/top/+f/{SHA_A}/demo_pkg-1.0.0-py3-none-any.whl"
    assert view.is_mirrored is False
    assert mirror.calls == []


def test_project_view_of_an_unknown_name_is_none(session: Session) -> None:
    """Nobody has it: None (the view answers 404), after asking the mirror once."""
    mirror = FakeMirror()

    assert project_view(session, index(session, "admin/dev"), "no-such", mirror) is None
    assert mirror.calls == [("root/pypi", "no-such")]


def test_project_view_of_a_public_name_comes_from_the_mirror(session: Session) -> None:
    """No stage holds the name: the mirror base provides it."""
    mirror = FakeMirror({"Six": ["six-1.16.0-py2.py3-none-any.whl"]})

    view = project_view(session, index(session, "admin/dev"), "six", mirror)

    assert view is not None
    assert view.name == "Six"
    assert listing(view) == [("six-1.16.0-py2.py3-none-any.whl", "root/pypi")]
    assert view.is_mirrored is True
    assert mirror.calls == [("root/pypi", "six")]


def test_private_name_never_asks_the_mirror(session: Session) -> None:
    """A name with files on the stage hides the mirror's project of that name."""
    dev = index(session, "admin/dev")
    host(session, dev, "requests", "requests-0.0.1-py3-none-any.whl")
    mirror = FakeMirror({"requests": ["requests-2.32.0-py3-none-any.whl"]})

    view = project_view(session, dev, "requests", mirror)

    assert listing(view) == [("requests-0.0.1-py3-none-any.whl", "admin/dev")]
    assert mirror.calls == []


def test_private_name_in_a_base_stage_also_hides_the_mirror(session: Session) -> None:
    """The rule holds across the whole chain: team/internal's names shadow root/pypi."""
    team = stage(session, "team")
    top = stage(session, "top", "admin/team", "root/pypi")
    host(session, team, "acme-internal", "acme_internal-1.0-py3-none-any.whl")
    mirror = FakeMirror({"acme-internal": ["acme_internal-99.0-py3-none-any.whl"]})

    view = project_view(session, top, "acme-internal", mirror)

    assert listing(view) == [("acme_internal-1.0-py3-none-any.whl", "admin/team")]
    assert mirror.calls == []


@pytest.mark.parametrize(
    "entry", ["demo-pkg", "Demo.Pkg", "demo_pkg", "DEMO__pkg", "demo-.pkg", "*"]
)
def test_whitelisted_private_name_is_merged_with_the_mirror(session: Session, entry: str) -> None:
    """`mirror_whitelist` (by normalized name, or "*") opts a name in: own files first."""
    dev = index(session, "admin/dev")
    dev.mirror_whitelist = [entry]
    host(session, dev, "demo-pkg", "demo_pkg-1.0.0-py3-none-any.whl")
    mirror = FakeMirror(
        {"demo-pkg": ["demo_pkg-1.0.0-py3-none-any.whl", "demo_pkg-2.0.0-py3-none-any.whl"]}
    )

    view = project_view(session, dev, "demo-pkg", mirror)

    assert listing(view) == [
        ("demo_pkg-1.0.0-py3-none-any.whl", "admin/dev"),
        ("demo_pkg-2.0.0-py3-none-any.whl", "root/pypi"),
    ]
    assert mirror.calls == [("root/pypi", "demo-pkg")]


@pytest.mark.parametrize("entries", [[], ["demo"], ["demo-pkg2", "other"], ["demo-pkg-*"]])
def test_whitelist_of_other_names_keeps_the_mirror_out(session: Session, entries: list) -> None:
    """Only an exact (normalized) match or "*" opens the mirror; there are no prefixes."""
    dev = index(session, "admin/dev")
    dev.mirror_whitelist = entries
    host(session, dev, "demo-pkg", "demo_pkg-1.0.0-py3-none-any.whl")
    mirror = FakeMirror({"demo-pkg": ["demo_pkg-2.0.0-py3-none-any.whl"]})

    view = project_view(session, dev, "demo-pkg", mirror)

    assert listing(view) == [("demo_pkg-1.0.0-py3-none-any.whl", "admin/dev")]
    assert mirror.calls == []


def test_mirror_index_itself_is_served_from_the_mirror(session: Session) -> None:
    """Asking root/pypi directly goes straight to the mirror source."""
    mirror = FakeMirror({"six": ["six-1.16.0-py2.py3-none-any.whl"]})

    view = project_view(session, index(session, "root/pypi"), "six", mirror)

    assert listing(view) == [("six-1.16.0-py2.py3-none-any.whl", "root/pypi")]


def test_project_names_merge_own_bases_and_cached_mirror_names(session: Session) -> None:
    """Names from every index in order, one per normalized name, sorted case-insensitively."""
    base = stage(session, "base")
    top = stage(session, "top", "admin/base", "root/pypi")
    host(session, top, "Demo.Pkg", "demo_pkg-1.0.0-py3-none-any.whl")
    host(session, base, "demo_pkg", "demo_pkg-2.0.0-py3-none-any.whl")
    host(session, base, "zeta", "zeta-1.0-py3-none-any.whl")
    mirror = FakeMirror({"Alpha": [], "DEMO-PKG": []})

    assert project_names(session, top, mirror) == ["Alpha", "Demo.Pkg", "zeta"]
    assert mirror.calls == [("root/pypi", "+names")]
