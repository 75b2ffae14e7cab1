"""Run the comparative benchmark and write bench/RESULTS.md: `python -m bench.compare [--quick]`.

Phases, each alternating the servers from run to run (see bench/README.md):
startup and idle memory, cold and warm installs with pip and uv (and pip's requests replayed),
page throughput with wrk, downloads of a 200 MB wheel with peak memory, and pyshelf with a
database of 100,000 projects and 1,000,000 files.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.conftest import free_port

from . import clients, packages, report, scale
from .clients import JSON_ACCEPT, median, percentile, record_pip
from .floor import Floor
from .packages import CACHE_DIR
from .servers import (
    ROOT,
    SERVERS,
    THREADS,
    WEB_CONCURRENCY,
    Server,
    ensure_venv,
    get,
    memory_kib,
    venv_version,
)
from .upstream import Upstream, ensure_tools, nginx_binary, prepared_upstream

RESULTS = ROOT / "bench" / "RESULTS.md"
KEPT_SECTIONS = ("## Backends", "## Measured by hand")
SERVER_NAMES = ("pyshelf", "devpi", "proxpi")
UPSTREAM = "upstream"
FLOOR = "gunicorn floor"  # bench/compare/floor.py
TOOLS = ("pip", "uv")
HTML_ACCEPT = "text/html"
PAGE_PROJECTS = ("bench-pkg-02", packages.MANY_PROJECT)  # a 3-file page, the 10,000-file one
PAGE_FORMATS = ("html", "json", "304")
COMPLAINTS = ("WARNING", "ERROR", "CRITICAL", "Traceback", "WARNI ")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much of everything: --quick or the full run."""

    runs: int  # rounds of startup, installs and downloads (medians over these)
    page_repeats: int  # throughput runs per page configuration and server
    page_seconds: float  # each wrk run on the 3-file page
    many_seconds: float  # each closed-loop run on the 10,000-file page
    latency_requests: int  # one client's requests per repeat, 3-file page
    many_latency_requests: int  # the same, 10,000-file page
    connections: tuple[int, ...]
    replay_repeats: int
    replay_seconds: float  # each replay sample runs whole passes for about this long
    scale_projects: int
    scale_files_per_project: int
    small_projects: int
    search_queries: int
    scale_page_seconds: float  # wrk -c1 over random project pages

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> Plan:
        full = cls(
            runs=5,
            page_repeats=5,
            page_seconds=2,
            many_seconds=3,
            latency_requests=300,
            many_latency_requests=10,
            connections=(8, 32),
            replay_repeats=5,
            replay_seconds=1.0,
            scale_projects=100_000,
            scale_files_per_project=10,
            small_projects=100,
            search_queries=60,
            scale_page_seconds=5,
        )
        plan = full
        if args.quick:
            plan = dataclasses.replace(
                full,
                runs=2,
                page_repeats=1,
                page_seconds=1,
                many_seconds=2,
                latency_requests=100,
                many_latency_requests=5,
                replay_repeats=2,
                replay_seconds=0.5,
                scale_projects=10_000,
                search_queries=15,
                scale_page_seconds=2,
            )
        if args.runs:
            plan = dataclasses.replace(plan, runs=args.runs, page_repeats=args.runs)
        return plan


def orders(items: list[str], rounds: int) -> list[list[str]]:
    """A different order of `items` per round: rotations, every other one reversed, so each
    item runs early and late, and before and after each other one."""
    result = []
    for number in range(rounds):
        shift = number // 2 % len(items)
        rotated = items[shift:] + items[:shift]
        result.append(rotated[::-1] if number % 2 else rotated)
    return result


STARTED = time.perf_counter()


def log(message: str) -> None:
    """Progress on stdout, with the time since the start."""
    print(f"[{time.perf_counter() - STARTED:6.0f} s] {message}", flush=True)


# --- setup -------------------------------------------------------------------------------------


