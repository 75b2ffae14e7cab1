"""The supply-chain guard's decisions (app/services/guard.py), without a server."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest

from app.services import guard
from app.services.guard import FileFacts
from app.services.status import QUARANTINED, Marker

NOW = dt.datetime(2026, 12, 7, 12, 0, 0)


def index(path: str, *, is_mirror: bool = True, min_age: int = 0, exempt=(), blocked=()) -> object:
    """An Index stand-in with the guard's settings."""
    return SimpleNamespace(
        path=path,
        is_mirror=is_mirror,
        mirror_min_age=min_age,
        mirror_min_age_exempt=[{"spec": s} for s in exempt],
        blocked=[{"spec": s, "reason": r} for s, r in blocked],
        blocked_digest=guard.rules_digest({"spec": s, "reason": r} for s, r in blocked),
    )


def facts(version: str, *, age: dt.timedelta | None = None, where: str = "root/pypi") -> FileFacts:
    """A wheel of project `demo` at `version`, `age` old (None: old as a first fetch's)."""
    return FileFacts(
        f"demo-{version}-py3-none-any.whl", version, where, None if age is None else NOW - age
    )


@pytest.mark.parametrize(
    ("spec", "version", "matches"),
    [
        ("demo", "1.0", True),
        ("Demo", "9.9", True),  # names compare normalized (PEP 503)
        ("demo==1.2.3", "1.2.3", True),
        ("demo==1.2.3", "1.2.4", False),
        ("demo>=2,<2.1", "2.0.5", True),
        ("demo>=2,<2.1", "2.1", False),
        ("demo>=2", "2.1rc1", True),  # a rule matches pre-releases too
        ("*", "0.1", True),
        ("*>=9", "8", False),
        ("*>=9", "9.1", True),
        ("other", "1.0", False),
    ],
)
def test_block_rules_match_by_name_and_versions(spec, version, matches):
    """A rule blocks the versions its PEP 508 specifiers name, of its project (or every one)."""
    checks = guard.guard_for([index("root/pypi", blocked=[(spec, "why")])], ())
    verdict = checks.verdict("demo", facts(version), NOW)
    assert (verdict is not None) == matches
    if matches:
        assert verdict.kind == guard.BLOCKED
        assert (
            verdict.reason
            == f"demo-{version}-py3-none-any.whl is blocked by root/pypi ({spec}): why"
        )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("demo[extra]", "a rule takes a name and versions only"),
        ("demo; python_version<'3'", "a rule takes a name and versions only"),
        ("not a spec!", "is not a rule: write name, name==1.2.3"),
        ("", "is not a rule"),
    ],
)
def test_bad_rules_are_refused_with_what_to_write(text, message):
    """Extras, markers and nonsense are refused, naming the forms a rule takes."""
    with pytest.raises(guard.GuardError, match=message.replace("[", r"\[")):
        guard.parse_spec(text)


def test_the_cooldown_holds_back_young_mirror_files_until_they_are_old_enough():
    """A file an hour old under a 3d cooldown is held back until upload + 3d; older ones and
    files of unknown age (first fetch) are served; an exemption lets one version through."""
    mirror = index("root/pypi", min_age=3 * 86_400, exempt=["demo==2.0"])
    checks = guard.guard_for([mirror], ())
    young = facts("1.1", age=dt.timedelta(hours=1))
    verdict = checks.verdict("demo", young, NOW)
    assert verdict is not None
    assert verdict.kind == guard.COOLDOWN
    assert verdict.available_at == NOW - dt.timedelta(hours=1) + dt.timedelta(days=3)
    assert verdict.reason == (
        "demo-1.1-py3-none-any.whl is held back until 2026-12-10T11:00:00Z: root/pypi serves "
        "files once they are 3d old (mirror_min_age)"
    )
    assert checks.verdict("demo", facts("1.0", age=dt.timedelta(days=3)), NOW) is None
    assert checks.verdict("demo", facts("1.0"), NOW) is None
    assert checks.verdict("demo", facts("2.0", age=dt.timedelta(minutes=1)), NOW) is None
    served, withheld = checks.split("demo", [young, facts("1.0")], NOW)
    assert [d.version for d in served] == ["1.0"]
    assert guard.next_change_at(withheld) == verdict.available_at


