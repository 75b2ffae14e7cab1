"""Benchmark: `pip install` through pyshelf's mirror, cold and warm, against the bare upstream.

Builds a fixed set of wheels into a local fake PyPI (tests/fake_upstream.py), starts pyshelf
through entrypoint.sh, times real pip installs of all of them, interleaved, and then replays
pip's HTTP requests with a fast client to show the server's share alone. See bench/README.md.
Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib.metadata
import io
import json
import math
import multiprocessing
import os
import platform
import queue
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/mirror_install.py`: tests.* lives in ROOT
    sys.path.insert(0, str(ROOT))

from tests.builders import make_wheel  # noqa: E402 - needs ROOT on sys.path first
from tests.conftest import LiveServer, clean_env  # noqa: E402
from tests.fake_upstream import FakeUpstream, _Handler, normalize  # noqa: E402

SEED = 20_240_601  # changes every wheel's bytes: keep it fixed to compare runs across commits
PROJECT_COUNT = 30
LEAF_COUNT = 10  # the last ten projects depend on nothing
MAX_DEPENDENCIES = 4
VERSIONS = ("1.0.0", "1.1.0", "1.2.0")  # projects list 1-3 versions; pip takes the newest
MIN_WHEEL_BYTES = 10_000  # 10 KB
MAX_WHEEL_BYTES = 4_000_000  # 4 MB; sizes are spread log-uniformly in between
OLD_WHEEL_BYTES = 2_000  # older versions are listed but never downloaded
SIDECAR_EVERY = 4  # every 4th project offers a PEP 658 .metadata sidecar upstream
META_PROJECT = "bench-meta"

WEB_CONCURRENCY = 2
SERVER_ENV = {
    "WEB_CONCURRENCY": str(WEB_CONCURRENCY),
    "ACCESS_LOG": "false",
    "LOG_LEVEL": "WARNING",
}
# After /+status answers, the other worker may still be importing the app: wait until the
# server's processes stop using CPU, or they would steal it from the timed run.
IDLE_POLL_SECONDS = 0.25
IDLE_TICKS = 1  # at most one clock tick (10 ms at CLK_TCK=100) of CPU per poll counts as idle
IDLE_TIMEOUT_SECONDS = 15
PIP_TIMEOUT_SECONDS = 300
REQUEST_TIMEOUT_SECONDS = 30
CHUNK_BYTES = 1 << 20  # 1 MiB reads in the replay client
REPLAY_THREADS = (1, 8)
REPLAY_SECONDS = 1.0  # each replay measurement runs whole passes for about this long
QUICK_REPLAY_SECONDS = 0.5
REPLAY_REPEATS = 3  # the targets take turns this many times; medians are reported
QUICK_REPLAY_REPEATS = 1
PIP_REQUESTS = "pip's requests"
PAGES_ONLY = "pages only"
WORKLOADS = (PIP_REQUESTS, PAGES_ONLY)
MAX_PASSES = 500  # bounds a replay measurement however fast the server is
MIN_REPLAY_REQUESTS = 150  # and at least this many requests per measurement
DEFAULT_RUNS = 5
QUICK_RUNS = 2

UPSTREAM = "upstream"
COLD = "root/pypi cold"
WARM = "root/pypi warm"
DEV_WARM = "admin/dev warm"
VARIANTS = (UPSTREAM, COLD, WARM, DEV_WARM)
# Round r runs the variants in ORDERS[r % 4]: a Williams square, so each variant runs once in
# every position and directly after each other variant once per four rounds (a plain rotation
# would always run warm right after cold).
ORDERS = ((0, 1, 3, 2), (1, 2, 0, 3), (2, 3, 1, 0), (3, 0, 2, 1))
# The headers pip sends that change what a server answers; the rest is User-Agent and such.
REPLAYED_HEADERS = ("accept", "accept-encoding", "cache-control")
BUSY_LOAD = 0.25  # a 1-minute load average above this per CPU gets a warning: noisy numbers
COMPLAINTS = ("WARNING", "ERROR", "CRITICAL", "Traceback")  # server log lines worth showing


@dataclass(frozen=True)
class Release:
    """One wheel put on the fake upstream."""

    project: str
    version: str
    filename: str
    data: bytes
    metadata: bytes | None  # the PEP 658 sidecar, when upstream offers one
    requires: tuple[str, ...]


@dataclass(frozen=True)
class Request:
    """One HTTP request of the replay: what pip asked for, rewritten for one target."""

    kind: str  # "page", "metadata" or "file"
    url: str
    headers: dict[str, str]
    size_bytes: int | None  # the decoded body size a file must have


@dataclass
class Measurement:
    """A replay on one target: `passes` times the plan over `threads` clients, repeated."""

    target: str
    workload: str
    threads: int
    passes: int
    samples: list[dict[str, Any]] = field(default_factory=list)  # what `replay` returned, each
    requests_per_second: float = 0.0  # the median over the samples
    megabytes_per_second: float = 0.0
    ratio: float | None = None  # time per request relative to the upstream's: 1.5 = 50% slower

    @property
    def errors(self) -> int:
        return sum(sample["errors"] for sample in self.samples)

    @property
    def first_error(self) -> str | None:
        return next((s["first_error"] for s in self.samples if s["first_error"]), None)


@dataclass
class Servers:
    """Every pyshelf started, so `finally` can stop them all; keeps what their logs complained."""

    running: list[LiveServer] = field(default_factory=list)
    complaints: list[str] = field(default_factory=list)

    def start(self, data_dir: Path, mirror_url: str) -> LiveServer:
        """Start pyshelf on a fresh port with the benchmark's settings; wait for it to settle."""
        data_dir.parent.mkdir(parents=True, exist_ok=True)  # LiveServer writes its log there
        env = {**SERVER_ENV, "MIRROR_URL": mirror_url, "ADMIN_PASSWORD": secrets.token_hex(16)}
        server = LiveServer(data_dir, env)
        self.running.append(server)
        server.start()
        wait_until_idle(server)
        return server

    def stop(self, server: LiveServer) -> None:
        """Stop one server and keep its log lines at WARNING or above (LOG_LEVEL=WARNING)."""
        if server not in self.running:
            return
        self.running.remove(server)
        try:
            server.stop()
        finally:
            with contextlib.suppress(OSError):
                for line in server.log().splitlines():
                    if any(word in line for word in COMPLAINTS):
                        self.complaints.append(f"{server.url}: {line}")

    def stop_all(self) -> None:
        """Stop every server still running, even after a failure."""
        for server in list(self.running):
            with contextlib.suppress(Exception):
                self.stop(server)


