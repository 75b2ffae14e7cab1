"""Advisories: `pyshelf advisories import FILE` (app/ops/osv_import.py), the version matching and
severity mapping (app/services/advisories.py), and block_vulnerable as an index setting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.data.models import Advisory, AdvisoryAffected
from app.ops.osv_import import cvss3_score, parse_record, rating
from app.services import advisories
from app.services.indexes_config import IndexConfigError, apply_operations, normalize_config
from tests.osv import CRITICAL_VECTOR, MEDIUM_VECTOR, export, fixture_records, record
from tests.test_cli import database, env, prepared, run  # noqa: F401 - fixtures

PREPARED = pytest.mark.usefixtures("prepared")  # a data directory after `pyshelf prepare`

# --- import ------------------------------------------------------------------------------------


def _ids() -> dict[str, str | None]:
    with database() as session:
        return {a.id: a.severity for a in session.scalars(select(Advisory))}


@PREPARED
def test_import_loads_pypi_records_and_counts_what_it_skips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Withdrawn, other-ecosystem and unreadable records are counted and named, not loaded."""
    archive = tmp_path / "osv.zip"
    archive.write_bytes(
        export(
            *fixture_records(),
            extra={"broken.json": b"{not json", "README.txt": b"not a record", "list.json": b"[]"},
        )
    )
    code, out, err = run(capsys, "advisories", "import", str(archive), "--quiet")
    assert code == 0, err
    assert out.strip().startswith(
        "advisories: loaded 3 records (3 affected packages) from osv.zip; skipped 1 withdrawn, "
        "1 without a PyPI package, 2 unreadable: "
    )
    assert "broken.json: not JSON" in out
    assert "list.json: not an OSV record" in out
    assert "Traceback" not in out + err
    # GHSA's label, no severity, and a CVSS v3 vector rated 9.8: critical
    assert _ids() == {"GHSA-vuln-0001": "high", "PYSEC-2026-2": None, "PYSEC-2026-4": "critical"}
    with database() as session:
        names = set(session.scalars(select(AdvisoryAffected.normalized_name)))
    assert names == {"vuln-pkg", "other-pkg"}  # PEP 503 names


@PREPARED
def test_reimport_replaces_the_whole_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second export replaces the first: a record it lacks is gone."""
    first, second = tmp_path / "first.zip", tmp_path / "second.zip"
    first.write_bytes(export(*fixture_records()))
    second.write_bytes(export(record("GHSA-new-0009", "vuln-pkg", versions=["1.0.0"])))
    assert run(capsys, "advisories", "import", str(first), "--quiet")[0] == 0
    code, _out, err = run(capsys, "advisories", "import", str(second), "--quiet")
    assert code == 0, err
    assert _ids() == {"GHSA-new-0009": None}
    with database() as session:
        assert session.scalars(select(AdvisoryAffected.advisory_id)).all() == ["GHSA-new-0009"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a zip file", "is not a zip file"),
        (export(extra={"notes.txt": b"hello"}), "holds no .json file: it is no OSV export"),
        (
            export(record("GHSA-npm-1", "left-pad", versions=["1.0"], ecosystem="npm")),
            "holds no readable OSV record of a PyPI package: the advisories were left as they were",
        ),
        (export(extra={"a.json": b"{}", "b.json": b"nope"}), "holds no readable OSV record"),
    ],
)
@PREPARED
def test_a_file_that_is_no_osv_export_is_refused_and_the_old_set_stays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    """Exit 1 with one clear line; the advisories loaded before are all still there."""
    good, bad = tmp_path / "good.zip", tmp_path / "bad.zip"
    good.write_bytes(export(*fixture_records()))
    bad.write_bytes(content)
    assert run(capsys, "advisories", "import", str(good), "--quiet")[0] == 0
    before = _ids()
    code, _out, err = run(capsys, "advisories", "import", str(bad), "--quiet")
    assert code == 1
    assert message in err
    assert err.startswith("pyshelf: ")
    assert "Traceback" not in err
    assert _ids() == before


@PREPARED
def test_a_missing_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No such file: exit 1 and the path in the message."""
    code, _out, err = run(capsys, "advisories", "import", str(tmp_path / "nope.zip"))
    assert code == 1
    assert "nope.zip: no such file" in err


# --- records and matching ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vector", "score", "severity"),
    [
        (CRITICAL_VECTOR, 9.8, "critical"),
        (MEDIUM_VECTOR, 5.4, "moderate"),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10.0, "critical"),
        ("CVSS:3.0/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:N/A:N", 5.9, "moderate"),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N", 7.5, "high"),
        ("CVSS:3.1/AV:L/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N", 1.8, "low"),
    ],
)
def test_cvss3_vectors_score_as_the_specification_says(
    vector: str, score: float, severity: str
) -> None:
    """CVSS v3.1 base scores (the specification's examples), rated in GHSA's words."""
    assert cvss3_score(vector) == score
    assert rating(score) == severity


