"""The cached 200 MB download: pyshelf at git refs next to nginx, taking turns in one run.

    .venv/bin/python -m bench.compare.download [--target NAME=REF[:VAR=VALUE,...]] [--runs N]
        [--repeats N] [--fresh] [--memory none|servers|all] [--json PATH]

Targets as bench/compare/ab.py reads them (default `main=main` and `after=.`). Every target's
server runs side by side on its own data directory, the wheel downloaded once through it (the
mirror caches it; `--fresh`: a new server per sample, as make bench does). Then each round
downloads it from nginx (`static`, the ceiling) and from every target, in a different order
per round (`orders`), `--repeats` times each: the median of those is the round's sample
(`--memory`: with memory sampled during each, which slows this client). Prints per target the
median MB/s of the rounds (min-max), the ratio to nginx's median, and the server's CPU seconds
per download (its processes' user + system time, steadier than MB/s on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from . import clients, packages
from .__main__ import huge_release, log, orders
from .ab import TICKS_PER_SECOND, Target, checkout, new_server, parse_target, spread
from .clients import median
from .servers import Server, cpu_ticks, session_pids
from .upstream import ensure_tools, prepared_upstream

STATIC = "static"


def timed(url: str, size_bytes: int, pids: Any, repeats: int) -> dict[str, Any]:
    """The median by speed of `repeats` downloads, with `pids`' memory sampled during each when
    given (clients.steady_download times only unsampled ones)."""
    samples = sorted(
        (clients.download(url, size_bytes, pids) for _ in range(repeats)),
        key=lambda s: s["megabytes_per_second"],
    )
    return samples[len(samples) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", help="NAME=REF[:VAR=VALUE,...]")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="downloads per sample")
    parser.add_argument(
        "--memory",
        choices=("none", "servers", "all"),
        default="none",
        help="whose downloads are timed while the server's memory is sampled: `servers` "
        "(pyshelf's, not nginx's: make bench until 2026-12-08) or `all` (nginx's processes "
        "sampled during its own)",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="a new server per sample, as `make bench` does"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    targets = [parse_target(t) for t in args.target or ["main=main", "after=."]]
    ensure_tools()
    releases = packages.load_or_build(packages.CACHE_DIR / f"upstream-{packages.BUILD_VERSION}")
    huge = huge_release(releases)
    results: dict[str, Any] = {"load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="pyshelf-download-") as tmp:
        work = Path(tmp)
        upstream = prepared_upstream(work, releases)
        upstream.start()
        servers: list[Server] = []
        try:
            urls = {STATIC: upstream.files_url + huge.path}
            pids: dict[str, Any] = {}
            count = 0

            def start(target: Target) -> None:
                """A new server on an empty data directory; the wheel downloaded through it once
                (the mirror caches it)."""
                nonlocal count
                count += 1
                server = new_server(target, work, upstream.simple_url, count)
                servers.append(server)
                server.start()
                url = clients.file_urls(server.stage_simple_url(), [huge.project])[huge.filename]
                clients.download(url[0], huge.size)
                server.wait_until_idle()
                urls[target.name], pids[target.name] = url[0], server.pids

            for target in targets:
                target.root = checkout(target.ref or ".", work)
                if not args.fresh:
                    start(target)
            by_name = {t.name: t for t in targets}
            for number, order in enumerate(orders([STATIC, *by_name], args.runs)):
                for name in order:
                    if args.fresh and name in by_name:
                        start(by_name[name])
                    ticks = cpu_ticks(pids[name]()) if name in pids else 0
                    sampled = pids.get(name) if args.memory != "none" else None
                    if name == STATIC and args.memory == "all":
                        assert upstream.process is not None
                        sampled = partial(session_pids, upstream.process.pid)
                    sample = timed(urls[name], huge.size, sampled, args.repeats)
                    if name in pids:
                        cpu = (cpu_ticks(pids[name]()) - ticks) / TICKS_PER_SECOND / args.repeats
                        sample["cpu_seconds"] = cpu
                    results.setdefault(name, []).append(sample)
                    if args.fresh and name in by_name:
                        server = servers.pop()
                        server.stop()
                        shutil.rmtree(server.work_dir, ignore_errors=True)
                log(f"round {number + 1}/{args.runs} done")
        finally:
            for server in servers:
                server.stop()
            upstream.stop()
    results["load_average_at_end"] = os.getloadavg()
    print(f"\nload average {results['load_average_at_start']} -> {results['load_average_at_end']}")
    print(f"cached {huge.size / 1e6:.0f} MB download: MB/s, median of {args.runs} rounds (min-max)")
    base = median([s["megabytes_per_second"] for s in results[STATIC]])
    for name in urls:
        speeds = [s["megabytes_per_second"] for s in results[name]]
        cpu = [s["cpu_seconds"] for s in results[name] if "cpu_seconds" in s]
        line = f"{name:10} {spread(speeds)} {median(speeds) / base:.2f}x nginx"
        if cpu:
            line += f" | server CPU s per download {spread(cpu)}"
        print(line)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