def _cpu_ticks(pids: list[int]) -> int:
    """User plus system CPU time of `pids`, in clock ticks (proc(5): stat fields 14 and 15)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total


def wait_until_idle(server: LiveServer) -> None:
    """Wait (IDLE_TIMEOUT_SECONDS at most) until the server uses no CPU for two polls in a row."""
    assert server.process is not None
    deadline = time.monotonic() + IDLE_TIMEOUT_SECONDS
    last, quiet = -1, 0
    while quiet < 2 and time.monotonic() < deadline:
        ticks = _cpu_ticks([server.process.pid, *server.worker_pids()])
        quiet = quiet + 1 if 0 <= ticks - last <= IDLE_TICKS else 0
        last = ticks
        time.sleep(IDLE_POLL_SECONDS)


# --- the package set ---------------------------------------------------------------------------


def build_releases() -> list[Release]:
    """The fixed package set: a dependency tree of wheels, plus bench-meta depending on all."""
    rng = random.Random(SEED)  # noqa: S311 - reproducible test data, not secrets
    names = [f"bench-pkg-{i:02d}" for i in range(PROJECT_COUNT)]
    ratio = MAX_WHEEL_BYTES / MIN_WHEEL_BYTES
    sizes = [
        round(MIN_WHEEL_BYTES * ratio ** (k / (PROJECT_COUNT - 1))) for k in range(PROJECT_COUNT)
    ]
    rng.shuffle(sizes)
    releases = []
    for i, name in enumerate(names):
        later = names[i + 1 :]  # depending only on later projects keeps the graph acyclic
        requires: tuple[str, ...] = ()
        if i < PROJECT_COUNT - LEAF_COUNT:
            count = min(len(later), rng.randint(1, MAX_DEPENDENCIES))
            requires = tuple(sorted(rng.sample(later, count)))
        versions = VERSIONS[: 1 + i % len(VERSIONS)]
        for version in versions:
            padding = sizes[i] if version == versions[-1] else OLD_WHEEL_BYTES
            releases.append(
                _release(name, version, requires, rng.randbytes(padding), i % SIDECAR_EVERY == 0)
            )
    releases.append(_release(META_PROJECT, "1.0.0", tuple(names), b"", has_sidecar=False))
    return releases


def _release(
    name: str, version: str, requires: tuple[str, ...], padding: bytes, has_sidecar: bool
) -> Release:
    package = name.replace("-", "_")
    files = {f"{package}/data.bin": padding} if padding else {}
    filename, data = make_wheel(
        name, version, requires_dist=requires, summary=f"pyshelf benchmark: {name}", files=files
    )
    metadata = None
    if has_sidecar:
        with zipfile.ZipFile(io.BytesIO(data)) as wheel:
            metadata = wheel.read(f"{package}-{version}.dist-info/METADATA")
    return Release(name, version, filename, data, metadata, requires)


def newest(releases: list[Release]) -> list[Release]:
    """The release pip installs of each project."""
    best: dict[str, Release] = {}
    for release in releases:  # versions are added oldest first
        best[release.project] = release
    return list(best.values())


# --- pip ---------------------------------------------------------------------------------------


def pip_install(index_url: str, scratch: Path) -> float:
    """Seconds of `pip install --no-cache-dir --target NEW_DIR -i INDEX bench-meta`."""
    target = Path(tempfile.mkdtemp(prefix="target-", dir=scratch))
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        "--target",
        str(target),
        "-i",
        index_url,
        META_PROJECT,
    ]
    try:
        started = time.perf_counter()
        result = subprocess.run(  # noqa: S603 - this venv's pip, arguments built above
            command,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT_SECONDS,
            check=False,
        )
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"pip failed on {index_url}:\n{result.stdout}\n{result.stderr}")
        installed = len(list(target.glob("*.dist-info")))
        if installed != PROJECT_COUNT + 1:
            raise RuntimeError(f"pip installed {installed} of {PROJECT_COUNT + 1} distributions")
        return seconds
    finally:
        shutil.rmtree(target, ignore_errors=True)


# --- the replay client (runs in its own process: the fake upstream needs this one's GIL) --------


def _fetch(session: requests.Session, request: Request) -> tuple[int, str | None]:
    """GET one URL to the end; (bytes on the wire, error or None)."""
    try:
        with session.get(
            request.url, headers=request.headers, stream=True, timeout=REQUEST_TIMEOUT_SECONDS
        ) as response:
            size = sum(len(chunk) for chunk in response.iter_content(CHUNK_BYTES))
            wire = response.raw.tell()  # before decoding: gzipped pages count compressed
            if response.status_code != 200:
                return wire, f"{response.status_code} {response.reason} for {request.url}"
            if request.size_bytes is not None and size != request.size_bytes:
                return wire, f"{size} bytes instead of {request.size_bytes} from {request.url}"
            return wire, None
    except requests.RequestException as exc:
        return 0, f"{type(exc).__name__} for {request.url}: {exc}"


def replay(plan: list[Request], threads: int, passes: int) -> dict[str, Any]:
    """Send `passes` times every request of `plan` from `threads` keep-alive sessions."""
    work: queue.SimpleQueue[Request] = queue.SimpleQueue()
    for _ in range(passes):
        for request in plan:
            work.put(request)
    totals = {"requests": 0, "wire_bytes": 0, "errors": 0}
    first_error: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def client() -> None:
        with requests.Session() as session:
            session.trust_env = False  # no proxies from the environment: loopback only
            barrier.wait()
            while True:
                try:
                    request = work.get_nowait()
                except queue.Empty:
                    return
                wire, error = _fetch(session, request)
                with lock:
                    totals["requests"] += 1
                    totals["wire_bytes"] += wire
                    if error is not None:
                        totals["errors"] += 1
                        if not first_error:
                            first_error.append(error)

    workers = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join(timeout=PIP_TIMEOUT_SECONDS)
    seconds = time.perf_counter() - started
    return {**totals, "seconds": seconds, "first_error": first_error[0] if first_error else None}


# --- building the replay plan ------------------------------------------------------------------


def pip_requests(fake: FakeUpstream) -> list[tuple[str, str, dict[str, str]]]:
    """What pip asked the fake upstream for, in order: (kind, project or filename, headers)."""
    recorded = []
    for method, path, headers in list(fake.log):
        if method != "GET":
            continue
        kept = {name: value for name, value in headers.items() if name in REPLAYED_HEADERS}
        if path.startswith("/simple/"):
            recorded.append(("page", path.removeprefix("/simple/").strip("/"), kept))
        elif path.endswith(".metadata"):
            recorded.append(("metadata", path.rsplit("/", 1)[1].removesuffix(".metadata"), kept))
        else:
            recorded.append(("file", path.rsplit("/", 1)[1], kept))
    return recorded


def replay_plan(
    simple_url: str, recorded: list[tuple[str, str, dict[str, str]]], releases: list[Release]
) -> list[Request]:
    """pip's requests rewritten for the index at `simple_url`; file URLs come from its pages."""
    urls: dict[str, str] = {}
    session = requests.Session()
    session.trust_env = False
    with session:
        for project in sorted({release.project for release in releases}):
            page_url = f"{simple_url}{normalize(project)}/"
            response = session.get(
                page_url,
                headers={"Accept": "application/vnd.pypi.simple.v1+json"},
                timeout=REQUEST_TIMEOUT_SECONDS,
            )
            response.raise_for_status()
            for entry in response.json()["files"]:
                urls[entry["filename"]] = urljoin(page_url, entry["url"])
    sizes = {release.filename: len(release.data) for release in releases}
    plan = []
    for kind, name, headers in recorded:
        if kind == "page":
            plan.append(Request(kind, f"{simple_url}{name}/", headers, None))
        elif kind == "metadata":
            plan.append(Request(kind, urls[name] + ".metadata", headers, None))
        else:
            plan.append(Request(kind, urls[name], headers, sizes[name]))
    return plan


