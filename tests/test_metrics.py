"""/+metrics, /+status and the request log (app/http/metrics.py, app/http/health.py,
app/core/logs.py)."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
from typing import Any

import pytest

from app.core.config import Settings
from app.core.logs import JsonFormatter, TextFormatter, request_id_var
from app.core.metrics import REGISTRY
from app.http import health
from app.http.metrics import route_kind
from tests.builders import make_wheel
from tests.conftest import basic_auth
from tests.fake_upstream import FakeUpstream
from tests.operations import (
    download,
    make_app,
    mirror_file_path,
    mirrored,
    publish_upstream,
    upload,
)

AUTH = {"Authorization": basic_auth("admin", "admin-secret-pw")}


def sample(name: str, **labels: str) -> float:
    """A metric's current value in this process (0 when it has none yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def mirror_app(settings: Settings, fake_upstream: FakeUpstream) -> Any:
    """An app whose root/pypi mirrors the fake upstream."""
    return make_app(mirrored(settings, fake_upstream))


def scrape(client: Any, headers: dict[str, str] | None = None) -> str:
    """GET /+metrics as text (as the superuser unless `headers` say otherwise); asserts 200."""
    response = client.get("/+metrics", headers=AUTH if headers is None else headers)
    assert response.status == "200 OK"
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return response.get_data(as_text=True)


# --- /+metrics ---------------------------------------------------------------------------------


def test_a_cold_and_a_warm_download_count_a_miss_and_a_hit(mirror_app, fake_upstream):
    """Misses, hits, bytes fetched upstream and bytes served from the cache."""
    name, data = publish_upstream(fake_upstream, "counted-pkg")
    client = mirror_app.test_client()
    path = mirror_file_path(client, "counted-pkg", name)
    before = {
        key: sample(key)
        for key in (
            "pyshelf_mirror_cache_hits_total",
            "pyshelf_mirror_cache_misses_total",
            "pyshelf_upstream_fetched_bytes_total",
            "pyshelf_mirror_cache_served_bytes_total",
        )
    }
    files_before = sample("pyshelf_http_requests_total", kind="file", status="200")

    download(client, path)  # cold: from the upstream, into the cache
    download(client, path)  # warm: from the cache

    assert (
        sample("pyshelf_mirror_cache_misses_total") - before["pyshelf_mirror_cache_misses_total"]
        == 1
    )
    assert (
        sample("pyshelf_mirror_cache_hits_total") - before["pyshelf_mirror_cache_hits_total"] == 1
    )
    fetched = sample("pyshelf_upstream_fetched_bytes_total")
    assert fetched - before["pyshelf_upstream_fetched_bytes_total"] == len(data)
    served = sample("pyshelf_mirror_cache_served_bytes_total")
    assert served - before["pyshelf_mirror_cache_served_bytes_total"] == len(data)
    assert sample("pyshelf_http_requests_total", kind="file", status="200") - files_before == 2
    text = scrape(client)
    assert "pyshelf_mirror_cache_hits_total" in text
    assert 'pyshelf_blob_store_bytes{kind="mirror"}' in text
    assert 'pyshelf_upstream_up{index="root/pypi"} 1.0' in text
    assert 'pyshelf_http_request_duration_seconds_bucket{kind="file",le="0.005"}' in text


def test_upstream_errors_and_uploads_are_counted(mirror_app, fake_upstream):
    """A failing upstream counts per mirror index; uploads count by status."""
    client = mirror_app.test_client()
    fake_upstream.down = True
    errors_before = sample("pyshelf_upstream_errors_total", index="root/pypi")
    uploads_before = sample("pyshelf_uploads_total", status="200")

    assert client.get("/root/pypi/+simple/anything/").status_code in (502, 504)
    upload(client, AUTH, *make_wheel("own-pkg", "1.0"))

    assert sample("pyshelf_upstream_errors_total", index="root/pypi") - errors_before == 1
    assert sample("pyshelf_uploads_total", status="200") - uploads_before == 1
    assert 'pyshelf_upstream_up{index="root/pypi"} 0.0' in scrape(client)


def test_metrics_need_the_token_when_one_is_set(settings):
    """METRICS_TOKEN: Prometheus sends it as `authorization: credentials: ...`; a superuser's
    credentials do too."""
    app = make_app(dataclasses.replace(settings, metrics_token="s3cret"))
    client = app.test_client()

    response = client.get("/+metrics")

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/+metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert "pyshelf_http_requests_total" in scrape(client, {"Authorization": "Bearer s3cret"})
    assert "pyshelf_http_requests_total" in scrape(client, AUTH)