def tool_version(command: list[str]) -> str:
    """The first line a tool prints about its version."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(  # noqa: S603 - fixed version commands
            command, capture_output=True, text=True, timeout=30, check=False
        )
        text = (result.stdout or result.stderr).strip()
        return text.splitlines()[0] if text else "?"
    return "?"


def host() -> dict[str, Any]:
    """The machine, pyshelf's commit and the tools every bench here uses."""
    cpu_model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory_gib = 0.0
    with contextlib.suppress(OSError, ValueError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        memory_gib = int(first.split()[1]) / (1 << 20)
    git = shutil.which("git") or "git"
    head = tool_version([git, "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = tool_version([git, "-C", str(ROOT), "status", "--porcelain", "--", "app"]) not in (
        "",
        "?",
    )
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model,
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": round(memory_gib, 1),
        "kernel": os.uname().release,
        "pyshelf": f"{head}{' + uncommitted changes in app/' if dirty else ''}",
        "python": sys.version.split()[0],
        "gunicorn": venv_version(ROOT / ".venv" / "bin", "gunicorn"),
        "nginx": tool_version([nginx_binary() or "nginx", "-v"]),
        "wrk": tool_version(["wrk", "--version"]),
        "load_average_at_start": os.getloadavg(),
    }


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and with what."""
    tools = ROOT / ".bench-venvs"
    return {
        **host(),
        "devpi-server": venv_version(tools / "devpi" / "bin", "devpi-server"),
        "proxpi": venv_version(tools / "proxpi" / "bin", "proxpi"),
        "pip": venv_version(ROOT / ".venv" / "bin", "pip"),
        "uv": tool_version([str(tools / "tools" / "bin" / "uv"), "--version"]),
    }


class Fleet:
    """Every server started, so `finally` can stop them all; keeps their complaints."""

    def __init__(self, work_dir: Path, upstream: Upstream) -> None:
        self.work_dir = work_dir
        self.upstream = upstream
        self.running: list[Server] = []
        self.complaints: list[str] = []
        self.count = 0

    def start(self, name: str) -> Server:
        """A new server of kind `name` on an empty data directory."""
        self.count += 1
        server = SERVERS[name](self.work_dir / f"{name}-{self.count}", self.upstream.simple_url)
        self.running.append(server)
        server.start()
        return server

    def stop(self, server: Server, *, keep_data: bool = False) -> None:
        """Stop one server, keep its log lines worth reading, and delete its data."""
        if server in self.running:
            self.running.remove(server)
        try:
            server.stop()
        finally:
            for line in server.log().splitlines():
                if any(word in line for word in COMPLAINTS) and "No secret file" not in line:
                    self.complaints.append(f"{server.NAME}: {line[:300]}")
            if not keep_data:
                shutil.rmtree(server.work_dir, ignore_errors=True)

    def stop_all(self) -> None:
        for server in list(self.running):
            with contextlib.suppress(Exception):
                self.stop(server)

    @contextlib.contextmanager
    def fresh(self, name: str) -> Iterator[Server]:
        """A server on an empty data directory for one measurement, stopped afterwards."""
        server = self.start(name)
        try:
            yield server
        finally:
            self.stop(server)


# --- phases ------------------------------------------------------------------------------------


def measure_startup(fleet: Fleet, plan: Plan) -> dict[str, Any]:
    """Process start on an empty data directory to the first 200 of a mirrored project page;
    then the idle memory of the started server."""
    results: dict[str, Any] = {
        name: {"seconds": [], "rss_kib": [], "pss_kib": []} for name in SERVER_NAMES
    }
    for number, order in enumerate(orders(list(SERVER_NAMES), plan.runs)):
        for name in order:
            with fleet.fresh(name) as server:
                server.wait_until_idle()
                rss, pss = memory_kib(server.pids())
            row = results[name]
            row["seconds"].append(server.startup_seconds)
            row["rss_kib"].append(rss)
            row["pss_kib"].append(pss)
            log(
                f"startup {number + 1}/{plan.runs} {name}: {server.startup_seconds:.2f} s, "
                f"{rss / 1024:.0f} MiB RSS idle"
            )
    return results


def measure_installs(
    fleet: Fleet,
    upstream: Upstream,
    warm: dict[str, Server],
    plans: dict[str, list[clients.Request]],
    scratch: Path,
    plan: Plan,
    expected: int,
) -> dict[str, Any]:
    """`runs` rounds of every (tool, variant): the upstream, each server warm, each server cold
    (a new server per run), plus pip's requests replayed once on a new server (cold replay)."""
    variants = [
        UPSTREAM,
        *(f"{n} warm" for n in SERVER_NAMES),
        *(f"{n} cold" for n in SERVER_NAMES),
    ]
    results: dict[str, Any] = {
        tool: {v: {"seconds": [], "upstream_requests": []} for v in variants} for tool in TOOLS
    }
    results["replay cold"] = {n: {"seconds": [], "errors": 0, "redirects": 0} for n in SERVER_NAMES}
    for number in range(plan.runs):
        tools = TOOLS if number % 2 == 0 else TOOLS[::-1]
        jobs = [(tool, v) for tool in tools for v in orders(variants, plan.runs)[number]]
        jobs += [("replay cold", n) for n in orders(list(SERVER_NAMES), plan.runs)[number]]
        for tool, variant in jobs:
            if tool == "replay cold":
                with fleet.fresh(variant) as server:
                    server.wait_until_idle()
                    base = warm[variant].url
                    cold_plan = [
                        clients.Request(
                            r.kind, r.url.replace(base, server.url), r.headers, r.size_bytes
                        )
                        for r in plans[variant]
                    ]
                    sample = clients.run_plan(cold_plan, 1)
                row = results["replay cold"][variant]
                row["seconds"].append(sample["seconds"])
                row["errors"] += sample["errors"]
                row["redirects"] += sample["redirects"]
                if sample["errors"]:
                    row["first_error"] = sample["first_error"]
                log(
                    f"round {number + 1}/{plan.runs} replay cold {variant}: "
                    f"{sample['seconds']:.2f} s"
                )
                continue
            name, _, state = variant.partition(" ")
            if state == "cold":
                context: Any = fleet.fresh(name)
            else:
                context = contextlib.nullcontext(warm.get(name))
            with context as server:
                if state == "cold":
                    server.wait_until_idle()
                url = upstream.simple_url if name == UPSTREAM else server.stage_simple_url()
                mark = upstream.mark()
                seconds = clients.install(tool, url, packages.META_PROJECT, scratch, expected)
                if state == "cold":
                    server.wait_until_idle(5)  # proxpi finishes its downloads in the background
                reached = len(upstream.requests_since(mark))
            results[tool][variant]["seconds"].append(seconds)
            results[tool][variant]["upstream_requests"].append(reached)
            log(
                f"round {number + 1}/{plan.runs} {tool} {variant}: {seconds:.2f} s, "
                f"{reached} upstream requests"
            )
    return results


def measure_replay(plans: dict[str, list[clients.Request]], plan: Plan) -> dict[str, Any]:
    """pip's requests replayed on each warm target over one keep-alive connection: whole passes
    for about `replay_seconds` per sample, the targets taking turns."""
    results: dict[str, Any] = {}
    for target, requests in plans.items():
        clients.run_plan(requests, 1)  # warms connections and the OS cache
        calibration = clients.run_plan(requests, 1)
        passes = max(1, min(50, math.ceil(plan.replay_seconds / max(calibration["seconds"], 1e-6))))
        results[target] = {"passes": passes, "requests": len(requests), "samples": []}
    for order in orders(list(plans), plan.replay_repeats):
        for target in order:
            sample = clients.run_plan(plans[target], results[target]["passes"])
            results[target]["samples"].append(sample)
    for target, row in results.items():
        row["seconds_per_pass"] = median([s["seconds"] / s["passes"] for s in row["samples"]])
        row["errors"] = sum(s["errors"] for s in row["samples"])
        row["redirects"] = sum(s["redirects"] for s in row["samples"])
        row["first_error"] = next(
            (s["first_error"] for s in row["samples"] if s["first_error"]), None
        )
        log(
            f"replay warm {target}: {row['seconds_per_pass'] * 1000:.0f} ms per pass of "
            f"{row['requests']} requests, {row['errors']} errors"
        )
    return results


def page_headers(
    server: Server, project: str, fmt: str, accept_encoding: str
) -> tuple[dict[str, str], dict]:
    """The request headers of a page configuration, and what one such request returns."""
    url = server.stage_simple_url() + f"{project}/"
    accept = HTML_ACCEPT if fmt == "html" else JSON_ACCEPT
    headers = {"Accept": accept, "Accept-Encoding": accept_encoding}
    status, answer, body = get(url, headers)
    if status != 200:
        raise RuntimeError(f"{url}: {status}")
    check = {
        "status": status,
        "bytes": len(body),
        "etag": answer.get("etag"),
        "last_modified": answer.get("last-modified"),
        "content_encoding": answer.get("content-encoding"),
        "cache_control": answer.get("cache-control"),
        "connection": answer.get("connection"),
    }
    if fmt == "304":
        if answer.get("etag"):
            headers["If-None-Match"] = answer["etag"]
        elif answer.get("last-modified"):
            headers["If-Modified-Since"] = answer["last-modified"]
        status, _, body = get(url, headers)
        check["conditional_status"] = status
        check["conditional_bytes"] = len(body)
    return headers, check


def measure_pages(
    warm: dict[str, Server], upstream: Upstream, plan: Plan, accept_encoding: str, work_dir: Path
) -> dict[str, Any]:
    """Requests per second on the stage index pip uses (pages cached by the installs): HTML,
    JSON and conditional requests with 8 and 32 connections, and one client's latency.

    The 3-file page with wrk for `page_seconds`; the 10,000-file page with a closed loop (see
    clients.closed_loop). After each run the server is left to finish what is still queued.
    """
    results: dict[str, Any] = {"checks": {}, "latency": {}}
    headers: dict[tuple[str, str, str], dict[str, str]] = {}
    for name, server in warm.items():
        for project in PAGE_PROJECTS:
            for fmt in PAGE_FORMATS:
                for _ in range(4):  # proxpi caches per worker: let both see the page
                    hdrs, check = page_headers(server, project, fmt, accept_encoding)
                headers[(name, project, fmt)] = hdrs
                results["checks"][f"{name} {project} {fmt}"] = check
    configs = [
        (project, fmt, c)
        for project in PAGE_PROJECTS
        for fmt in PAGE_FORMATS
        for c in plan.connections
    ]
    mark = upstream.mark()
    for repeat, order in enumerate(orders(list(warm), plan.page_repeats)):
        for project, fmt, connections in configs:
            for name in order:
                server = warm[name]
                url = server.stage_simple_url() + f"{project}/"
                hdrs = headers[(name, project, fmt)]
                if project == packages.MANY_PROJECT:
                    expected = results["checks"][f"{name} {project} {fmt}"].get(
                        "conditional_status", 200
                    )
                    summary = clients.closed_loop(
                        url,
                        hdrs,
                        connections=connections,
                        seconds=plan.many_seconds,
                        expect_status=expected,
                    )  # every request was read to its end: nothing left queued
                else:
                    summary = clients.wrk(
                        url,
                        connections=connections,
                        seconds=plan.page_seconds,
                        headers=hdrs,
                        work_dir=work_dir,
                    )
                    server.wait_until_idle(30, poll_seconds=0.1)  # what wrk left in flight
                results.setdefault(f"{project} {fmt} {connections}", {}).setdefault(
                    name, []
                ).append(summary)
        for project in PAGE_PROJECTS:
            count = (
                plan.many_latency_requests
                if project == packages.MANY_PROJECT
                else plan.latency_requests
            )
            for fmt in ("html", "json"):
                for name in order:
                    url = warm[name].stage_simple_url() + f"{project}/"
                    samples = clients.sequential(url, headers[(name, project, fmt)], count, 60)
                    results["latency"].setdefault(f"{project} {fmt}", {}).setdefault(
                        name, []
                    ).extend(samples)
        log(f"pages: repeat {repeat + 1}/{plan.page_repeats} done")
    results["upstream_requests"] = len(upstream.requests_since(mark))
    return results


def huge_release(releases: list[packages.Release]) -> packages.Release:
    return next(r for r in releases if r.project == packages.HUGE_PROJECT)


def measure_downloads(
    fleet: Fleet,
    upstream: Upstream,
    releases: list[packages.Release],
    plan: Plan,
    names: tuple[str, ...] = SERVER_NAMES,
) -> dict[str, Any]:
    """The 200 MB wheel through a new server (first download: from the upstream, through the
    mirror) and again (cached), with the servers' peak memory; and from nginx (the ceiling)."""
    huge = huge_release(releases)
    results: dict[str, Any] = {n: {"cold": [], "cached": [], "idle_rss_kib": []} for n in names}
    results["static"] = {"cached": []}
    for number, order in enumerate(orders([*names, "static"], plan.runs)):
        for name in order:
            if name == "static":
                sample = clients.steady_download(upstream.files_url + huge.path, huge.size)
                results["static"]["cached"].append(sample)
                log(
                    f"download {number + 1}/{plan.runs} static: "
                    f"{sample['megabytes_per_second']:.0f} MB/s"
                )
                continue
            with fleet.fresh(name) as server:
                url = clients.file_urls(server.stage_simple_url(), [huge.project])[huge.filename][0]
                server.wait_until_idle()
                idle_rss, _ = memory_kib(server.pids())
                cold = clients.download(url, huge.size, server.pids)
                server.wait_until_idle()  # proxpi may still be writing its copy
                cached = clients.steady_download(url, huge.size, server.pids)
            row = results[name]
            row["idle_rss_kib"].append(idle_rss)
            row["cold"].append(cold)
            row["cached"].append(cached)
            log(
                f"download {number + 1}/{plan.runs} {name}: cold {cold['megabytes_per_second']:.0f}"
                f" MB/s, cached {cached['megabytes_per_second']:.0f} MB/s, peak +"
                f"{(max(cold['peak_rss_kib'], cached['peak_rss_kib']) - idle_rss) / 1024:.0f} MiB"
            )
    return results


def measure_scale(fleet: Fleet, plan: Plan, work_dir: Path) -> dict[str, Any]:
    """pyshelf with a small and a large stage: project page latency and search latency."""
    sizes = {
        "small": (plan.small_projects, plan.scale_files_per_project),
        "large": (plan.scale_projects, plan.scale_files_per_project),
    }
    results: dict[str, Any] = {}
    for label, (projects, per_project) in sizes.items():
        server = fleet.start("pyshelf")  # creates, migrates and bootstraps the database
        # A search indexes what the first mirrored page queued: a start on an empty search
        # index rebuilds it, here for every project filled in below (minutes, not the point).
        status, _, _ = get(f"{server.url}/+search?q=bench", {"Accept": "application/json"})
        if status != 200:
            raise RuntimeError(f"search before the scale fill: {status}")
        fleet.stop(server, keep_data=True)
        started = time.perf_counter()
        counts = scale.fill(server.data_dir / "pyshelf.sqlite3", projects, per_project)
        fill_seconds = time.perf_counter() - started
        db_bytes = (server.data_dir / "pyshelf.sqlite3").stat().st_size
        log(
            f"scale {label}: {counts['projects']} projects, {counts['files']} files in "
            f"{fill_seconds:.0f} s ({db_bytes / 1e6:.0f} MB)"
        )
        again = type(server)(server.work_dir, server.upstream_url)
        fleet.running.append(again)
        try:
            again.start()
            again.wait_until_idle()
            names = [scale.project_name(n) for n in range(projects)]
            paths = clients.random_paths("/admin/dev/+simple/", names, 2000, seed=len(names))
            status, _, _ = get(again.url + paths[0], {"Accept": JSON_ACCEPT})
            if status != 200:
                raise RuntimeError(f"scale page {paths[0]}: {status}")
            page = clients.wrk(
                again.url + paths[0],
                connections=1,
                seconds=plan.scale_page_seconds,
                headers={"Accept": JSON_ACCEPT},
                paths=paths,
                work_dir=work_dir,
            )
            searches = []
            client = clients.Client()
            try:
                for term in scale.search_terms(plan.search_queries):
                    started = time.perf_counter()
                    status, _size, _, _ = client.fetch(f"{again.url}/+search?q={quote(term)}")
                    searches.append(time.perf_counter() - started)
                    if status != 200:
                        raise RuntimeError(f"search {term!r}: {status}")
            finally:
                client.close()
            rss, _ = memory_kib(again.pids())
        finally:
            fleet.stop(again)
        results[label] = {
            **counts,
            "fill_seconds": fill_seconds,
            "database_bytes": db_bytes,
            "startup_seconds": again.startup_seconds,
            "page": page,
            "search_seconds": searches,
            "search_p50": percentile(searches, 50),
            "search_p99": percentile(searches, 99),
            "rss_kib_after": rss,
        }
        log(
            f"scale {label}: page p50 {page['p50_us'] / 1000:.1f} ms, "
            f"p99 {page['p99_us'] / 1000:.1f}"
            f" ms; search p50 {results[label]['search_p50'] * 1000:.0f} ms"
        )
    return results


# --- the run -----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Set up, measure every phase, tear everything down; the raw results."""
    plan = Plan.for_args(args)
    ensure_tools()
    for venv in ("devpi", "proxpi", "tools"):
        ensure_venv(venv)
    info = machine()
    log(
        f"{info['nproc']} CPUs ({info['cpu']}), load {info['load_average_at_start'][0]:.1f}; "
        f"pyshelf {info['pyshelf']}, devpi-server {info['devpi-server']}, proxpi {info['proxpi']}"
    )
    releases = packages.load_or_build(CACHE_DIR / f"upstream-{packages.BUILD_VERSION}")
    wanted = packages.installed(releases)
    sizes = {r.filename: r.size for r in releases}
    results: dict[str, Any] = {
        "machine": info,
        "plan": dataclasses.asdict(plan),
        "quick": args.quick,
        "package_set": {
            "projects": len(packages.by_project(releases)),
            "files": len(releases),
            "installed": len(wanted),
            "installed_bytes": sum(r.size for r in wanted),
            "smallest_installed": min(r.size for r in wanted),
            "largest_installed": max(r.size for r in wanted),
            "largest": max(r.size for r in releases),
            "many_files": sum(r.project == packages.MANY_PROJECT for r in releases),
        },
        "config": {"workers": WEB_CONCURRENCY, "threads": THREADS},
    }
    phases = set(args.phases.split(",")) if args.phases else None
    with tempfile.TemporaryDirectory(prefix="pyshelf-compare-") as tmp:
        work = Path(tmp)
        upstream = prepared_upstream(work, releases)
        fleet = Fleet(work / "servers", upstream)
        scratch = work / "scratch"
        scratch.mkdir()
        upstream.start()
        try:
            if phases is None or "startup" in phases:
                log("phase: startup")
                results["startup"] = measure_startup(fleet, plan)
            if phases is None or phases & {"install", "replay", "pages"}:
                log("phase: warm servers (primed with one pip and one uv install each)")
                recorded = record_pip(upstream, packages.META_PROJECT, scratch, len(wanted))
                results["pip_requests"] = [
                    {k: r[k] for k in ("uri", "accept", "accept_encoding")} for r in recorded
                ]
                warm = {name: fleet.start(name) for name in SERVER_NAMES}
                for server in warm.values():
                    server.wait_until_idle()
                for server in warm.values():
                    for tool in TOOLS:
                        clients.install(
                            tool,
                            server.stage_simple_url(),
                            packages.META_PROJECT,
                            scratch,
                            len(wanted),
                        )
                    server.wait_until_idle()
                replay_plans = {
                    UPSTREAM: clients.replay_plan(upstream.simple_url, recorded, sizes)[0]
                }
                skipped = {}
                for name, server in warm.items():
                    replay_plans[name], skipped[name] = clients.replay_plan(
                        server.stage_simple_url(), recorded, sizes
                    )
                results["replay_skipped_sidecars"] = skipped
                if phases is None or "install" in phases:
                    log("phase: installs")
                    results["install"] = measure_installs(
                        fleet, upstream, warm, replay_plans, scratch, plan, len(wanted)
                    )
                results["memory_after_warm"] = {}
                for name, server in warm.items():
                    server.wait_until_idle()
                    rss, pss = memory_kib(server.pids())
                    results["memory_after_warm"][name] = {"rss_kib": rss, "pss_kib": pss}
                if phases is None or "replay" in phases:
                    log("phase: replay of pip's requests")
                    floor = Floor(
                        upstream.www, upstream.files, free_port(), WEB_CONCURRENCY, THREADS
                    )
                    floor.start()
                    try:
                        replay_plans[FLOOR] = [
                            dataclasses.replace(r, url=r.url.replace(upstream.url, floor.url))
                            for r in replay_plans[UPSTREAM]
                        ]
                        results["replay"] = measure_replay(replay_plans, plan)
                    finally:
                        floor.stop()
                if phases is None or "pages" in phases:
                    log("phase: page throughput (wrk)")
                    encoding = recorded[0]["accept_encoding"]
                    results["pages"] = measure_pages(warm, upstream, plan, encoding, work)
                for server in warm.values():
                    fleet.stop(server)
            if phases is None or "downloads" in phases:
                log("phase: downloads")
                results["downloads"] = measure_downloads(fleet, upstream, releases, plan)
            if phases is None or "scale" in phases:
                log("phase: scale")
                results["scale"] = measure_scale(fleet, plan, work)
        finally:
            fleet.stop_all()
            upstream.stop()
    results["complaints"] = fleet.complaints
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["total_seconds"] = time.perf_counter() - STARTED
    return results


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, write RESULTS.md (and the raw JSON when asked)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes: checks, not numbers")
    parser.add_argument("--runs", type=int, help="rounds per measurement (default 5, quick 2)")
    parser.add_argument(
        "--phases", help="comma-separated subset: startup,install,replay,pages,downloads,scale"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the raw numbers")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the Markdown to write")
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    # SIGTERM (`timeout`, CI) must unwind through the `finally`s that stop the servers.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    previous = args.results.read_text() if args.results.exists() else ""
    text = report.markdown(results)
    for heading in KEPT_SECTIONS:  # written by another command, or by hand
        text = report.keep_section(previous, text, heading)
    args.results.write_text(text)
    log(f"wrote {args.results}" + (f" and {args.json}" if args.json else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
