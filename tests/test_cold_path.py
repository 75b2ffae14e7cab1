"""The first requests through an empty mirror (issue #21): what they store, and how many
database write transactions a first download and a first sidecar cost."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, select

from app.core.upstream_client import UpstreamClient
from app.data.models import Index, MirrorFile, MirrorHolding, MirrorSidecar, MirrorStats
from app.services import cache_blobs, mirror_description
from tests import test_mirror
from tests.builders import make_wheel, wheel_metadata
from tests.conftest import TEST_ALLOW_PRIVATE
from tests.fake_upstream import FakeUpstream
from tests.test_mirror import JSON, file_url, sha256

# The mirror fixtures of tests/test_mirror.py, used here too.
clock = test_mirror.clock
mirror_settings = test_mirror.mirror_settings
mirror_app = test_mirror.mirror_app
mc = test_mirror.mc
demo = test_mirror.demo

PAGES = ("/root/pypi/+simple/cold-demo/", "/admin/dev/+simple/cold-demo/")


def built_by_the_view(headers: dict[str, str]) -> bool:
    """Whether Flask built the answer: flask-login adds Cookie to Vary there, while a stored
    public page answered before Flask (app/http/stored_pages.py CachedPages) has no Cookie in
    Vary."""
    return "Cookie" in headers.get("Vary", "")


@pytest.mark.parametrize("page", PAGES)
def test_the_request_that_fetches_a_mirror_page_stores_the_page_it_built(
    server_factory: Any, fake_upstream: FakeUpstream, page: str
) -> None:
    """The first request fetches the upstream page, builds the simple page and stores it: the
    second one is answered from the stored page, byte for byte, without building it again."""
    filename, data = make_wheel("cold-demo", "1.0", files={"cold/x.bin": os.urandom(2000)})
    fake_upstream.add_file("cold-demo", filename, data, metadata=wheel_metadata(data))
    server = server_factory(MIRROR_URL=fake_upstream.url, WEB_CONCURRENCY="1")

    status, first_headers, first, _ = server.get(page, JSON)
    assert status == 200, first[:300]
    status, second_headers, second, _ = server.get(page, JSON)

    assert status == 200
    assert built_by_the_view(first_headers)
    assert not built_by_the_view(second_headers)  # stored by the first request
    assert second == first
    assert second_headers["ETag"] == first_headers["ETag"]
    assert fake_upstream.count("/simple/cold-demo/") == 1


@pytest.fixture
def writes(mirror_app: Any) -> Iterator[list[str]]:
    """The write transactions (begin_write) the app's database begins, as they happen."""
    engine = mirror_app.extensions["pyshelf.db"].engine
    began: list[str] = []

    def on_begin(connection: Any) -> None:
        if connection.get_execution_options().get("pyshelf_immediate"):
            began.append("write")

    event.listen(engine, "begin", on_begin)
    yield began
    event.remove(engine, "begin", on_begin)


def test_a_first_download_is_recorded_in_one_write_transaction(
    mirror_app: Any, mc: Any, demo: tuple[str, bytes], writes: list[str]
) -> None:
    """The blob held, its core metadata stored and held, the cached file and the miss are
    written together; then the search index of the project (its own transaction)."""
    filename, data = demo
    url = file_url(mc, filename)
    writes.clear()

    response = mc.get(url)

    assert (response.status_code, response.get_data()) == (200, data)
    assert len(writes) == 2, writes  # was 5: holding, metadata holding, file, search, counters
    with mirror_app.extensions["pyshelf.db"].session() as session:
        metadata_sha256 = session.scalar(
            select(MirrorFile.metadata_sha256).where(MirrorFile.sha256 == sha256(data))
        )
        held = set(session.scalars(select(MirrorHolding.sha256)))
        stats = session.scalar(select(MirrorStats))
    assert metadata_sha256 == sha256(wheel_metadata(data))
    assert {sha256(data), metadata_sha256} <= held
    assert (stats.hits, stats.misses, stats.bytes_fetched) == (0, 1, len(data))


