"""Search over a mirror of a plain PEP 503 upstream (issue #19 with #23): once the mirror caches a
wheel, the summary and README inside it are found, on that mirror only, and for readers of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text

from tests import pgserver
from tests.builders import make_wheel
from tests.conftest import LiveServer, basic_auth
from tests.e2e.helpers import ADMIN, api, cli, raw_upload, settles_to
from tests.e2e.test_mirror import JSON as SIMPLE_JSON
from tests.e2e.test_mirror import add_wheel, file_entry, page, pip_install, start_mirror
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": basic_auth(*ADMIN)}
JSON = {"Accept": "application/json"}
WORD = "quetzalmarmot"  # only in the wheel's README
README = f"# Plain app\n\nReconciles the **{WORD}** ledgers of every branch.\n"
SUMMARY = "Hyperborean ledger tools"


def found(server: LiveServer, query: str, headers: dict[str, str] | None = None) -> list[str]:
    """kind:index/name of each hit of /+search?q=QUERY as JSON; asserts a 200."""
    status, _headers, body, reason = server.get(
        f"/+search?q={quote(query)}", headers={**JSON, **(headers or {})}
    )
    assert (status, reason) == (200, "OK"), body
    return [f"{h['kind']}:{h['index']}/{h['name']}" for h in json.loads(body)["hits"]]


def refetch(server: LiveServer, index: str, headers: dict[str, str] | None = None) -> None:
    """Mark the mirror's page of plain-app stale and fetch it again (the page is stored anew)."""
    done = cli(server.data_dir, "refresh", index, "plain-app", **server.env)
    assert done.returncode == 0, done.stderr
    status, _headers, _body, _reason = server.get(
        f"/{index}/+simple/plain-app/", headers={**SIMPLE_JSON, **(headers or {})}
    )
    assert status == 200


def test_a_cached_wheels_description_is_found_on_the_mirror_that_holds_it_only(
    server_factory: Any, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Attacks: a second mirror of the same upstream that never cached the wheel must not
    return its README's words (the blob store is shared), nor may a private mirror's cached
    description reach an anonymous search; the hit survives a page refetch and `reindex`."""
    fake_upstream.html_only = True  # PEP 503 HTML: no sizes, no PEP 658 sidecars
    wheel, _data = add_wheel(
        fake_upstream,
        "plain-app",
        "2.0.0",
        with_metadata=False,
        summary=SUMMARY,
        description=README,
        description_content_type="text/markdown",
    )
    server = start_mirror(server_factory, fake_upstream)
    mirror = {"type": "mirror", "mirror_url": fake_upstream.url, "acl_read": ["admin"]}
    status, body, _reason = api(server, "PUT", "/admin/m2", mirror)
    assert status == 201, body
    assert page(server, "root/pypi", "plain-app")[0] == 200
    refetch(server, "admin/m2", AUTH)
    settles_to(
        lambda: set(found(server, "plain-app", AUTH)),
        {"mirror:root/pypi/plain-app", "mirror:admin/m2/plain-app"},
    )

    # Nothing cached yet: the pages hold names only.
    assert found(server, WORD, AUTH) == []
    assert found(server, "hyperborean", AUTH) == []

    pip_install(server, "root/pypi", tmp_path / "target", "plain-app")

    settles_to(lambda: found(server, WORD, AUTH), ["mirror:root/pypi/plain-app"])
    assert found(server, WORD) == ["mirror:root/pypi/plain-app"]
    assert found(server, "summary:hyperborean", AUTH) == ["mirror:root/pypi/plain-app"]
    assert found(server, f"{WORD} index:admin/m2", AUTH) == []

    # Both pages stored anew (upstream has a newer version, not cached): root/pypi's newest
    # version with a cached file still describes it; admin/m2 still holds nothing.
    add_wheel(fake_upstream, "plain-app", "2.1.0", with_metadata=False, summary="Newer")
    refetch(server, "root/pypi")
    refetch(server, "admin/m2", AUTH)
    assert found(server, WORD, AUTH) == ["mirror:root/pypi/plain-app"]

    # admin/m2 (private to admin) caches the wheel itself: its readers find it there too;
    # anonymous searchers only on the public mirror.
    status, _headers, raw, _reason = server.get(
        "/admin/m2/+simple/plain-app/", {**SIMPLE_JSON, **AUTH}
    )
    assert status == 200
    url = file_entry(json.loads(raw), wheel)["url"]
    status, _headers, _body, _reason = server.get(url, AUTH)
    assert status == 200
    settles_to(
        lambda: set(found(server, WORD, AUTH)),
        {"mirror:root/pypi/plain-app", "mirror:admin/m2/plain-app"},
    )
    assert found(server, WORD) == ["mirror:root/pypi/plain-app"]

    done = cli(server.data_dir, "reindex", **server.env)
    assert done.returncode == 0, done.stderr
    assert set(found(server, WORD, AUTH)) == {
        "mirror:root/pypi/plain-app",
        "mirror:admin/m2/plain-app",
    }
    assert found(server, WORD) == ["mirror:root/pypi/plain-app"]
    assert found(server, "summary:hyperborean", AUTH) != []

    # The upstream now lists other bytes under the wheel's name: the cached file is no longer
    # on the pages stored anew, and describes nothing there.
    add_wheel(fake_upstream, "plain-app", "2.0.0", with_metadata=False, summary="Replaced")
    refetch(server, "root/pypi")
    refetch(server, "admin/m2", AUTH)
    settles_to(lambda: found(server, WORD, AUTH), [])
    assert set(found(server, "plain-app", AUTH)) == {
        "mirror:root/pypi/plain-app",
        "mirror:admin/m2/plain-app",
    }


def indexed_summary(server: LiveServer, name: str) -> str | None:
    """The summary of `name`'s search document, read from the server's database (no search
    sent: a search indexes what is queued before it looks)."""
    url = pgserver.database_env(server.data_dir).get("DATABASE_URL")
    engine = create_engine(url or f"sqlite:///{server.data_dir / 'pyshelf.sqlite3'}")
    try:
        with engine.connect() as db:
            return db.execute(
                text("SELECT summary FROM search_documents WHERE normalized_name = :name"),
                {"name": name},
            ).scalar()
    finally:
        engine.dispose()


def test_an_install_is_indexed_once_the_server_is_idle_and_a_search_finds_an_upload_at_once(
    server_factory: Any, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """What a `pip install` through an empty mirror queues is indexed by the workers once no
    request has come for a moment, with no search to ask for it; an upload is found by a
    search sent right after its response (the search indexes what is still queued first)."""
    fake_upstream.html_only = True
    add_wheel(fake_upstream, "plain-app", "2.0.0", with_metadata=False, summary=SUMMARY)
    server = start_mirror(server_factory, fake_upstream)

    pip_install(server, "root/pypi", tmp_path / "target", "plain-app")

    settles_to(lambda: indexed_summary(server, "plain-app"), SUMMARY)

    filename, data = make_wheel("lemur-tools", "1.0", summary="Counts ringtailed lemurs")
    assert raw_upload(server, "admin/dev", filename, data)[0] == 200
    assert found(server, "ringtailed") == ["release:admin/dev/lemur-tools"]
