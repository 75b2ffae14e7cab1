"""The clients: pip and uv installs, a keep-alive replay client, wrk, downloads with memory
sampling. Every loop is bounded in count and time, and every URL is on 127.0.0.1."""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from tests.conftest import clean_env

from .servers import ROOT, VENVS, get, memory_kib
from .upstream import Upstream

INSTALL_TIMEOUT_SECONDS = 600
REQUEST_TIMEOUT_SECONDS = 120
READ_BYTES = 1 << 20  # the replay and download clients read 1 MiB at a time
MAX_REDIRECTS = 3
SAMPLE_SECONDS = 0.01  # memory sampling interval while a download streams
WRK_TIMEOUT = "30s"  # a slow answer counts as slow, not as a socket error
LOOPBACK = "127.0.0.1"
JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"


def _check_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host != LOOPBACK:
        raise RuntimeError(f"refusing a non-loopback URL: {url}")


# --- pip and uv --------------------------------------------------------------------------------


def install(tool: str, index_url: str, project: str, scratch: Path, expected: int) -> float:
    """Seconds of `pip install` / `uv pip install` of `project` into a new empty target.

    No client cache (pip --no-cache-dir, uv --no-cache), no configuration files: every run
    downloads everything from `index_url`.
    """
    _check_loopback(index_url)
    python = ROOT / ".venv" / "bin" / "python"
    target = Path(tempfile.mkdtemp(prefix="target-", dir=scratch))
    if tool == "pip":
        command = [str(python), "-m", "pip", "install", "--no-cache-dir"]
        command += ["--disable-pip-version-check", "--target", str(target)]
        command += ["-i", index_url, project]
    else:
        command = [str(VENVS / "tools" / "bin" / "uv"), "pip", "install", "--no-config"]
        command += ["--no-cache", "--python", str(python), "--target", str(target)]
        command += ["--index-url", index_url, project]
    env = clean_env(UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1")
    try:
        started = time.perf_counter()
        result = subprocess.run(  # noqa: S603 - pip or uv, arguments built above
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_SECONDS,
            check=False,
        )
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed on {index_url}:\n{result.stdout}\n{result.stderr}")
        count = len(list(target.glob("*.dist-info")))
        if count != expected:
            raise RuntimeError(f"{tool} installed {count} of {expected} distributions")
        return seconds
    finally:
        shutil.rmtree(target, ignore_errors=True)


def record_pip(
    upstream: Upstream, project: str, scratch: Path, expected: int
) -> list[dict[str, str]]:
    """One untimed pip install from the upstream; the requests pip sent, in order."""
    mark = upstream.mark()
    install("pip", upstream.simple_url, project, scratch, expected)
    return [r for r in upstream.requests_since(mark) if r["method"] == "GET"]


# --- the replay client -------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request of a replay, for one target."""

    kind: str  # "page", "metadata" or "file"
    url: str
    headers: tuple[tuple[str, str], ...]
    size_bytes: int | None  # a file's size after decoding


class Client:
    """Keep-alive HTTP/1.1 connections, one per host; reads bodies into one buffer."""

    def __init__(self) -> None:
        self.connections: dict[tuple[str, int], http.client.HTTPConnection] = {}
        self.buffer = bytearray(READ_BYTES)
        self.view = memoryview(self.buffer)

    def close(self) -> None:
        for connection in self.connections.values():
            connection.close()
        self.connections.clear()

    def _connection(self, host: str, port: int) -> http.client.HTTPConnection:
        key = (host, port)
        if key not in self.connections:
            self.connections[key] = http.client.HTTPConnection(
                host, port, timeout=REQUEST_TIMEOUT_SECONDS
            )
        return self.connections[key]

    def fetch(
        self, url: str, headers: dict[str, str] | None = None
    ) -> tuple[int, int, dict[str, str], int]:
        """GET `url` to the end, following redirects: (status, body bytes, headers, redirects)."""
        for redirects in range(MAX_REDIRECTS + 1):
            _check_loopback(url)
            parts = urlsplit(url)
            connection = self._connection(parts.hostname or LOOPBACK, parts.port or 80)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            try:
                connection.request("GET", path, headers=headers or {})
                response = connection.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                connection.close()  # a server closed an idle keep-alive connection: once more
                connection.request("GET", path, headers=headers or {})
                response = connection.getresponse()
            size = 0
            while True:
                count = response.readinto(self.view)
                if not count:
                    break
                size += count
            answer = {k.lower(): v for k, v in response.getheaders()}
            if response.status in (301, 302, 303, 307, 308) and "location" in answer:
                url = urljoin(url, answer["location"])
                continue
            return response.status, size, answer, redirects
        raise RuntimeError(f"more than {MAX_REDIRECTS} redirects from {url}")


def run_plan(plan: list[Request], passes: int) -> dict:
    """Send every request of `plan`, `passes` times, over one keep-alive connection.

    Returns seconds (also per kind of request), requests, body bytes, redirects followed, and
    the first error.
    """
    client = Client()
    errors, first_error, body_bytes, redirects = 0, None, 0, 0
    by_kind: dict[str, float] = {}
    try:
        started = time.perf_counter()
        for _ in range(passes):
            for request in plan:
                begun = time.perf_counter()
                status, size, _, followed = client.fetch(request.url, dict(request.headers))
                by_kind[request.kind] = by_kind.get(request.kind, 0.0) + (
                    time.perf_counter() - begun
                )
                body_bytes += size
                redirects += followed
                wrong_size = request.size_bytes is not None and size != request.size_bytes
                if status != 200 or wrong_size:
                    errors += 1
                    first_error = first_error or f"{status}, {size} bytes: {request.url}"
        seconds = time.perf_counter() - started
    finally:
        client.close()
    return {
        "seconds": seconds,
        "seconds_by_kind": by_kind,
        "passes": passes,
        "requests": passes * len(plan),
        "body_bytes": body_bytes,
        "redirects": redirects,
        "errors": errors,
        "first_error": first_error,
    }


def closed_loop(
    url: str,
    headers: dict[str, str],
    *,
    connections: int,
    seconds: float,
    expect_status: int = 200,
    max_requests: int = 100_000,
) -> dict:
    """`connections` keep-alive clients, each sending the next request when the last one is
    done, until `seconds` have passed; every request sent is read to its end.

    For pages so slow that a fixed-duration tool would count a backlog instead of a rate (the
    10,000-file page): requests per second = all requests / the time until the last one ended.
    The server is left with nothing queued.
    """
    _check_loopback(url)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    barrier = threading.Barrier(connections + 1)
    deadline = [0.0]

    def worker() -> None:
        client = Client()
        try:
            barrier.wait(timeout=30)
            while time.perf_counter() < deadline[0]:
                with lock:
                    if len(latencies) + len(errors) >= max_requests:
                        return
                begun = time.perf_counter()
                try:
                    status, _, _, _ = client.fetch(url, headers)
                except OSError as exc:
                    status = f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - begun
                with lock:
                    if status == expect_status:
                        latencies.append(elapsed)
                    else:
                        errors.append(str(status))
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + seconds
    started = time.perf_counter()
    barrier.wait(timeout=30)
    for thread in threads:
        thread.join(timeout=seconds + REQUEST_TIMEOUT_SECONDS)
    elapsed = time.perf_counter() - started
    done = len(latencies)
    return {
        "requests": done,
        "seconds": elapsed,
        "requests_per_second": done / elapsed if elapsed else 0.0,
        "status_errors": len(errors),
        "socket_errors": 0,
        "first_error": errors[0] if errors else None,
        "p50_us": percentile(latencies, 50) * 1e6 if latencies else None,
        "p99_us": percentile(latencies, 99) * 1e6 if latencies else None,
    }


def sequential(url: str, headers: dict[str, str], count: int, max_seconds: float) -> list[float]:
    """Latencies of up to `count` requests, one after the other on one keep-alive connection
    (stops early after `max_seconds`); raises on anything but a 200."""
    _check_loopback(url)
    client = Client()
    latencies: list[float] = []
    try:
        client.fetch(url, headers)  # opens the connection
        deadline = time.perf_counter() + max_seconds
        while len(latencies) < count and time.perf_counter() < deadline:
            begun = time.perf_counter()
            status, _, _, _ = client.fetch(url, headers)
            latencies.append(time.perf_counter() - begun)
            if status != 200:
                raise RuntimeError(f"{url}: {status}")
    finally:
        client.close()
    return latencies


def file_urls(simple_url: str, projects: list[str]) -> dict[str, tuple[str, bool]]:
    """filename -> (absolute URL, whether a PEP 658 sidecar is offered), from the JSON pages."""
    urls: dict[str, tuple[str, bool]] = {}
    for project in dict.fromkeys(projects):
        page_url = f"{simple_url}{project}/"
        status, _, body = get(page_url, {"Accept": "application/vnd.pypi.simple.v1+json"})
        if status != 200:
            raise RuntimeError(f"{page_url}: {status} {body[:200]!r}")
        for entry in json.loads(body)["files"]:
            core = entry.get("core-metadata", entry.get("data-dist-info-metadata"))
            urls[entry["filename"]] = (urljoin(page_url, entry["url"]), bool(core))
    return urls


def replay_plan(
    simple_url: str, recorded: list[dict[str, str]], sizes: dict[str, int]
) -> tuple[list[Request], int]:
    """pip's recorded upstream requests, rewritten for the index at `simple_url`.

    File URLs come from the target's own pages. A sidecar the target does not offer is left
    out (pip would not ask for it there); returns the plan and how many were left out.
    """
    pages = [r["uri"].split("/")[2] for r in recorded if r["uri"].startswith("/simple/")]
    urls = file_urls(simple_url, pages)
    plan: list[Request] = []
    skipped = 0
    for entry in recorded:
        headers = tuple(
            (name, entry[key])
            for name, key in (("Accept", "accept"), ("Accept-Encoding", "accept_encoding"))
            if entry.get(key) and entry[key] != "-"
        )
        uri = entry["uri"]
        if uri.startswith("/simple/"):
            plan.append(Request("page", f"{simple_url}{uri.split('/')[2]}/", headers, None))
            continue
        filename = uri.rsplit("/", 1)[1]
        if filename.endswith(".metadata"):
            url, has_sidecar = urls[filename.removesuffix(".metadata")]
            if not has_sidecar:
                skipped += 1
                continue
            plan.append(Request("metadata", url.split("#")[0] + ".metadata", headers, None))
        else:
            url = urls[filename][0].split("#")[0]
            plan.append(Request("file", url, headers, sizes[filename]))
    return plan, skipped


# --- wrk ---------------------------------------------------------------------------------------

WRK_SCRIPT = """
-- Prints wrk's summary as one JSON line (latency in microseconds).
{requests}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{{"requests": %d, "duration_us": %d, "bytes": %d, "status_errors": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read,
    e.write, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""

WRK_PATHS = """
local paths = {{ {paths} }}
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, paths[(counter - 1) % #paths + 1])
end
"""


def wrk(
    url: str,
    *,
    connections: int,
    seconds: float,
    headers: dict[str, str],
    paths: list[str] | None = None,
    work_dir: Path,
) -> dict:
    """Run wrk (one thread) against `url` (or cycle through `paths` on its host).

    Returns wrk's summary, requests per second, and wrk's own CPU share of one core (to show
    the load generator was not the bottleneck).
    """
    _check_loopback(url)
    requests = ""
    if paths:
        quoted = ", ".join(json.dumps(p) for p in paths)
        requests = WRK_PATHS.format(paths=quoted)
    script = work_dir / f"wrk-{time.monotonic_ns()}.lua"
    script.write_text(WRK_SCRIPT.format(requests=requests))
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    command += ["--timeout", WRK_TIMEOUT, "-s", str(script)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    command.append(url)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        result = subprocess.run(  # noqa: S603 - Debian's wrk, arguments built above
            command, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    finally:
        script.unlink(missing_ok=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary_line = next(
        (line for line in result.stdout.splitlines() if line.startswith('{"requests"')), None
    )
    if result.returncode != 0 or summary_line is None:
        raise RuntimeError(f"wrk failed: {result.stdout}\n{result.stderr}")
    summary = json.loads(summary_line)
    duration = summary["duration_us"] / 1e6
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary["requests_per_second"] = summary["requests"] / duration if duration else 0.0
    summary["wrk_cpu_share"] = cpu / duration if duration else 0.0
    summary["socket_errors"] = sum(
        summary[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
    )
    return summary


def random_paths(prefix: str, names: list[str], count: int, seed: int) -> list[str]:
    """`count` page paths of names picked at random (reproducibly)."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible sample, not a secret
    return [f"{prefix}{rng.choice(names)}/" for _ in range(count)]


# --- downloads with memory sampling -------------------------------------------------------------


class PeakMemory:
    """Samples the RSS and PSS of some processes every SAMPLE_SECONDS in a thread; keeps peaks."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids
        self.peak_rss_kib = self.peak_pss_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss = memory_kib(self.pids())
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
            self.peak_pss_kib = max(self.peak_pss_kib, pss)
            self.samples += 1
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def download(url: str, size_bytes: int, pids: Callable[[], list[int]] | None = None) -> dict:
    """Download `url` once (new connection, redirects followed); MB/s and peak memory."""
    client = Client()
    sampler = PeakMemory(pids) if pids else None
    try:
        with sampler if sampler else contextlib.nullcontext():
            started = time.perf_counter()
            status, size, _, redirects = client.fetch(url)
            seconds = time.perf_counter() - started
    finally:
        client.close()
    if status != 200 or size != size_bytes:
        raise RuntimeError(f"download of {url}: {status}, {size} bytes instead of {size_bytes}")
    return {
        "seconds": seconds,
        "megabytes_per_second": size / 1e6 / seconds,
        "redirects": redirects,
        "peak_rss_kib": sampler.peak_rss_kib if sampler else None,
        "peak_pss_kib": sampler.peak_pss_kib if sampler else None,
        "memory_samples": sampler.samples if sampler else 0,
    }


def steady_download(
    url: str, size_bytes: int, pids: Callable[[], list[int]] | None = None, repeats: int = 5
) -> dict:
    """A cached file downloaded `repeats` times: the median by speed (one 200 MB transfer takes
    a tenth of a second: one alone is mostly noise); with `pids`, as many downloads again while
    their memory is sampled, for the highest peak. The speeds come from downloads nobody
    samples: the sampling thread, in this client, slows it by a quarter to a third on 2 CPUs,
    whichever server it samples (bench/RESULTS.md, "The cached download and memory sampling"),
    and nginx's downloads are never sampled."""
    samples = sorted(
        (download(url, size_bytes) for _ in range(repeats)),
        key=lambda s: s["megabytes_per_second"],
    )
    middle = dict(samples[len(samples) // 2])
    if pids:
        sampled = [download(url, size_bytes, pids) for _ in range(repeats)]
        middle["peak_rss_kib"] = max(s["peak_rss_kib"] for s in sampled)
        middle["peak_pss_kib"] = max(s["peak_pss_kib"] for s in sampled)
        middle["memory_samples"] = sum(s["memory_samples"] for s in sampled)
    return middle


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float:
    """statistics.median, for one import."""
    return statistics.median(values)
