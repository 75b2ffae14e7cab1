"""pyshelf at another commit against this checkout (and proxpi), taking turns in one run.

    .venv/bin/python -m bench.compare.ab [--before REF] [--phases cold,idle,pages] [--runs N]
        [--target NAME=REF[:VAR=VALUE,...]] [--json PATH]

On a machine shared with other work absolute numbers move by tens of percent from minute to
minute; what holds is the ratio of targets measured one after the other in the same rounds.
Each target is a pyshelf at a git ref (`git archive`d into a temporary directory; `.` is this
checkout as it is, uncommitted changes included) with optional environment settings, or
`proxpi`. Phases (the same measurements as bench/compare/__main__.py, see bench/README.md):

- `cold`: on a new server with an empty data directory each time, pip's requests replayed once
  (time per kind: pages, sidecars, files; and the server's CPU seconds, which other load
  moves far less than wall time), then `pip install` and `uv pip install` of bench-meta.
  `replay`: the replay alone.
- `idle`: startup to the first mirrored page, then RSS and PSS of all processes once idle.
- `pages`: requests/s of the stage index's 3-file page (HTML, JSON, 304) with wrk, 8
  connections, on a server primed by one pip install.
- `warm`: pip's requests replayed on warm servers (primed by one pip install, all running
  side by side), next to the static upstream (nginx) and the gunicorn floor
  (bench/compare/floor.py); a target with `FRONT=nginx` (and `ACCEL_REDIRECT_PREFIX=
  /_pyshelf_blobs`) is measured through nginx in front of it (bench/compare/front.py):
  whole passes for about `--replay-seconds` per sample, `--runs`
  samples per target, taking turns; ms per pass (wall, the server's CPU, by kind) and the
  ratio to the upstream.

Prints medians with min-max per target and the ratio of each target to the first one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from tests.conftest import free_port

from . import clients, packages
from .__main__ import FLOOR, PAGE_FORMATS, UPSTREAM, log, orders, page_headers
from .clients import median, record_pip
from .floor import Floor
from .front import FrontNginx
from .packages import CACHE_DIR
from .servers import (
    ROOT,
    THREADS,
    WEB_CONCURRENCY,
    Proxpi,
    Pyshelf,
    Server,
    cpu_ticks,
    ensure_venv,
    memory_kib,
    session_pids,
)
from .upstream import Upstream, ensure_tools, prepared_upstream

SMALL_PAGE = "bench-pkg-02"
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Target:
    """A pyshelf at `ref` with `env` on top of the benchmark's, or proxpi (ref None)."""

    name: str
    ref: str | None
    env: dict[str, str]
    root: Path | None = None  # the checkout it runs from


def parse_target(text: str) -> Target:
    """NAME=REF[:VAR=VALUE,...]; `proxpi` alone is proxpi. An empty VALUE unsets VAR."""
    if text == "proxpi":
        return Target("proxpi", None, {})
    name, _, rest = text.partition("=")
    ref, _, settings = rest.partition(":")
    env = dict(item.split("=", 1) for item in settings.split(",") if item)
    return Target(name, ref or ".", env)