def test_metrics_are_for_superusers_unless_metrics_public(settings):
    """Without METRICS_TOKEN or METRICS_PUBLIC: anonymous 401 (a Basic challenge), another
    user 403, a superuser 200."""
    client = make_app(settings).test_client()
    client.put("/bob", json={"password": "bob-password"}, headers=AUTH)

    anonymous = client.get("/+metrics")
    bob = client.get("/+metrics", headers={"Authorization": basic_auth("bob", "bob-password")})

    assert anonymous.status == (
        "401 Metrics need a superuser's credentials or the METRICS_TOKEN (or METRICS_PUBLIC=true)."
    )
    assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="pyshelf"'
    assert bob.status == "403 Metrics are for superusers; the user 'bob' is not one."
    assert "pyshelf_http_requests_total" in scrape(client)


def test_public_metrics_name_no_private_index(settings, fake_upstream):
    """METRICS_PUBLIC=true: anyone scrapes, but samples of a private mirror are left out for
    them (a superuser still sees them)."""
    app = make_app(dataclasses.replace(mirrored(settings, fake_upstream), metrics_public=True))
    client = app.test_client()
    assert client.patch("/root/pypi", json={"acl_read": []}, headers=AUTH).status_code == 200
    fake_upstream.down = True
    assert client.get("/root/pypi/+simple/anything/", headers=AUTH).status_code in (502, 504)

    anonymous = scrape(client, {})

    assert "pyshelf_http_requests_total" in anonymous
    assert "root/pypi" not in anonymous
    assert 'pyshelf_upstream_up{index="root/pypi"} 0.0' in scrape(client)


@pytest.mark.parametrize(
    ("endpoint", "view_args", "kind"),
    [
        ("simple.project_page", {}, "simple"),
        ("files.release_file", {"filename": "a-1.0-py3-none-any.whl"}, "file"),
        ("files.release_file", {"filename": "a-1.0-py3-none-any.whl.metadata"}, "metadata"),
        ("upload.upload", {}, "upload"),
        ("api.get_user", {}, "api"),
        ("web.doc_page", {}, "docs"),
        ("web.index_page", {}, "web"),
        ("health.status", {}, "status"),
        ("metrics.metrics", {}, "metrics"),
        (None, None, "other"),
    ],
)
def test_routes_are_labelled_by_a_small_fixed_set_of_kinds(endpoint, view_args, kind):
    """Labels stay few: never a path, a project or a user."""
    assert route_kind(endpoint, view_args) == kind


# --- the request log ---------------------------------------------------------------------------


def test_every_response_carries_a_request_id_and_one_log_line(app, caplog):
    """A new id, or a proxy's sane X-Request-ID; the line says method, path, status, bytes."""
    caplog.set_level(logging.INFO, logger="pyshelf.request")
    client = app.test_client()

    fresh = client.get("/admin/dev/+simple/")
    passed = client.get("/admin/dev/+simple/", headers={"X-Request-ID": "edge-42"})
    forged = client.get("/+status", headers={"X-Request-ID": 'x" 200 0 "fake line'})

    bodies = [r.get_data() for r in (fresh, passed, forged)]
    for response in (fresh, passed, forged):
        response.close()  # what a WSGI server does after the last byte: the line is written

    assert len(fresh.headers["X-Request-ID"]) == 16
    assert passed.headers["X-Request-ID"] == "edge-42"
    assert forged.headers["X-Request-ID"] != 'x" 200 0 "fake line'
    lines = [r for r in caplog.records if r.name == "pyshelf.request"]
    assert len(lines) == 3
    assert lines[1].request_id == "edge-42"
    assert '"GET /admin/dev/+simple/ HTTP/1.1" 200' in lines[1].getMessage()
    assert lines[1].route == "simple"
    assert lines[1].bytes == len(bodies[1])


def test_a_streamed_mirror_download_is_logged_when_its_last_byte_is_out(
    mirror_app, fake_upstream, caplog
):
    """The line (and the latency) cover the whole body, not just the first byte."""
    caplog.set_level(logging.INFO, logger="pyshelf.request")
    name, data = publish_upstream(fake_upstream, "streamed-pkg", payload_bytes=300_000)
    client = mirror_app.test_client()

    download(client, mirror_file_path(client, "streamed-pkg", name))

    line = [r for r in caplog.records if r.name == "pyshelf.request"][-1]
    assert line.status == 200
    assert line.bytes == len(data)


