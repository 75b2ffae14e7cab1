"""Load: LOAD_CLIENTS (32) concurrent clients for LOAD_SECONDS against one server started by
entrypoint.sh with the default worker settings: real pip installs (through the mirror), twine
uploads, and raw page, file, web and upload requests. No connection error, no 5xx, and every
uploaded file downloads afterwards with its sha256. Requests served and latency percentiles
are written to test-output/robustness.json (figures for bench/RESULTS.md, never asserted).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.builders import make_wheel, write_dist
from tests.conftest import ADMIN_PASSWORD, LiveServer, run_pip, run_twine
from tests.robustness.support import (
    LOAD_CLIENTS,
    LOAD_SECONDS,
    download,
    listed_files,
    record_figures,
    upload_body,
    wheel,
)

pytestmark = pytest.mark.e2e
STAGE = "admin/dev"
MIME_JSON = "application/vnd.pypi.simple.v1+json"
ACCEPT_PIP = f"{MIME_JSON}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
REQUEST_TIMEOUT_SECONDS = 60
JOIN_TIMEOUT_SECONDS = 240  # a pip or twine run started just before the deadline may finish


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Tally:
    """What all clients did, under one lock."""

    latencies: dict[str, list[float]] = field(default_factory=dict)  # seconds, by method
    errors: list[str] = field(default_factory=list)
    uploaded: dict[tuple[str, str], str] = field(default_factory=dict)  # (project, file) -> sha
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def error(self, what: str) -> None:
        with self.lock:
            if len(self.errors) < 200:
                self.errors.append(what)


@dataclass
class Targets:
    """URLs the raw clients fetch, with the sha256 each file must have."""

    pages: list[tuple[str, dict[str, str]]]
    files: list[tuple[str, str]]
    token: str  # an API token of admin's, for the raw uploads


def _raw_client(tally: Tally, server: LiveServer, targets: Targets, number: int, end: float):
    session = requests.Session()
    session.trust_env = False  # no proxy from the environment
    iteration = 0
    while time.monotonic() < end:
        iteration += 1
        requests_to_make: list[tuple[str, str, dict[str, str], str | None]] = [
            ("GET", path, headers, None) for path, headers in targets.pages
        ]
        requests_to_make += [("GET", path, {}, sha) for path, sha in targets.files]
        for method, path, headers, sha in requests_to_make:
            if time.monotonic() >= end:
                break
            _timed(session, tally, method, server.url + path, headers, sha)
        if iteration % 3 == 0:  # an upload of its own every few rounds
            project = f"load-raw-{number}"
            filename, content = make_wheel(project, f"1.{iteration}")
            body, content_type = upload_body(filename, content)
            headers = {"Content-Type": content_type}
            ok = _timed(
                session,
                tally,
                "POST",
                f"{server.url}/{STAGE}/",
                headers,
                None,
                data=body,
                auth=("__token__", targets.token),  # as CI uploads (twine below: a password)
            )
            if ok:
                with tally.lock:
                    tally.uploaded[(project, filename)] = _sha(content)
                tally.count("raw uploads")


def _timed(
    session: requests.Session,
    tally: Tally,
    method: str,
    url: str,
    headers: dict[str, str],
    sha: str | None,
    **kwargs: Any,
) -> bool:
    started = time.perf_counter()
    try:
        response = session.request(
            method,
            url,
            headers=headers,
            timeout=REQUEST_TIMEOUT_SECONDS,
            allow_redirects=False,
            **kwargs,
        )
        body = response.content
    except requests.RequestException as exc:
        tally.error(f"{method} {url}: {type(exc).__name__}: {exc}")
        return False
    elapsed = time.perf_counter() - started
    with tally.lock:
        tally.latencies.setdefault(method, []).append(elapsed)
    tally.count("requests")
    if response.status_code >= 500 or response.status_code not in (200, 304):
        tally.error(f"{method} {url}: {response.status_code} {response.reason}")
        return False
    if sha is not None and _sha(body) != sha:
        tally.error(f"{method} {url}: wrong sha256 ({len(body)} bytes)")
        return False
    return True


def _pip_client(tally: Tally, server: LiveServer, end: float) -> None:
    while time.monotonic() < end:
        with tempfile.TemporaryDirectory() as target:
            result = run_pip(
                "install",
                "--target",
                target,
                "--index-url",
                f"{server.url}/{STAGE}/+simple/",
                "load-hosted",  # depends on mirror-alpha: one hosted and one mirrored file
                "mirror-beta",
            )
            installed = {p.name for p in Path(target).iterdir()}
        if result.returncode != 0 or not {"load_hosted", "mirror_alpha"} <= installed:
            tally.error(f"pip install failed: {result.stdout[-1500:]}{result.stderr[-1500:]}")
        else:
            tally.count("pip installs")


def _twine_client(tally: Tally, server: LiveServer, number: int, end: float, folder: Path):
    iteration = 0
    while time.monotonic() < end:
        iteration += 1
        project = f"load-twine-{number}"
        filename, content = wheel(project, f"2.{iteration}", payload_bytes=256 << 10)
        (folder / str(number)).mkdir(parents=True, exist_ok=True)
        path = write_dist(folder / str(number), filename, content)
        result = run_twine(
            "upload",
            "--repository-url",
            f"{server.url}/{STAGE}/",
            "-u",
            "admin",
            "-p",
            ADMIN_PASSWORD,
            str(path),
        )
        if result.returncode != 0:
            tally.error(f"twine upload {filename}: {result.stdout[-1500:]}{result.stderr[-1500:]}")
            continue
        with tally.lock:
            tally.uploaded[(project, filename)] = _sha(content)
        tally.count("twine uploads")


def _guarded(tally: Tally, target: Any, *args: Any) -> None:
    """Run a client; an exception in the test's own code counts as an error too."""
    try:
        target(tally, *args)
    except Exception as exc:
        tally.error(f"client crashed: {type(exc).__name__}: {exc}")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def test_concurrent_clients_get_no_errors_and_every_upload_is_stored(
    server_factory: Any, fake_upstream: Any, tmp_path: Path
) -> None:
    fake_upstream.add_file("mirror-alpha", *make_wheel("mirror-alpha", "1.0"))
    fake_upstream.add_file("mirror-beta", *make_wheel("mirror-beta", "1.0"))
    # app/http/gunicorn_conf.py's defaults (server_factory would set 2 workers of 4 threads): empty
    # values fall back to them
    server: LiveServer = server_factory(
        MIRROR_URL=fake_upstream.url, WEB_CONCURRENCY="", THREADS=""
    )
    workers = len(server.worker_pids())
    hosted_name, hosted = make_wheel("load-hosted", "1.0", requires_dist=["mirror-alpha"])
    session = requests.Session()
    session.trust_env = False
    body, content_type = upload_body(hosted_name, hosted)
    response = session.post(
        f"{server.url}/{STAGE}/",
        data=body,
        headers={"Content-Type": content_type},
        auth=("admin", ADMIN_PASSWORD),
        timeout=REQUEST_TIMEOUT_SECONDS,
    )
    assert response.status_code == 200, response.reason
    made = session.post(
        f"{server.url}/admin/+tokens",
        json={"description": "load test"},
        auth=("admin", ADMIN_PASSWORD),
        timeout=REQUEST_TIMEOUT_SECONDS,
    )
    assert made.status_code == 201, made.reason
    mirrored = json.loads(
        session.get(
            f"{server.url}/root/pypi/+simple/mirror-alpha/",
            headers={"Accept": MIME_JSON},
            timeout=REQUEST_TIMEOUT_SECONDS,
        ).content
    )["files"][0]
    hosted_page = json.loads(
        session.get(
            f"{server.url}/{STAGE}/+simple/load-hosted/",
            headers={"Accept": MIME_JSON},
            timeout=REQUEST_TIMEOUT_SECONDS,
        ).content
    )["files"][0]

    def local(url: str) -> str:
        return "/" + url.split("/", 3)[3] if url.startswith("http") else url

    targets = Targets(
        pages=[
            (f"/{STAGE}/+simple/", {}),
            (f"/{STAGE}/+simple/load-hosted/", {"Accept": ACCEPT_PIP}),
            (f"/{STAGE}/+simple/mirror-alpha/", {"Accept": "text/html"}),
            ("/root/pypi/+simple/mirror-beta/", {"Accept": ACCEPT_PIP}),
            ("/", {"Accept": "text/html"}),
            (f"/{STAGE}/", {"Accept": "text/html"}),
            (f"/{STAGE}/load-hosted/", {"Accept": "text/html"}),
            ("/+search?q=load", {"Accept": "text/html"}),
            ("/+status", {}),
        ],
        files=[
            (local(hosted_page["url"]), _sha(hosted)),
            (local(mirrored["url"]), mirrored["hashes"]["sha256"]),
        ],
        token=made.json()["result"]["token"],
    )
    tally = Tally()
    tally.uploaded[("load-hosted", hosted_name)] = _sha(hosted)
    started = time.monotonic()
    end = started + LOAD_SECONDS
    threads = []
    for number in range(LOAD_CLIENTS):
        if number % 8 == 0:
            target, args = _pip_client, (server, end)
        elif number % 8 == 1:
            target, args = _twine_client, (server, number, end, tmp_path / "dists")
        else:
            target, args = _raw_client, (server, targets, number, end)
        threads.append(
            threading.Thread(target=_guarded, args=(tally, target, *args), name=f"client-{number}")
        )
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=JOIN_TIMEOUT_SECONDS + LOAD_SECONDS)
    elapsed = time.monotonic() - started
    assert not any(thread.is_alive() for thread in threads), "a client hung"

    latencies = [seconds for values in tally.latencies.values() for seconds in values]
    reads, uploads = tally.latencies.get("GET", []), tally.latencies.get("POST", [])
    figures = {
        "clients": LOAD_CLIENTS,
        "workers": workers,
        "seconds": round(elapsed, 1),
        "requests": tally.counts.get("requests", 0),
        "requests_per_second": round(tally.counts.get("requests", 0) / elapsed, 1),
        "pip_installs": tally.counts.get("pip installs", 0),
        "twine_uploads": tally.counts.get("twine uploads", 0),
        "raw_uploads": tally.counts.get("raw uploads", 0),
        "p50_ms": _ms(statistics.median(latencies)) if latencies else None,
        "p99_ms": _ms(_percentile(latencies, 0.99)) if latencies else None,
        "max_ms": _ms(max(latencies)) if latencies else None,
        "read_p50_ms": _ms(statistics.median(reads)) if reads else None,
        "read_p99_ms": _ms(_percentile(reads, 0.99)) if reads else None,
        "upload_p50_ms": _ms(statistics.median(uploads)) if uploads else None,
        "upload_p99_ms": _ms(_percentile(uploads, 0.99)) if uploads else None,
        "errors": len(tally.errors),
    }
    record_figures("load", figures)
    assert tally.errors == []
    assert figures["pip_installs"] > 0
    assert figures["twine_uploads"] > 0

    # every upload is listed and downloads with its sha256
    projects = {project for project, _ in tally.uploaded}
    listed = {project: listed_files(server, STAGE, project) for project in projects}
    for (project, filename), sha in tally.uploaded.items():
        assert listed[project].get(filename) == sha, (project, filename)
        assert _sha(download(server, STAGE, project, filename)) == sha
