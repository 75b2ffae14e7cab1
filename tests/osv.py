"""OSV records and exports (zips of OSV JSON records) that the advisory tests build."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

CRITICAL_VECTOR = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"  # 9.8: critical
MEDIUM_VECTOR = "CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:U/C:L/I:L/A:N"  # 5.4: medium = moderate


def record(
    osv_id: str,
    name: str,
    *,
    events: list[dict[str, str]] | None = None,
    versions: list[str] | None = None,
    label: str | None = None,
    vector: str | None = None,
    withdrawn: bool = False,
    summary: str | None = None,
    aliases: list[str] | None = None,
    ecosystem: str = "PyPI",
) -> dict[str, Any]:
    """One OSV record of one package, shaped as the OSV project publishes them."""
    affected: dict[str, Any] = {"package": {"ecosystem": ecosystem, "name": name}}
    if events is not None:
        affected["ranges"] = [{"type": "ECOSYSTEM", "events": events}]
    if versions is not None:
        affected["versions"] = versions
    entry: dict[str, Any] = {
        "schema_version": "1.6.0",
        "id": osv_id,
        "modified": "2026-11-30T10:00:00Z",
        "published": "2026-11-01T10:00:00Z",
        "aliases": aliases or [],
        "summary": summary or f"{osv_id} in {name}",
        "details": "Details of the flaw.",
        "affected": [affected],
        "references": [{"type": "ADVISORY", "url": f"https://advisories.example/{osv_id}"}],
    }
    if label:
        entry["database_specific"] = {"severity": label}
    if vector:
        entry["severity"] = [{"type": "CVSS_V3", "score": vector}]
    if withdrawn:
        entry["withdrawn"] = "2026-11-20T00:00:00Z"
    return entry


def export(*records: dict[str, Any], extra: dict[str, bytes] | None = None) -> bytes:
    """A zip with one `ID.json` per record (and `extra` members as given)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for each in records:
            archive.writestr(f"{each['id']}.json", json.dumps(each))
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def fixture_records() -> list[dict[str, Any]]:
    """The advisories the tests load: a range (high), a versions list (no severity), a
    withdrawn one, one rated by its CVSS vector (critical), and one of another ecosystem."""
    return [
        record(
            "GHSA-vuln-0001",
            "Vuln_Pkg",  # normalized to vuln-pkg (PEP 503)
            events=[{"introduced": "0"}, {"fixed": "2.0.0"}],
            label="HIGH",
            summary="Remote code execution in vuln-pkg",
            aliases=["CVE-2026-0001"],
        ),
        record("PYSEC-2026-2", "vuln-pkg", versions=["1.1.0"]),
        record(
            "GHSA-gone-0003", "vuln-pkg", events=[{"introduced": "0"}], withdrawn=True, label="LOW"
        ),
        record(
            "PYSEC-2026-4",
            "other-pkg",
            events=[{"introduced": "1.0"}, {"last_affected": "1.5"}],
            vector=CRITICAL_VECTOR,
        ),
        record("GHSA-npm-0005", "left-pad", events=[{"introduced": "0"}], ecosystem="npm"),
    ]