def checkout(ref: str, work: Path) -> Path:
    """This checkout for `.`, else a `git archive` of `ref` sharing this checkout's venv."""
    if ref == ".":
        return ROOT
    target = work / f"src-{ref.replace('/', '_')}"
    if not target.exists():
        target.mkdir(parents=True)
        archive = subprocess.run(  # noqa: S603 - git of this checkout
            ["git", "-C", str(ROOT), "archive", ref],  # noqa: S607 - git from PATH
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(  # noqa: S603 - tar from PATH on our own archive
            ["tar", "-x", "-C", str(target)],  # noqa: S607
            input=archive,
            check=True,
        )
        (target / ".venv").symlink_to(ROOT / ".venv")
    return target


@dataclasses.dataclass
class PyshelfAt(Pyshelf):
    """pyshelf from another directory, with extra environment."""

    NAME: ClassVar[str] = "pyshelf"
    root: Path = ROOT
    extra_env: dict[str, str] = dataclasses.field(default_factory=dict)

    def cwd(self) -> Path:
        return self.root

    def command(self) -> tuple[list[str], dict[str, str]]:
        _argv, env = super().command()
        for key, value in self.extra_env.items():
            if value:
                env[key] = value
            else:
                env.pop(key, None)
        return [str(self.root / "entrypoint.sh"), "serve"], env


def new_server(target: Target, work: Path, upstream_url: str, count: int) -> Server:
    directory = work / "servers" / f"{target.name}-{count}"
    if target.ref is None:
        return Proxpi(directory, upstream_url)
    assert target.root is not None
    return PyshelfAt(directory, upstream_url, root=target.root, extra_env=target.env)


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def both(server_pids: Any, leader: int) -> list[int]:
    """A server's processes and those of the nginx in front of it."""
    return [*server_pids(), *session_pids(leader)]


def measure_warm(
    targets: list[Target],
    upstream: Upstream,
    recorded: list[dict[str, str]],
    sizes: dict[str, int],
    start: Any,
    stop: Any,
    scratch: Path,
    expected: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The warm replay on every target at once, next to the upstream and the gunicorn floor:
    wall time per pass and the server's CPU time per pass (its processes' user + system time,
    which other load on the machine moves far less)."""
    plans = {UPSTREAM: clients.replay_plan(upstream.simple_url, recorded, sizes)[0]}
    floor = Floor(upstream.www, upstream.files, free_port(), WEB_CONCURRENCY, THREADS)
    servers: list[Server] = []
    fronts: list[FrontNginx] = []
    try:
        floor.start()
        assert upstream.process is not None
        assert floor.process is not None
        pids = {
            UPSTREAM: partial(session_pids, upstream.process.pid),
            FLOOR: partial(session_pids, floor.process.pid),
        }
        plans[FLOOR] = [
            dataclasses.replace(r, url=r.url.replace(upstream.url, floor.url))
            for r in plans[UPSTREAM]
        ]
        for target in targets:
            server = start(target)
            servers.append(server)
            simple_url = server.stage_simple_url()
            pids[target.name] = server.pids
            if target.env.get("FRONT") == "nginx":  # nginx in front, sending the blobs
                front = FrontNginx(
                    server.work_dir / "front",
                    server.work_dir,
                    server.data_dir / "blobs",
                    free_port(),
                    backend=server.port,
                )
                fronts.append(front)
                front.start()
                assert front.process is not None
                simple_url = simple_url.replace(server.url, front.url)
                pids[target.name] = partial(both, server.pids, front.process.pid)
            clients.install("pip", simple_url, packages.META_PROJECT, scratch, expected)
            server.wait_until_idle()
            plans[target.name] = clients.replay_plan(simple_url, recorded, sizes)[0]
        measured: dict[str, Any] = {}
        for name, requests in plans.items():
            clients.run_plan(requests, 1)  # warms connections and the OS cache
            calibration = clients.run_plan(requests, 1)["seconds"]
            passes = max(1, min(50, math.ceil(args.replay_seconds / max(calibration, 1e-6))))
            measured[name] = {"passes": passes, "requests": len(requests), "samples": []}
        for order in orders(list(plans), args.runs):
            for name in order:
                row = measured[name]
                ticks = cpu_ticks(pids[name]())
                sample = clients.run_plan(plans[name], row["passes"])
                sample["cpu_seconds"] = (cpu_ticks(pids[name]()) - ticks) / TICKS_PER_SECOND
                row["samples"].append(sample)
    finally:
        for front in fronts:
            front.stop()
        for server in servers:
            stop(server)
        floor.stop()
    print(f"\nwarm replay: ms per pass, median of {args.runs} (min-max); x the upstream's median")
    base: dict[str, float] = {}
    for name, row in measured.items():
        samples = row["samples"]
        row["errors"] = sum(s["errors"] for s in samples)
        columns = {
            "wall": [s["seconds"] / s["passes"] for s in samples],
            "server CPU": [s["cpu_seconds"] / s["passes"] for s in samples],
            **{
                kind: [s["seconds_by_kind"].get(kind, 0.0) / s["passes"] for s in samples]
                for kind in ("page", "metadata", "file")
            },
        }
        row["ms_per_pass"] = {k: [v * 1000 for v in values] for k, values in columns.items()}
        cells = []
        for column, values in columns.items():
            value = median(values)
            base.setdefault(column, value)
            cells.append(
                f"{column} {value * 1000:.1f} ({min(values) * 1000:.1f}-{max(values) * 1000:.1f})"
                f" {value / base[column]:.2f}x"
                if base[column]
                else f"{column} -"
            )
        print(f"{name:15} " + " | ".join(cells) + f" | {row['errors']} errors")
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="main", help="git ref of the `before` target")
    parser.add_argument("--target", action="append", help="NAME=REF[:VAR=VALUE,...] or proxpi")
    parser.add_argument("--phases", default="cold", help="of cold,replay,idle,pages,warm")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--page-seconds", type=float, default=2.0)
    parser.add_argument("--replay-seconds", type=float, default=1.0, help="per warm sample")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    targets = [parse_target(t) for t in args.target or [f"before={args.before}", "after=."]]
    phases = set(args.phases.split(","))
    ensure_tools()
    ensure_venv("tools")
    if any(t.ref is None for t in targets):
        ensure_venv("proxpi")
    releases = packages.load_or_build(CACHE_DIR / f"upstream-{packages.BUILD_VERSION}")
    wanted = packages.installed(releases)
    sizes = {r.filename: r.size for r in releases}
    results: dict[str, Any] = {"targets": [dataclasses.asdict(t) for t in targets]}
    results["load_average_at_start"] = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="pyshelf-ab-") as tmp:
        work = Path(tmp)
        for target in targets:
            if target.ref is not None:
                target.root = checkout(target.ref, work)
        upstream = prepared_upstream(work, releases)
        scratch = work / "scratch"
        scratch.mkdir()
        upstream.start()
        count = 0
        running: list[Server] = []

        def start(target: Target) -> Server:
            nonlocal count
            count += 1
            server = new_server(target, work, upstream.simple_url, count)
            running.append(server)
            server.start()
            server.wait_until_idle()
            return server

        def stop(server: Server) -> None:
            running.remove(server)
            server.stop()
            complaints = [
                line
                for line in server.log().splitlines()
                if any(w in line for w in ("ERROR", "CRITICAL", "Traceback"))
            ]
            results.setdefault("complaints", []).extend(complaints[:5])
            shutil.rmtree(server.work_dir, ignore_errors=True)

        try:
            recorded = record_pip(upstream, packages.META_PROJECT, scratch, len(wanted))
            if "warm" in phases:
                results["warm"] = measure_warm(
                    targets, upstream, recorded, sizes, start, stop, scratch, len(wanted), args
                )
            plans: dict[str, list[clients.Request]] = {}
            if phases & {"cold", "replay"}:
                # Each target's file URLs come from its own pages, once warm.
                for target in targets:
                    server = start(target)
                    try:
                        clients.install(
                            "pip",
                            server.stage_simple_url(),
                            packages.META_PROJECT,
                            scratch,
                            len(wanted),
                        )
                        plan, _ = clients.replay_plan(server.stage_simple_url(), recorded, sizes)
                        plans[target.name] = [
                            dataclasses.replace(r, url=r.url.replace(server.url, "{base}"))
                            for r in plan
                        ]
                    finally:
                        stop(server)
            names = [t.name for t in targets]
            by_name = {t.name: t for t in targets}
            for number, order in enumerate(orders(names, args.runs)):
                for name in order:
                    target = by_name[name]
                    row = results.setdefault(name, {})
                    if phases & {"cold", "replay"}:
                        server = start(target)
                        try:
                            plan = [
                                dataclasses.replace(r, url=r.url.replace("{base}", server.url))
                                for r in plans[name]
                            ]
                            ticks = cpu_ticks(server.pids())
                            sample = clients.run_plan(plan, 1)
                            server.wait_until_idle(5)  # proxpi finishes downloads afterwards
                            ticks = cpu_ticks(server.pids()) - ticks
                        finally:
                            stop(server)
                        # CPU seconds the server spent: far steadier than wall time when
                        # other work shares the CPUs
                        row.setdefault("replay server CPU s", []).append(ticks / TICKS_PER_SECOND)
                        row.setdefault("replay", []).append(sample["seconds"])
                        for kind, seconds in sample["seconds_by_kind"].items():
                            row.setdefault(f"replay {kind}", []).append(seconds)
                        row["replay errors"] = row.get("replay errors", 0) + sample["errors"]
                    if "cold" in phases:
                        for tool in ("pip", "uv"):
                            server = start(target)
                            try:
                                seconds = clients.install(
                                    tool,
                                    server.stage_simple_url(),
                                    packages.META_PROJECT,
                                    scratch,
                                    len(wanted),
                                )
                            finally:
                                stop(server)
                            row.setdefault(f"{tool} cold", []).append(seconds)
                    if "idle" in phases:
                        server = start(target)
                        try:
                            time.sleep(1)
                            server.wait_until_idle()
                            rss, pss = memory_kib(server.pids())
                            row.setdefault("startup s", []).append(server.startup_seconds)
                            row.setdefault("idle RSS MiB", []).append(rss / 1024)
                            row.setdefault("idle PSS MiB", []).append(pss / 1024)
                            row.setdefault("processes", []).append(len(server.pids()))
                        finally:
                            stop(server)
                    if "pages" in phases:
                        server = start(target)
                        try:
                            clients.install(
                                "pip",
                                server.stage_simple_url(),
                                packages.META_PROJECT,
                                scratch,
                                len(wanted),
                            )
                            server.wait_until_idle()
                            url = server.stage_simple_url() + f"{SMALL_PAGE}/"
                            for fmt in PAGE_FORMATS:
                                for _ in range(4):  # every worker sees the page once
                                    headers, _check = page_headers(
                                        server, SMALL_PAGE, fmt, recorded[0]["accept_encoding"]
                                    )
                                summary = clients.wrk(
                                    url,
                                    connections=8,
                                    seconds=args.page_seconds,
                                    headers=headers,
                                    work_dir=work,
                                )
                                server.wait_until_idle(30, poll_seconds=0.1)
                                row.setdefault(f"page {fmt} req/s", []).append(
                                    summary["requests_per_second"]
                                )
                        finally:
                            stop(server)
                    log(f"round {number + 1}/{args.runs} {name} done")
        finally:
            for server in list(running):
                server.stop()
            upstream.stop()
    results["load_average_at_end"] = os.getloadavg()
    first = targets[0].name
    metrics = sorted({k for t in targets for k in results.get(t.name, {}) if k != "replay errors"})
    print(f"\nload average {results['load_average_at_start']} -> {results['load_average_at_end']}")
    print("median (min-max); ratio of medians to", first)
    for metric in metrics:
        base = results[first].get(metric)
        cells = []
        for target in targets:
            values = results[target.name].get(metric, [])
            ratio = f" {median(values) / median(base):.2f}x" if base and values else ""
            cells.append(f"{target.name} {spread(values)}{ratio}")
        print(f"{metric:22} | " + " | ".join(cells))
    for target in targets:
        errors = results[target.name].get("replay errors")
        if errors:
            print(f"{target.name}: {errors} replay errors")
    if results.get("complaints"):
        print("server complaints:", *results["complaints"][:10], sep="\n  ")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