def test_uploads_to_a_stage_are_never_held_back():
    """The cooldown is the mirror's, for the mirror's files: a stage's own file is served."""
    stage = index("admin/dev", is_mirror=False)
    checks = guard.guard_for([stage, index("root/pypi", min_age=86_400)], ())
    assert checks.verdict("demo", facts("1.0", age=dt.timedelta(0), where="admin/dev"), NOW) is None
    assert checks.verdict("demo", facts("1.0", age=dt.timedelta(0)), NOW) is not None


def test_a_base_and_the_server_rules_apply_through_a_stage():
    """A stage's view is guarded by its bases' rules and the server's, which it cannot lift."""
    stage = index("admin/dev", is_mirror=False)
    mirror = index("root/pypi", blocked=[("demo==1.0", "bad")])
    checks = guard.guard_for([stage, mirror], (("this server", (("demo==2.0", "worse"),)),))
    assert checks.verdict("demo", facts("1.0"), NOW).reason.endswith(
        "by root/pypi (demo==1.0): bad"
    )
    assert checks.verdict("demo", facts("2.0"), NOW).reason.endswith(
        "by this server (demo==2.0): worse"
    )
    assert checks.verdict("demo", facts("3.0"), NOW) is None


def test_no_rules_means_no_checks():
    """Defaults keep today's behaviour: an index without rules has an empty guard."""
    assert (
        guard.guard_for([index("root/pypi"), index("a/b", is_mirror=False)], ()) is guard.NO_GUARD
    )


@pytest.mark.parametrize(
    ("value", "seconds"), [("3d", 259_200), ("12h", 43_200), ("0", 0), (90, 90), ("", 0)]
)
def test_durations(value, seconds):
    """mirror_min_age takes 3d, 12h, seconds or 0, and shows the largest whole unit."""
    assert guard.parse_min_age(value) == seconds
    assert guard.parse_min_age(guard.format_duration(seconds)) == seconds


def test_unchanged_records_keep_who_and_when():
    """Re-saving the rules keeps who added each one; a new rule is recorded as the caller's."""
    old = [{"spec": "a", "reason": "x", "by": "alice", "at": "2026-01-01T00:00:00Z"}]
    records = guard.merge_records(old, [("a", "x"), ("b", "y")], "admin")
    assert records[0] == old[0]
    assert (records[1]["spec"], records[1]["by"]) == ("b", "admin")


def test_mirror_min_age_seeds_root_pypi_and_zero_never_lifts_it(settings):
    """MIRROR_MIN_AGE sets root/pypi's cooldown at the first start and at later ones; its
    default, 0, leaves a cooldown set on the index alone."""
    import os

    from app.data.db import Database
    from app.ops.prepare import bootstrap, migrate
    from app.services.indexes import get_index

    def start(seconds: int) -> int:
        object.__setattr__(settings, "mirror_min_age_seconds", seconds)
        database = Database(settings.database_url)
        try:
            with database.session() as session, open(os.devnull, "w") as out:
                bootstrap(session, settings, out=out)
                return get_index(session, "root", "pypi").mirror_min_age
        finally:
            database.engine.dispose()

    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings)
    assert start(3600) == 3600
    assert start(3 * 86_400) == 3 * 86_400
    assert start(0) == 3 * 86_400


def test_a_quarantine_refuses_every_file_first_on_pages_and_last_at_file_urls():
    """PEP 792's quarantine is one of the guard's rules: a page holds back all of a quarantined
    project's files, while a file URL names a block rule before the quarantine."""
    marker = Marker(QUARANTINED, "under review", "root/pypi")
    order = [index("root/pypi", blocked=[("demo==2.0", "worse")])]

    page = guard.guard_for(order, (), marker=marker)
    assert page.verdict("demo", facts("1.0"), NOW) == guard.Verdict(
        QUARANTINED, "Project demo is quarantined on root/pypi (PEP 792): under review"
    )
    assert page.verdict("demo", facts("2.0"), NOW).kind == QUARANTINED
    at_url = guard.guard_for(order, (), marker=marker, precedence=guard.FILE)
    assert at_url.verdict("demo", facts("1.0"), NOW).kind == QUARANTINED
    assert at_url.verdict("demo", facts("2.0"), NOW).kind == guard.BLOCKED
    active = Marker("deprecated", None, "root/pypi")
    assert guard.guard_for([index("root/pypi")], (), marker=active) is guard.NO_GUARD