def test_the_records_own_label_wins_over_its_vector_and_v4_alone_gives_none() -> None:
    """database_specific.severity (GHSA) first; a CVSS v4 vector alone is not scored."""
    labelled = record("GHSA-x", "p", versions=["1"], label="MODERATE", vector=CRITICAL_VECTOR)
    assert parse_record(json.dumps(labelled).encode())[0]["severity"] == "moderate"  # type: ignore[index]
    v4 = record("GHSA-y", "p", versions=["1"])
    v4["severity"] = [{"type": "CVSS_V4", "score": "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N"}]
    assert parse_record(json.dumps(v4).encode())[0]["severity"] is None  # type: ignore[index]


class _Row:
    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def _project(*entries: dict[str, Any]) -> advisories.ProjectAdvisories:
    rows = []
    for raw in entries:
        parsed = parse_record(json.dumps(raw).encode())
        assert parsed is not None
        advisory, affected, _withdrawn = parsed
        rows.append((_Row(**affected[0]), _Row(**advisory)))
    return advisories.ProjectAdvisories(rows)  # type: ignore[arg-type]


def test_ranges_and_version_lists_match_as_osv_defines_them() -> None:
    """introduced..fixed excludes the fix, introduced..last_affected includes it, several
    intervals in one range, listed versions compare as PEP 440 versions."""
    known = _project(
        record("A", "p", events=[{"introduced": "1.0"}, {"fixed": "1.2"}]),
        record("B", "p", events=[{"introduced": "2.0"}, {"last_affected": "2.1"}]),
        record(
            "C",
            "p",
            events=[
                {"fixed": "3.1"},
                {"introduced": "3.0"},  # events out of order: sorted by version
                {"introduced": "4.0"},
            ],
        ),
        record("D", "p", versions=["0.9.0"]),
    )
    hits = {
        v: [f.id for f in known.affecting(v)]
        for v in (
            "0.9",
            "1.0",
            "1.1.5",
            "1.2",
            "2.1",
            "2.1.1",
            "3.0.0",
            "3.1",
            "4.0",
            "9.0",
            "junk",
        )
    }
    assert hits == {
        "0.9": ["D"],
        "1.0": ["A"],
        "1.1.5": ["A"],
        "1.2": [],
        "2.1": ["B"],
        "2.1.1": [],
        "3.0.0": ["C"],
        "3.1": [],
        "4.0": ["C"],
        "9.0": ["C"],
        "junk": [],
    }
    assert known.affecting("1.0")[0].fixed == ["1.2"]


@pytest.mark.parametrize(
    ("threshold", "refused"),
    [
        (None, []),
        ("all", ["GHSA-vuln-0001", "PYSEC-2026-2"]),
        ("low", ["GHSA-vuln-0001"]),
        ("high", ["GHSA-vuln-0001"]),
        ("critical", []),
    ],
)
def test_a_threshold_refuses_advisories_of_that_severity_or_worse(
    threshold: str | None, refused: list[str]
) -> None:
    """`all` refuses advisories without a severity too; a severity refuses only rated ones."""
    records = fixture_records()[:2]
    known = _project(*records)
    assert [f.id for f in known.refusing("1.1.0", threshold)] == refused


# --- the setting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stored"),
    [("high", "high"), ("ALL", "all"), ("", None), ("off", None), (None, None), (" Low ", "low")],
)
def test_block_vulnerable_takes_off_all_or_a_severity(value: Any, stored: str | None) -> None:
    """The JSON API's and key=value spellings."""
    assert normalize_config({"block_vulnerable": value}) == {"block_vulnerable": stored}


@pytest.mark.parametrize("value", ["medium-ish", "9", 3, ["high"]])
def test_block_vulnerable_refuses_anything_else_with_the_choices(value: Any) -> None:
    """A clear message that lists what it takes."""
    with pytest.raises(IndexConfigError, match="block_vulnerable must be"):
        normalize_config({"block_vulnerable": value})


def test_devpi_operations_set_and_reset_block_vulnerable() -> None:
    """`devpi index NAME block_vulnerable=high`, and `block_vulnerable-=` back to off."""
    config = apply_operations({"block_vulnerable": None}, ["block_vulnerable=high"])
    assert normalize_config(config)["block_vulnerable"] == "high"
    assert apply_operations(config, ["block_vulnerable-="])["block_vulnerable"] is None


def test_block_vulnerable_seeds_root_pypi_at_every_start_and_empty_leaves_it(settings):
    """BLOCK_VULNERABLE sets root/pypi's block_vulnerable at the first start and at later ones;
    `off` turns it off; empty (the default) leaves what the index has; a bad value is a start
    problem that names the choices."""
    import os

    from app.core.config import ConfigError, Settings
    from app.data.db import Database
    from app.ops.prepare import bootstrap, migrate
    from app.services.indexes import get_index

    def start(value: str | None) -> str | None:
        object.__setattr__(settings, "block_vulnerable", value)
        database = Database(settings.database_url)
        try:
            with database.session() as session, open(os.devnull, "w") as out:
                bootstrap(session, settings, out=out)
                return get_index(session, "root", "pypi").block_vulnerable
        finally:
            database.engine.dispose()

    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings)
    assert start("high") == "high"
    assert start(None) == "high"
    assert start("critical") == "critical"
    assert start("off") is None
    assert start(None) is None
    with pytest.raises(ConfigError, match="use off, all, low, moderate, high or critical"):
        Settings.from_env({"BLOCK_VULNERABLE": "severe", "DATA_DIR": str(settings.data_dir)})