def test_a_first_sidecar_is_recorded_in_one_write_transaction(
    mirror_app: Any, mc: Any, demo: tuple[str, bytes], writes: list[str]
) -> None:
    """The upstream's sidecar, verified and stored: held, counted and noted as the file's
    sidecar in one transaction."""
    filename, data = demo
    url = file_url(mc, filename)
    writes.clear()

    response = mc.get(url + ".metadata")

    assert (response.status_code, response.get_data()) == (200, wheel_metadata(data))
    assert len(writes) == 1, writes  # was 3: counters, holding, sidecar
    digest = sha256(wheel_metadata(data))
    with mirror_app.extensions["pyshelf.db"].session() as session:
        assert session.scalar(select(MirrorSidecar.metadata_sha256)) == digest
        assert digest in set(session.scalars(select(MirrorHolding.sha256)))
        stats = session.scalar(select(MirrorStats))
    assert (stats.misses, stats.bytes_fetched) == (1, len(wheel_metadata(data)))


def test_threads_of_a_worker_reuse_one_upstream_connection(fake_upstream: FakeUpstream) -> None:
    """gthread hands requests to whichever thread is free: a page fetched by one thread after
    another's goes over the connection the first one left open (one TLS handshake per host and
    worker, not per thread)."""
    for number in range(4):
        filename, data = make_wheel(f"pool-{number}", "1.0")
        fake_upstream.add_file(f"pool-{number}", filename, data)
    client = UpstreamClient(retries=0, allow_private=TEST_ALLOW_PRIVATE)
    pages: list[Any] = []
    try:
        for number in range(4):  # one after the other, each in a thread of its own
            thread = threading.Thread(
                target=lambda n=number: pages.append(
                    client.fetch_project(fake_upstream.url, f"pool-{n}")
                )
            )
            thread.start()
            thread.join(30)
    finally:
        client.close()

    assert [page.name for page in pages] == [f"pool-{n}" for n in range(4)]
    assert fake_upstream.count("/simple/pool-") == 4
    assert fake_upstream.connections == 1


def test_a_first_seen_page_is_indexed_by_name_without_reading_its_versions(
    mc: Any, demo: tuple[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mirror holds nothing of a page it has just fetched, so nothing can describe the
    project yet: its search document is its name, written without parsing or sorting one
    version (a 10,000-file page has thousands). Once a file is cached, the versions are read."""
    parsed: list[str] = []
    real = mirror_description.version_key
    monkeypatch.setattr(mirror_description, "version_key", lambda v: parsed.append(v) or real(v))
    filename, _ = demo

    url = file_url(mc, filename)

    assert parsed == []
    assert search_names(mc, "mirror-demo") == ["mirror-demo"]
    assert search_names(mc, "demo package") == []  # the wheel's summary: not read yet
    assert mc.get(url).status_code == 200
    assert "1.0.0" in parsed  # the first download reads them, and indexes the summary
    assert search_names(mc, "demo package") == ["mirror-demo"]


def search_names(client: Any, query: str) -> list[str]:
    response = client.get(
        "/+search", query_string={"q": query}, headers={"Accept": "application/json"}
    )
    assert response.status_code == 200, response.status
    return [hit["name"] for hit in response.get_json()["hits"]]


@pytest.mark.parametrize("few", [5000, 2])
def test_the_holdings_of_a_page_are_the_same_read_at_once_or_looked_up(
    mirror_app: Any, monkeypatch: pytest.MonkeyPatch, few: int
) -> None:
    """A mirror holding few blobs has them read at once, a larger one has the page's keys
    looked up (in batches): the same keys either way, and only this mirror's."""
    monkeypatch.setattr(cache_blobs, "FEW_HOLDINGS", few)
    monkeypatch.setattr(cache_blobs, "HOLDINGS_BATCH", 3)
    keys = [f"{n:064x}" for n in range(10)]
    with mirror_app.extensions["pyshelf.db"].session() as session:
        mirror_id, other_id = session.scalars(select(Index.id).order_by(Index.id)).all()[:2]
        session.add_all(MirrorHolding(index_id=mirror_id, sha256=key) for key in keys[:5])
        session.add(MirrorHolding(index_id=other_id, sha256=keys[7]))
        session.commit()

        found = cache_blobs.held_by(session, mirror_id, [*keys[3:], None, keys[4]])

    assert found == {keys[3], keys[4]}
