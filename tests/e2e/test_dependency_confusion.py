"""A name uploaded to a stage hides the mirror's project of that name, and its upstream."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.builders import make_wheel
from tests.conftest import run_pip
from tests.e2e.helpers import api, publish, simple_json
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.e2e


def test_private_name_is_never_fetched_upstream_until_it_is_whitelisted(
    server_factory: object, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """sharedname 0.0.1 on admin/dev hides upstream's 9.9; mirror_whitelist merges them."""
    server = server_factory(MIRROR_URL=fake_upstream.url)  # type: ignore[operator]
    private = make_wheel("sharedname", "0.0.1")
    publish(server, "admin/dev", tmp_path / "dist", private)
    public_filename, public_data = make_wheel("sharedname", "9.9", summary="attacker's")
    fake_upstream.add_file("sharedname", public_filename, public_data)
    fake_upstream.reset_counts()

    page = simple_json(server, "admin/dev", "sharedname")
    assert page["versions"] == ["0.0.1"]
    assert [f["filename"] for f in page["files"]] == [private[0]]
    status, _headers, html, _reason = server.get("/admin/dev/+simple/sharedname/")
    assert status == 200
    assert public_filename.encode() not in html
    result = run_pip(
        "download",
        "--no-deps",
        "-d",
        str(tmp_path / "pip"),
        "-i",
        f"{server.url}/admin/dev/+simple/",
        "sharedname",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert [p.name for p in (tmp_path / "pip").iterdir()] == [private[0]]
    assert fake_upstream.count("/simple/sharedname") == 0
    assert fake_upstream.count("/files/") == 0

    status, body, reason = api(server, "PATCH", "/admin/dev", {"mirror_whitelist": ["sharedname"]})
    assert (status, reason) == (200, "OK"), body
    assert body["result"]["mirror_whitelist"] == ["sharedname"]

    page = simple_json(server, "admin/dev", "sharedname")
    assert sorted(page["versions"]) == ["0.0.1", "9.9"]
    assert sorted(f["filename"] for f in page["files"]) == sorted([private[0], public_filename])
    assert fake_upstream.count("/simple/sharedname/") >= 1


def test_a_name_the_stage_does_not_hold_still_comes_from_the_mirror(
    server_factory: object, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The rule hides only private names: other projects are mirrored through admin/dev."""
    server = server_factory(MIRROR_URL=fake_upstream.url)  # type: ignore[operator]
    public = make_wheel("publiconly", "1.0")
    fake_upstream.add_file("publiconly", *public)

    result = run_pip(
        "download",
        "--no-deps",
        "-d",
        str(tmp_path),
        "-i",
        f"{server.url}/admin/dev/+simple/",
        "publiconly",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / public[0]).read_bytes() == public[1]
    assert fake_upstream.count("/simple/publiconly/") >= 1
