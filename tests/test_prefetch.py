"""prefetch: reading requirements files, target environments, resolving (app/ops/resolve.py) and
fetching through the mirror (app/ops/prefetch.py), against the fake upstream."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from app import cli
from app.core.progress import Progress
from app.data.models import MirrorHolding
from app.ops.prefetch import MirrorSource, fetch, format_summary
from app.ops.requirements import RequirementsError, parse_line, read_requirements
from app.ops.resolve import plan
from app.ops.targets import TargetError, parse_targets, platform_tags
from tests.builders import make_sdist, make_wheel
from tests.fake_upstream import FakeUpstream
from tests.operations import make_app, mirrored, publish_upstream, sha256, wheel_metadata
from tests.resolve_tree import REQUIREMENTS, needed, publish_tree

NATIVE = "manylinux_2_17_x86_64"
TARGETS = ("3.11,3.12", "manylinux_2_28_x86_64,win_amd64")


def write_requirements(tmp_path: Path, tree_files: dict[str, bytes]) -> Path:
    """REQUIREMENTS and its base.txt, which pins tiny with its --hash."""
    tiny = sha256(tree_files["tiny-1.0-py3-none-any.whl"])
    (tmp_path / "base.txt").write_text(f"tiny==1.0 --hash=sha256:{tiny}\n")
    path = tmp_path / "requirements.txt"
    path.write_text(REQUIREMENTS)
    return path


def fetched_files(upstream: FakeUpstream) -> set[str]:
    """The distribution files the upstream was asked for (not sidecars), by filename."""
    paths = [path for path in upstream.requests if path.startswith("/files/")]
    return {path.rsplit("/", 1)[1] for path in paths if not path.endswith(".metadata")}


# --- requirements files ----------------------------------------------------------------------


def test_requirements_files_are_read_as_pip_reads_them(tmp_path: Path):
    """Comments, continuations, nested -r, index options, --pre, per-line --hash, markers."""
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "base.txt").write_text("six==1.16.0\n")
    path = tmp_path / "requirements.txt"
    digest = "A" * 64
    path.write_text(
        "# a comment\n"
        "-r nested/base.txt\n"
        "--index-url https://pkgs.example/simple/\n"
        "--pre\n"
        f"requests[socks]>=2.0 \\\n    --hash=sha256:{digest}  # pinned by hash\n"
        "attrs; python_version < '3.8'\n"
    )

    found = read_requirements(path)

    assert [str(line.requirement) for line in found.lines] == [
        "six==1.16.0", "requests[socks]>=2.0", 'attrs; python_version < "3.8"',
    ]  # fmt: skip
    assert found.lines[1].hashes == {"a" * 64}
    assert found.lines[1].where == f"{path}:5"
    assert found.pre


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("-e .", "-e . is an editable install from a path or VCS"),
        ("-e git+https://pkgs.example/x.git#egg=x", "is an editable install"),
        ("git+https://pkgs.example/x.git", "is a URL or a path, not a project on an index"),
        ("https://pkgs.example/x-1.0.whl", "is a URL or a path"),
        ("./local/pkg", "is a URL or a path"),
        ("pkg @ https://pkgs.example/pkg-1.0.whl", "is a direct URL, not a project on an index"),
        ("-c constraints.txt", "option -c is not supported by prefetch"),
        ("--only-binary :all:", "option --only-binary is not supported"),
        ("pkg==1.0 --hash=md5:abc", "only sha256:<64 hex digits> can be checked"),
        ("pkg==1.0 --install-option=x", "option --install-option is not supported after"),
        ("pkg===", "not a requirement"),
        ("-r missing.txt", "cannot read"),
    ],
)
def test_requirements_prefetch_cannot_resolve_are_refused_with_the_line(tmp_path, line, message):
    """Editables, URLs, VCS, unknown options and bad hashes: an error naming file and line."""
    path = tmp_path / "requirements.txt"
    path.write_text(f"ok==1.0\n{line}\n")

    with pytest.raises(RequirementsError) as caught:
        read_requirements(path)

    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_an_include_loop_is_refused_not_followed_forever(tmp_path: Path):
    """a.txt includes b.txt includes a.txt: bounded, with a clear error."""
    (tmp_path / "a.txt").write_text("-r b.txt\n")
    (tmp_path / "b.txt").write_text("-r a.txt\n")

    with pytest.raises(RequirementsError, match="nested more than 10 deep"):
        read_requirements(tmp_path / "a.txt")


# --- targets -----------------------------------------------------------------------------------


def test_targets_are_each_python_on_each_platform_with_their_markers():
    """--python-version 3.11,3.12 --platform A,B: four targets; markers follow the platform."""
    targets = parse_targets(*TARGETS)

    assert [t.name for t in targets] == [
        "cp311-manylinux_2_28_x86_64", "cp311-win_amd64",
        "cp312-manylinux_2_28_x86_64", "cp312-win_amd64",
    ]  # fmt: skip
    linux, windows = targets[0], targets[1]
    assert (linux.environment["sys_platform"], windows.environment["sys_platform"]) == (
        "linux", "win32",
    )  # fmt: skip
    assert targets[2].environment["python_version"] == "3.12"
    # a glibc 2.28 machine takes older manylinux wheels (PEP 600), best first
    assert linux.tag_rank(frozenset(parse_wheel_tags("mid-1-cp311-cp311-manylinux_2_17_x86_64")))
    assert (
        linux.tag_rank(frozenset(parse_wheel_tags("x-1-cp311-cp311-manylinux_2_31_x86_64"))) is None
    )
    assert windows.tag_rank(frozenset(parse_wheel_tags("x-1-py3-none-any"))) is not None
    assert "manylinux2014_x86_64" in platform_tags("manylinux_2_28_x86_64")


def parse_wheel_tags(stem: str):
    from packaging.utils import parse_wheel_filename

    return parse_wheel_filename(stem + ".whl")[3]


@pytest.mark.parametrize(
    ("versions", "platforms", "implementation", "message"),
    [
        ("3.x", "win_amd64", "cp", "--python-version '3.x': expected a version such as 3.12"),
        ("3.12", "solaris", "cp", "--platform 'solaris': expected a wheel platform tag"),
        ("3.12", "win_amd64", "pp", "--implementation 'pp' is not supported"),
        ("3.12", "manylinux_3_1_x86_64", "cp", "only glibc 2.x manylinux tags exist"),
    ],
)
def test_targets_prefetch_cannot_compute_are_refused(versions, platforms, implementation, message):
    """A clear error instead of a target that would match nothing."""
    with pytest.raises(TargetError) as caught:
        parse_targets(versions, platforms, implementation)

    assert message in str(caught.value)


# --- resolving and fetching through the mirror --------------------------------------------------


def test_prefetch_resolves_the_tree_per_target_and_fetches_exactly_what_installs_need(
    settings, fake_upstream, tmp_path
):
    """Two levels and more, extras, markers that differ per Python and platform, sidecars on
    some files only, a yanked newest release, an sdist with static metadata: each needed file
    is fetched once, nothing else is."""
    tree = publish_tree(fake_upstream, NATIVE)
    requirements = read_requirements(write_requirements(tmp_path, tree.files))
    app = make_app(mirrored(settings, fake_upstream))
    storage = app.extensions["pyshelf.storage"]

    summary = prefetch_with(app, requirements)

    assert summary.misses == []
    chosen = summary.plan.chosen
    common = {"top": "1.0", "mid": "1.1", "tiny": "1.0", "fancy": "1.0"}
    assert chosen["cp311-win_amd64"] == {**common, "leaf": "2.0", "winonly": "1.0"}
    assert chosen["cp311-manylinux_2_28_x86_64"] == {**common, "leaf": "2.0"}
    assert chosen["cp312-manylinux_2_28_x86_64"] == {**common, "leaf": "2.1", "newpy": "1.0"}
    wanted = needed(NATIVE)
    assert {f.filename for f in summary.plan.files} == wanted
    assert fetched_files(fake_upstream) == wanted
    assert all(count == 1 for path, count in fake_upstream.requests.items() if "/files/" in path)
    assert all(storage.exists(sha256(tree.files[name])) for name in wanted)
    assert summary.files == len(wanted)
    assert summary.bytes == sum(len(tree.files[name]) for name in wanted)
    sidecars = {n for n in wanted if n in tree.sidecars}
    assert summary.sidecars == len(sidecars)
    assert all(storage.exists(sha256(wheel_metadata(tree.files[n]))) for n in sidecars)

    fake_upstream.reset_counts()
    again = prefetch_with(app, requirements)

    assert (again.files, again.already_cached, again.misses) == (0, len(wanted), [])
    assert fake_upstream.count("/files/") == 0


def prefetch_with(app, requirements, versions="3.11,3.12", platforms=TARGETS[1]):
    """Plan and fetch through `app`'s root/pypi (the steps of prefetch(), on a test's app)."""
    source = MirrorSource(app.extensions["pyshelf.mirror"], "root/pypi")
    targets = parse_targets(versions, platforms)
    return fetch(source, plan(requirements, targets, source), progress=False)


def test_a_missing_dependency_is_a_miss_naming_it_and_who_needs_it(settings, fake_upstream):
    """A Requires-Dist on a project the upstream does not have: the miss names both."""
    publish_upstream(fake_upstream, "needsghost", requires_dist=["ghost>=1"])
    publish_upstream(fake_upstream, "fine")
    app = make_app(mirrored(settings, fake_upstream))

    summary = prefetch_with(app, requirements_of("needsghost", "fine"))

    assert [m.project for m in summary.misses] == ["ghost"]  # the same for every target
    assert "required by needsghost 1.0.0" in summary.misses[0].reason
    assert "404" in summary.misses[0].reason
    assert "missing: ghost" in format_summary(summary)
    assert summary.plan.projects == {"needsghost": ["1.0.0"], "fine": ["1.0.0"]}
    assert summary.files == 2  # the rest is fetched all the same


def requirements_of(*lines: str):
    from app.ops.requirements import Requirements

    return Requirements([parse_line(line) for line in lines])


def test_an_sdist_without_static_metadata_is_a_miss_not_a_build(settings, fake_upstream):
    """PKG-INFO 2.1 (or Dynamic: Requires-Dist) cannot name dependencies: a miss, the sdist
    still fetched; 2.2 with static Requires-Dist resolves (the tree test)."""
    fake_upstream.add_file("old", *make_sdist("old", "1.0", requires_dist=["x"]))
    dynamic = make_sdist(
        "dyn", "1.0", metadata_version="2.2", extra_metadata="Dynamic: Requires-Dist"
    )
    fake_upstream.add_file("dyn", *dynamic)
    app = make_app(mirrored(settings, fake_upstream))

    summary = prefetch_with(app, requirements_of("old", "dyn"), "3.11", NATIVE)

    reasons = sorted(m.reason for m in summary.misses)
    assert len(reasons) == 2
    assert all("Metadata-Version 2.2+ with static Requires-Dist" in r for r in reasons)
    assert summary.files == 2  # both sdists are in the cache all the same


def test_yanked_files_are_skipped_unless_pinned_with_equals(settings, fake_upstream):
    """PEP 592: `y` takes 1.0 over a yanked 2.0; `y==2.0` takes the yanked one."""
    publish_upstream(fake_upstream, "y", "1.0")
    filename, data = make_wheel("y", "2.0")
    fake_upstream.add_file("y", filename, data, yanked="broken")
    app = make_app(mirrored(settings, fake_upstream))

    loose = prefetch_with(app, requirements_of("y"), "3.11", NATIVE)
    pinned = prefetch_with(app, requirements_of("y==2.0"), "3.11", NATIVE)

    assert loose.plan.projects == {"y": ["1.0"]}
    assert pinned.plan.projects == {"y": ["2.0"]}
    assert pinned.misses == []


def test_pre_releases_count_as_pip_counts_them(settings, fake_upstream):
    """Only when asked for by --pre or by a specifier that names one."""
    publish_upstream(fake_upstream, "pr", "1.0")
    publish_upstream(fake_upstream, "pr", "2.0b1")
    app = make_app(mirrored(settings, fake_upstream))

    final = prefetch_with(app, requirements_of("pr"), "3.11", NATIVE)
    named = prefetch_with(app, requirements_of("pr>=2.0b1"), "3.11", NATIVE)
    pre = requirements_of("pr")
    pre.pre = True
    flagged = prefetch_with(app, pre, "3.11", NATIVE)

    assert final.plan.projects == {"pr": ["1.0"]}
    assert named.plan.projects == flagged.plan.projects == {"pr": ["2.0b1"]}


def test_requires_python_and_hashes_choose_among_versions(settings, fake_upstream):
    """A release for newer Pythons only is skipped on 3.11; --hash picks the file it names."""
    publish_upstream(fake_upstream, "rp", "1.0")
    newer, data = make_wheel("rp", "2.0")
    fake_upstream.add_file("rp", newer, data, requires_python=">=3.12")
    old = publish_upstream(fake_upstream, "h", "1.0")
    publish_upstream(fake_upstream, "h", "2.0")
    app = make_app(mirrored(settings, fake_upstream))

    summary = prefetch_with(
        app, requirements_of("rp", f"h --hash=sha256:{sha256(old[1])}"), "3.11,3.12", NATIVE
    )

    assert summary.plan.chosen[f"cp311-{NATIVE}"] == {"rp": "1.0", "h": "1.0"}
    assert summary.plan.chosen[f"cp312-{NATIVE}"] == {"rp": "2.0", "h": "1.0"}


def test_a_conflict_is_reported_not_raised(settings, fake_upstream):
    """a needs c<2, b needs c>=2: a miss per target naming c, no traceback."""
    publish_upstream(fake_upstream, "a", requires_dist=["c<2"])
    publish_upstream(fake_upstream, "b", requires_dist=["c>=2"])
    publish_upstream(fake_upstream, "c", "1.0")
    publish_upstream(fake_upstream, "c", "2.0")
    app = make_app(mirrored(settings, fake_upstream))

    summary = prefetch_with(app, requirements_of("a", "b"), "3.11", NATIVE)

    assert {m.project for m in summary.misses} == {"c"}
    reasons = " | ".join(m.reason for m in summary.misses)
    assert f"c<2 (required by a 1.0.0): no version of c fits cp311-{NATIVE}" in reasons
    assert "c>=2 (required by b 1.0.0)" in reasons
    assert summary.plan.files == []


def test_an_extra_the_project_does_not_declare_is_ignored_as_pip_ignores_it(
    settings, fake_upstream
):
    """`p[web]` where p has no `Provides-Extra: web`: pip drops the extra, so does prefetch."""
    publish_upstream(fake_upstream, "p", requires_dist=["fancy; extra == 'web'"])
    publish_upstream(fake_upstream, "q", requires_dist=["fancy; extra == 'web'"],
                     extra_metadata="Provides-Extra: web")  # fmt: skip
    publish_upstream(fake_upstream, "fancy")
    app = make_app(mirrored(settings, fake_upstream))

    undeclared = prefetch_with(app, requirements_of("p[web]"), "3.11", NATIVE)
    declared = prefetch_with(app, requirements_of("q[web]"), "3.11", NATIVE)

    assert set(undeclared.plan.projects) == {"p"}
    assert set(declared.plan.projects) == {"q", "fancy"}


def test_prefetch_fetches_bytes_another_index_stored_for_the_mirror_itself(settings, fake_upstream):
    """The same bytes stored for someone else (a private upload, say) are not this mirror's
    cache: prefetch downloads them through the mirror, which then holds them."""
    filename, data = make_wheel("shared", "1.0")
    fake_upstream.add_file("shared", filename, data)
    app = make_app(mirrored(settings, fake_upstream))
    storage = app.extensions["pyshelf.storage"]
    storage.save(sha256(data), io.BytesIO(data))  # stored, but not fetched by root/pypi

    summary = prefetch_with(app, requirements_of("shared==1.0"), "3.11", NATIVE)

    assert (summary.files, summary.already_cached, summary.misses) == (1, 0, [])
    with app.extensions["pyshelf.db"].session() as session:
        held = session.scalars(select(MirrorHolding.sha256)).all()
    assert sha256(data) in held


def test_progress_counts_files_and_bytes_against_a_known_total(settings, fake_upstream):
    """The bar's total is the planned bytes (a plain upstream's unknown sizes join it as each
    download starts), never '101.0 KiB/0 B'."""
    fake_upstream.html_only = True  # PEP 503: no sizes on the pages
    files = [publish_upstream(fake_upstream, name) for name in ("p1", "p2")]
    app = make_app(mirrored(settings, fake_upstream))
    source = MirrorSource(app.extensions["pyshelf.mirror"], "root/pypi")
    planned = plan(requirements_of("p1", "p2"), parse_targets("3.11", NATIVE), source)
    stream = io.StringIO()
    bars: list[Progress] = []

    def tracked(label, total, **kw):
        bar = Progress(label, total, stream=stream, is_tty=True, **kw)
        bars.append(bar)
        return bar

    import app.ops.prefetch as module

    original = module.Progress
    module.Progress = tracked  # type: ignore[misc]
    try:
        fetch(source, planned)
    finally:
        module.Progress = original  # type: ignore[misc]

    (bar,) = bars
    size = sum(len(data) for _name, data in files)
    assert (bar.files_done, bar.files) == (2, 2)
    assert bar.done == bar.total == size
    assert "2/2 files" in stream.getvalue()


def test_the_command_exits_non_zero_on_a_miss_and_zero_when_complete(
    settings, fake_upstream, tmp_path, monkeypatch, capsys
):
    """`pyshelf prefetch` prints the chosen versions and misses; any miss exits 1."""
    publish_upstream(fake_upstream, "needsghost", requires_dist=["ghost>=1"])
    publish_upstream(fake_upstream, "fine")
    make_app(mirrored(settings, fake_upstream))
    for key, value in {"DATA_DIR": str(settings.data_dir), "MIRROR_URL": fake_upstream.url,
                       "ENV_FILE": os.devnull}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    target = ["--python-version", "3.11", "--platform", NATIVE]

    assert cli.main(["prefetch", "needsghost", *target]) == 1
    out, err = capsys.readouterr()
    assert "missing: ghost: ghost (required by needsghost 1.0.0)" in out
    assert "could not be fetched" in err
    assert cli.main(["prefetch", "fine", *target]) == 0
    assert "fine 1.0.0" in capsys.readouterr().out
    assert cli.main(["prefetch", "fine", "--platform", "solaris"]) == 1
    assert "--platform 'solaris'" in capsys.readouterr().err