# --- reporting ---------------------------------------------------------------------------------


def git_revision() -> str | None:
    """The commit measured, marked when the working tree has changes; None outside git."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        head, status = (
            subprocess.run(  # noqa: S603 - git by its full path, fixed arguments
                [git, *command], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            for command in (["rev-parse", "--short", "HEAD"], ["status", "--porcelain"])
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head} + uncommitted changes" if status else head


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pip": importlib.metadata.version("pip"),
        "gunicorn": importlib.metadata.version("gunicorn"),
        "pyshelf": git_revision(),
        "load_average_at_start": os.getloadavg(),
    }


def summarize(seconds: dict[str, list[float]], upstream_requests: dict[str, list[int]]) -> dict:
    """Medians, spreads and ratios to the upstream median, per variant."""
    baseline = statistics.median(seconds[UPSTREAM])
    summary = {}
    for variant in VARIANTS:
        values = seconds[variant]
        median = statistics.median(values)
        summary[variant] = {
            "seconds": values,
            "median_seconds": median,
            "min_seconds": min(values),
            "max_seconds": max(values),
            "ratio": median / baseline,
            "upstream_requests": upstream_requests[variant],
        }
    return summary


def print_install_table(summary: dict[str, Any]) -> None:
    """The pip install table."""
    print()
    print(f"{'pip install ' + META_PROJECT:<22}{'median s':>10}{'min s':>8}{'max s':>8}", end="")
    print(f"{'x upstream':>12}{'upstream reqs/run':>19}")
    for variant, row in summary.items():
        requests_per_run = statistics.median(row["upstream_requests"])
        print(
            f"{variant:<22}{row['median_seconds']:>10.2f}{row['min_seconds']:>8.2f}"
            f"{row['max_seconds']:>8.2f}{row['ratio']:>12.2f}{requests_per_run:>19.0f}"
        )


def print_replay_table(measurements: list[Measurement]) -> None:
    """The replay table: medians over the repeats."""
    print()
    print(f"{'replay':<16}{'target':<16}{'threads':>8}{'req/s':>9}{'MB/s':>9}", end="")
    print(f"{'x upstream':>12}{'passes':>8}{'errors':>8}")
    for m in measurements:
        ratio = f"{m.ratio:.2f}" if m.ratio is not None else "-"
        print(
            f"{m.workload:<16}{m.target:<16}{m.threads:>8}{m.requests_per_second:>9.0f}"
            f"{m.megabytes_per_second:>9.1f}{ratio:>12}{m.passes:>8}{m.errors:>8}"
        )
    for m in measurements:
        if m.first_error:
            print(f"  {m.target} {m.workload} x{m.threads}: first error: {m.first_error}")


def print_complaints(complaints: list[str]) -> None:
    """What the servers logged at WARNING or above (nothing, when all is well)."""
    if not complaints:
        print("server logs: nothing at WARNING or above")
        return
    print(f"server logs: {len(complaints)} lines at WARNING or above; the first ones:")
    for line in complaints[:20]:
        print(f"  {line}")


# --- the benchmark -----------------------------------------------------------------------------


def measure_installs(
    fake: FakeUpstream,
    servers: Servers,
    warm: LiveServer,
    scratch: Path,
    runs: int,
) -> tuple[dict[str, list[float]], dict[str, list[int]], list[str]]:
    """`runs` rounds of the four variants in ORDERS; each cold run gets a new server."""
    seconds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    upstream_requests: dict[str, list[int]] = {variant: [] for variant in VARIANTS}
    order: list[str] = []
    for round_number in range(runs):
        cold_dir = scratch / f"cold-{round_number}"
        cold = servers.start(cold_dir / "data", fake.url)
        try:
            for variant in (VARIANTS[i] for i in ORDERS[round_number % len(ORDERS)]):
                index_url = {
                    UPSTREAM: fake.url,
                    COLD: f"{cold.url}/root/pypi/+simple/",
                    WARM: f"{warm.url}/root/pypi/+simple/",
                    DEV_WARM: f"{warm.url}/admin/dev/+simple/",
                }[variant]
                fake.reset_counts()
                elapsed = pip_install(index_url, scratch)
                seconds[variant].append(elapsed)
                upstream_requests[variant].append(fake.count())
                order.append(variant)
                print(f"  round {round_number + 1}/{runs}  {variant:<16}{elapsed:7.2f} s")
                if variant == COLD:
                    servers.stop(cold)  # its workers must not compete with the rest of the round
        finally:
            servers.stop(cold)
            shutil.rmtree(cold_dir, ignore_errors=True)
    return seconds, upstream_requests, order


def measure_replay(
    pool: concurrent.futures.Executor,
    fake: FakeUpstream,
    plans: dict[str, list[Request]],
    replay_seconds: float,
    repeats: int,
) -> tuple[list[Measurement], dict[str, int]]:
    """Replay pip's requests (and the pages alone) on every target, one thread and eight.

    The targets take turns, `repeats` times, and the medians are reported. Also returns how
    often each target's replay reached the upstream (pyshelf's should not).
    """
    measurements: list[Measurement] = []
    for workload in WORKLOADS:
        for target, full_plan in plans.items():
            plan = [r for r in full_plan if workload == PIP_REQUESTS or r.kind == "page"]
            # Two single passes (the first also opens connections); the faster sets the count,
            # with a floor, so one slow moment cannot shrink the measurement to a single pass.
            calibration = [pool.submit(replay, plan, 1, 1).result() for _ in range(2)]
            for sample in calibration:
                if sample["errors"]:
                    raise RuntimeError(f"replay on {target} failed: {sample['first_error']}")
            per_pass = max(min(sample["seconds"] for sample in calibration), 1e-6)
            passes = min(
                MAX_PASSES,
                max(
                    math.ceil(replay_seconds / per_pass), math.ceil(MIN_REPLAY_REQUESTS / len(plan))
                ),
            )
            measurements += [Measurement(target, workload, t, passes) for t in REPLAY_THREADS]
    upstream_requests = dict.fromkeys(plans, 0)
    for _ in range(repeats):
        for m in measurements:
            fake.reset_counts()
            plan = [r for r in plans[m.target] if m.workload == PIP_REQUESTS or r.kind == "page"]
            m.samples.append(pool.submit(replay, plan, m.threads, m.passes).result())
            upstream_requests[m.target] += fake.count()
    fake.reset_counts()
    for m in measurements:
        m.requests_per_second = statistics.median(s["requests"] / s["seconds"] for s in m.samples)
        m.megabytes_per_second = statistics.median(
            s["wire_bytes"] / 1e6 / s["seconds"] for s in m.samples
        )
    for m in measurements:
        base = next(
            b
            for b in measurements
            if b.target == UPSTREAM and b.workload == m.workload and b.threads == m.threads
        )
        m.ratio = base.requests_per_second / m.requests_per_second
    measurements.sort(key=lambda m: (WORKLOADS.index(m.workload), m.threads))  # stable: targets
    return measurements, upstream_requests


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Set everything up, measure, tear everything down; return the raw numbers."""
    runs = args.runs if args.runs is not None else (QUICK_RUNS if args.quick else DEFAULT_RUNS)
    replay_seconds = QUICK_REPLAY_SECONDS if args.quick else REPLAY_SECONDS
    repeats = QUICK_REPLAY_REPEATS if args.quick else REPLAY_REPEATS
    if runs < 1:
        raise SystemExit("--runs must be at least 1")
    info = machine()
    started = time.perf_counter()
    print(
        f"machine: {info['nproc']} CPUs (nproc), {info['cpu_model'] or 'unknown CPU'}, "
        f"{info['platform']}"
    )
    print(
        f"python {info['python']}, pip {info['pip']}, gunicorn {info['gunicorn']} "
        f"({WEB_CONCURRENCY} workers, gthread, default THREADS); pyshelf {info['pyshelf']}"
    )
    releases = build_releases()
    installed = newest(releases)
    install_bytes = sum(len(r.data) for r in installed)
    sidecars = sum(r.metadata is not None for r in installed)
    padded = [len(r.data) for r in installed if r.project != META_PROJECT]
    print(
        f"package set: {len(installed)} projects ({PROJECT_COUNT} + {META_PROJECT}), "
        f"{len(releases)} wheels upstream; pip installs {install_bytes / 1e6:.1f} MB in wheels "
        f"of {min(padded) / 1e3:.0f} KB to {max(padded) / 1e6:.1f} MB, "
        f"{sidecars} with PEP 658 sidecars"
    )
    load = info["load_average_at_start"][0]
    if load > BUSY_LOAD * info["nproc"]:
        print(
            f"warning: load average {load:.1f} on {info['nproc']} CPUs: other processes are "
            "busy, expect noisy numbers"
        )
    print(f"{runs} runs of each variant, interleaved (order: a 4x4 Williams square)")

    # The fake writes headers and body in two send()s: with Nagle's algorithm on, the client's
    # delayed ACK holds every response ~40 ms, which would make the baseline (and every cold
    # fetch) measure the fake instead of pip or pyshelf. TCP_NODELAY, as real servers set it.
    _Handler.disable_nagle_algorithm = True
    servers = Servers()
    spawn = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory(prefix="pyshelf-bench-") as tmp,
        FakeUpstream() as fake,
        concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool,
    ):
        scratch = Path(tmp)
        try:
            for release in releases:
                fake.add_file(
                    release.project, release.filename, release.data, metadata=release.metadata
                )
            pool.submit(time.time).result()  # start the replay process now, not mid-measurement
            warm = servers.start(scratch / "warm" / "data", fake.url)
            print("warming up (untimed): pip from upstream, root/pypi and admin/dev once each")
            fake.reset_counts()
            pip_install(fake.url, scratch)
            recorded = pip_requests(fake)
            pip_install(f"{warm.url}/root/pypi/+simple/", scratch)
            pip_install(f"{warm.url}/admin/dev/+simple/", scratch)

            seconds, upstream_requests, order = measure_installs(fake, servers, warm, scratch, runs)
            summary = summarize(seconds, upstream_requests)
            print_install_table(summary)

            kinds = [kind for kind, _, _ in recorded]
            print(
                f"\nreplay: pip sent {len(recorded)} requests per install "
                f"({kinds.count('page')} pages, {kinds.count('metadata')} metadata, "
                f"{kinds.count('file')} files); replayed with requests.Session keep-alive "
                f"from a separate process; {repeats} x {replay_seconds:g} s of whole passes each, "
                "the targets taking turns"
            )
            plans = {
                UPSTREAM: replay_plan(fake.url, recorded, releases),
                WARM: replay_plan(f"{warm.url}/root/pypi/+simple/", recorded, releases),
                DEV_WARM: replay_plan(f"{warm.url}/admin/dev/+simple/", recorded, releases),
            }
            measurements, replay_upstream = measure_replay(
                pool, fake, plans, replay_seconds, repeats
            )
            print_replay_table(measurements)
        finally:
            servers.stop_all()
            print_complaints(servers.complaints)
    total = time.perf_counter() - started
    info["load_average_at_end"] = os.getloadavg()
    warm_upstream = sum(summary[WARM]["upstream_requests"] + summary[DEV_WARM]["upstream_requests"])
    pyshelf_replay_upstream = replay_upstream[WARM] + replay_upstream[DEV_WARM]
    print(
        f"\nupstream requests caused by warm installs: {warm_upstream}, "
        f"by the replays on pyshelf: {pyshelf_replay_upstream} (0 expected)"
    )
    print(
        f"total {total:.0f} s; load average {info['load_average_at_start'][0]:.1f} at start, "
        f"{info['load_average_at_end'][0]:.1f} at end"
    )
    return {
        "machine": info,
        "config": {
            "runs": runs,
            "quick": args.quick,
            "seed": SEED,
            "projects": len(installed),
            "wheels_upstream": len(releases),
            "install_bytes": install_bytes,
            "wheel_bytes": {r.filename: len(r.data) for r in installed},
            "sidecars": sidecars,
            "server_env": SERVER_ENV,
            "replay_seconds": replay_seconds,
            "replay_repeats": repeats,
        },
        "pip_headers": {kind: headers for kind, _, headers in recorded},
        "install": summary,
        "install_order": order,
        "replay": {
            "requests_per_install": len(recorded),
            "upstream_requests_by_target": replay_upstream,
            "measurements": [
                {**asdict(m), "errors": m.errors, "first_error": m.first_error}
                for m in measurements
            ],
        },
        "server_log_complaints": servers.complaints,
        "total_seconds": total,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the tables, write the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=int, help=f"timed pip installs per variant (default {DEFAULT_RUNS})"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_RUNS} runs and short replays: a smoke test"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the raw numbers here")
    args = parser.parse_args(argv)
    # SIGTERM (`timeout`, a CI runner) must unwind like Ctrl-C does, through the `finally`s that
    # stop the servers: they run in their own sessions and would outlive the benchmark.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    results = run(args)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"raw numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
