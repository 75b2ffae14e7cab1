"""Where a cold request's time goes: pip's requests replayed through pyshelf in process, on a new
data directory each sample, with what each request costs in database commits, fsyncs and new
upstream connections.

    .venv/bin/python -m bench.compare.coldprof [--samples 3] [--profile]

Starts the nginx upstream, records pip's requests (as bench/compare/ab.py does), takes the file
URLs from one pyshelf server's pages, then for each sample: `entrypoint.sh prepare` on a new
data directory and, in a new process, the app called as WSGI (no gunicorn, one thread) for the
88 requests in order. Prints ms per kind of request and, per request, the commits, fsyncs and
upstream connections opened; `--profile` adds cProfile's top functions by cumulative time
(cProfile measures wall time: waits on the upstream, the disk and locks count). Only 127.0.0.1
is contacted; everything started is stopped.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.conftest import clean_env

from . import clients, packages
from .clients import record_pip
from .packages import CACHE_DIR
from .profile import short
from .servers import ROOT, Pyshelf
from .upstream import ensure_tools, prepared_upstream

TOP = 70


def inner(data_dir: Path, plan_path: Path, out_path: Path, with_profile: bool) -> None:
    """One cold pass in this process: the app as WSGI on a prepared, empty data directory."""
    import cProfile
    import pstats

    import urllib3.connection
    from sqlalchemy import event
    from sqlalchemy.orm import Session
    from werkzeug.test import EnvironBuilder

    from app import create_app

    counts: collections.Counter[str] = collections.Counter()
    by_request: list[dict[str, Any]] = []
    real_fsync, real_connect = os.fsync, urllib3.connection.HTTPConnection.connect

    def fsync(fd: int) -> None:
        counts["fsync"] += 1
        started = time.perf_counter()
        if not os.environ.get("COLDPROF_NO_FSYNC"):  # what fsync costs: an experiment only
            real_fsync(fd)
        counts["fsync_ms"] += (time.perf_counter() - started) * 1000  # type: ignore[assignment]

    def connect(self: Any) -> None:
        counts["upstream connections"] += 1
        real_connect(self)

    os.fsync = fsync
    if os.environ.get("COLDPROF_NO_SEARCH"):  # what search indexing costs: an experiment only
        from app.services import fulltext

        fulltext.drain = lambda *_args, **_kwargs: 0  # type: ignore[assignment]
    urllib3.connection.HTTPConnection.connect = connect  # type: ignore[method-assign]
    event.listen(Session, "after_commit", lambda _s: counts.update(["commits"]))
    app = create_app()
    plan = json.loads(plan_path.read_text())

    def call(request: dict[str, Any]) -> tuple[str, int]:
        path = request["url"]
        environ = EnvironBuilder(path=path, headers=dict(request["headers"])).get_environ()
        answer: list[Any] = []
        body = app(environ, lambda status, headers, *exc: answer.extend((status, headers)))
        size = 0
        try:
            for chunk in body:
                size += len(chunk)
        finally:
            close = getattr(body, "close", None)
            if close:
                close()
        return answer[0], size

    profiler = cProfile.Profile() if with_profile else None
    if profiler:
        profiler.enable()
    for request in plan:
        before = dict(counts)
        started = time.perf_counter()
        status, size = call(request)
        seconds = time.perf_counter() - started
        delta = {k: counts[k] - before.get(k, 0) for k in counts}
        by_request.append(
            {
                "kind": request["kind"],
                "url": request["url"],
                "status": status,
                "bytes": size,
                "ms": seconds * 1000,
                **delta,
            }
        )
    if profiler:
        profiler.disable()
    top: list[tuple[float, float, int, str]] = []
    own_top: list[tuple[float, float, int, str]] = []
    if profiler:
        stats = pstats.Stats(profiler)
        for (file, line, function), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
            if "/app/" in file or "site-packages/" in file or function.startswith("<built-in"):
                label = short(f"{function} ({file}:{line})")
                top.append((cumulative * 1000, own * 1000, calls, label))
        top.sort(reverse=True)
        own_top = sorted(top, key=lambda row: -row[1])[:TOP]
    out_path.write_text(json.dumps({"requests": by_request, "top": top[:TOP], "own": own_top}))


def plan_paths(upstream: Any, work: Path, scratch: Path, wanted: int, sizes: dict) -> list[dict]:
    """pip's recorded requests as paths on a pyshelf (file URLs from one server's pages)."""
    recorded = record_pip(upstream, packages.META_PROJECT, scratch, wanted)
    server = Pyshelf(work / "plan-server", upstream.simple_url)
    server.start()
    try:
        clients.install("pip", server.stage_simple_url(), packages.META_PROJECT, scratch, wanted)
        plan, _ = clients.replay_plan(server.stage_simple_url(), recorded, sizes)
    finally:
        server.stop()
    return [
        {"kind": r.kind, "url": r.url.replace(server.url, ""), "headers": list(r.headers)}
        for r in plan
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile's top functions too")
    parser.add_argument("--only", default="", help="only the requests whose URL has this")
    parser.add_argument("--inner", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        inner(*args.inner, with_profile=args.profile)
        return 0
    ensure_tools()
    releases = packages.load_or_build(CACHE_DIR / f"upstream-{packages.BUILD_VERSION}")
    wanted = len(packages.installed(releases))
    sizes = {r.filename: r.size for r in releases}
    with tempfile.TemporaryDirectory(prefix="pyshelf-coldprof-") as tmp:
        work = Path(tmp)
        upstream = prepared_upstream(work, releases)
        scratch = work / "scratch"
        scratch.mkdir()
        upstream.start()
        try:
            plan = plan_paths(upstream, work, scratch, wanted, sizes)
            plan_path = work / "plan.json"
            plan_path.write_text(json.dumps([r for r in plan if args.only in r["url"]]))
            samples = []
            for number in range(args.samples):
                data_dir = work / f"data-{number}"
                env = clean_env(
                    DATA_DIR=str(data_dir),
                    MIRROR_URL=upstream.simple_url,
                    ADMIN_PASSWORD=secrets.token_hex(16),
                    LOG_LEVEL="WARNING",
                    ACCESS_LOG="false",
                    PYSHELF_PYTHON=str(ROOT / ".venv" / "bin" / "python"),
                )
                subprocess.run(  # noqa: S603 - our own entrypoint
                    [str(ROOT / "entrypoint.sh"), "prepare"],
                    env=env,
                    check=True,
                    capture_output=True,
                )
                out = work / f"out-{number}.json"
                subprocess.run(  # noqa: S603 - this module again, in a new process
                    [
                        sys.executable,
                        "-m",
                        "bench.compare.coldprof",
                        "--inner",
                        str(data_dir),
                        str(plan_path),
                        str(out),
                        *(["--profile"] if args.profile else []),
                    ],
                    env={**env, "PYTHONPATH": str(ROOT), "ENV_FILE": os.devnull},
                    cwd=ROOT,
                    check=True,
                )
                samples.append(json.loads(out.read_text()))
        finally:
            upstream.stop()
    report(samples)
    return 0


def report(samples: list[dict[str, Any]]) -> None:
    """Medians over the samples: ms per kind, and per request what it cost."""
    print(f"load average {os.getloadavg()}")
    kinds = sorted({r["kind"] for r in samples[0]["requests"]})
    counters = sorted(
        {k for s in samples for r in s["requests"] for k in r}
        - {"kind", "url", "status", "bytes", "ms"}
    )
    for kind in [*kinds, "all"]:
        rows = [[r for r in s["requests"] if kind in ("all", r["kind"])] for s in samples]
        total_ms = statistics.median(sum(r["ms"] for r in rs) for rs in rows)
        cells = [f"{kind:9} {len(rows[0]):3} requests  {total_ms:8.1f} ms"]
        for counter in counters:
            value = statistics.median(sum(r.get(counter, 0) for r in rs) for rs in rows)
            cells.append(f"{counter} {value / len(rows[0]):.2f}/request")
        print("  ".join(cells))
    print("\nslowest requests of the last sample:")
    for r in sorted(samples[-1]["requests"], key=lambda r: -r["ms"])[:12]:
        counts = {k: v for k, v in r.items() if k in counters and v}
        print(f"  {r['ms']:8.1f} ms  {r['kind']:8} {r['url'].rsplit('/', 2)[-2][:50]}  {counts}")
    bad = [r for s in samples for r in s["requests"] if not r["status"].startswith("200")]
    if bad:
        print("not 200:", bad[:5])
    if samples[0]["top"]:
        print("\ncProfile, last sample, top cumulative (ms for the whole pass):")
        for cumulative, own, calls, label in samples[-1]["top"]:
            print(f"  {cumulative:8.1f} cum {own:8.1f} own {calls:6} calls  {label}")
        print("\nby own time:")
        for cumulative, own, calls, label in samples[-1]["own"]:
            print(f"  {cumulative:8.1f} cum {own:8.1f} own {calls:6} calls  {label}")


if __name__ == "__main__":
    raise SystemExit(main())