def test_log_lines_are_json_objects_with_the_request_id_when_asked_for():
    """LOG_FORMAT=json: one object per line, extras (status, bytes...) as fields."""
    record = logging.LogRecord(
        "pyshelf.request", logging.INFO, __file__, 1, "hello %s", ("x",), None
    )
    record.request_id = "abc"
    record.status = 200

    entry = json.loads(JsonFormatter().format(record))

    assert entry["message"] == "hello x"
    assert entry["request_id"] == "abc"
    assert entry["status"] == 200
    assert entry["level"] == "INFO"
    assert entry["logger"] == "pyshelf.request"
    assert entry["time"].endswith("+00:00")
    record.request_id = None
    time = entry["time"].removesuffix("+00:00")
    assert TextFormatter().format(record) == f"{time}+00:00 [pyshelf] INFO pyshelf.request: hello x"
    record.request_id = "abc"
    assert TextFormatter().format(record).endswith(" rid=abc")


def test_lines_logged_inside_a_request_carry_its_id(app, caplog):
    """Any logger, not only the request line: the id comes with every record."""
    seen: list[str | None] = []

    @app.get("/+probe")
    def probe() -> str:
        logging.getLogger("app.somewhere").warning("inside")
        seen.append(request_id_var.get())
        return "ok"

    response = app.test_client().get("/+probe")

    inside = next(r for r in caplog.records if r.getMessage() == "inside")
    assert inside.request_id == response.headers["X-Request-ID"] == seen[0]


# --- /+status ----------------------------------------------------------------------------------


def test_status_reports_version_database_data_dir_disk_and_upstreams(mirror_app, fake_upstream):
    """200 with every check; the mirror's upstream as its last request found it."""
    client = mirror_app.test_client()
    publish_upstream(fake_upstream, "seen-pkg")
    client.get("/root/pypi/+simple/seen-pkg/")

    response = client.get("/+status")

    assert response.status == "200 OK"
    report = response.get_json()
    assert report["status"] == "ok"
    assert report["version"]
    assert report["checks"]["database"] == {"ok": True}
    assert report["checks"]["data_dir"] == {"ok": True}
    assert report["checks"]["disk"]["ok"] is True
    assert report["checks"]["disk"]["free_bytes"] > 0
    assert report["mirrors"]["root/pypi"]["upstream"] == "ok"
    assert report["mirrors"]["root/pypi"]["last_ok_at"]


def test_a_failing_upstream_degrades_the_status_but_keeps_it_healthy(mirror_app, fake_upstream):
    """The mirror still serves its cache: no reason for the orchestrator to restart us."""
    client = mirror_app.test_client()
    fake_upstream.down = True
    requests_before = fake_upstream.count()
    client.get("/root/pypi/+simple/some-pkg/")

    response = client.get("/+status", headers=AUTH)  # a superuser sees the error text

    assert response.status_code == 200
    assert response.get_json()["status"] == "degraded"
    mirror = response.get_json()["mirrors"]["root/pypi"]
    assert mirror["upstream"] == "failing"
    assert "503" in mirror["last_error"]
    assert fake_upstream.count() == requests_before + 1  # /+status itself never asks upstream


def test_status_is_503_when_the_data_directory_takes_no_new_file(app, monkeypatch):
    """Read-only volume (EROFS): unhealthy, with the reason."""

    def read_only(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(health.tempfile, "mkstemp", read_only)

    response = app.test_client().get("/+status", headers=AUTH)

    assert response.status == "503 SERVICE UNAVAILABLE"
    report = response.get_json()
    assert report["status"] == "unhealthy"
    assert "Read-only file system" in report["checks"]["data_dir"]["error"]


def test_status_is_503_when_the_disk_is_nearly_full(settings):
    """Below STATUS_MIN_FREE_SPACE: uploads and downloads would start failing."""
    app = make_app(dataclasses.replace(settings, status_min_free_bytes=1 << 60))

    response = app.test_client().get("/+status")

    assert response.status_code == 503
    assert response.get_json()["checks"]["disk"]["ok"] is False


def test_status_is_503_when_the_database_does_not_answer(settings, monkeypatch):
    """The database check runs a query; when it fails, so does the probe (the reason is for
    the METRICS_TOKEN: a superuser could not log in without the database)."""
    app = make_app(dataclasses.replace(settings, metrics_token="status-token"))
    database = app.extensions["pyshelf.db"]

    def broken() -> Any:
        raise RuntimeError("database is locked\nmore detail")

    monkeypatch.setattr(database.engine, "connect", broken)

    response = app.test_client().get("/+status", headers={"Authorization": "Bearer status-token"})

    assert response.status_code == 503
    assert response.get_json()["checks"]["database"] == {
        "ok": False,
        "error": "database is locked",
    }
    anonymous = app.test_client().get("/+status")
    assert anonymous.status_code == 503
    assert anonymous.get_json()["checks"]["database"] == {"ok": False}
