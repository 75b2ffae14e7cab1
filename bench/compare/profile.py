"""Where pyshelf's time goes: py-spy on its gunicorn workers under the benchmark's workloads.

    .venv/bin/python -m bench.compare.profile [--seconds 15] [--out DIR]

Starts the same nginx upstream and a pyshelf through entrypoint.sh, primes it with one pip
install, then samples every worker with `py-spy record --subprocesses` while one workload runs:
the 3-file page (JSON, and 304s) with wrk, the 10,000-file page, pip's requests replayed, the
cached 200 MB download in a loop, and its first download through the mirror. Prints the
functions with the most samples (own and inclusive) per workload and keeps py-spy's raw
stacks in DIR (for flame graphs). Only 127.0.0.1 is contacted; everything started is stopped.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from . import clients, packages
from .clients import JSON_ACCEPT, record_pip
from .packages import CACHE_DIR
from .servers import VENVS, Pyshelf, Server, ensure_venv, get
from .upstream import ensure_tools, prepared_upstream

RATE = 200  # samples per second per process
TOP = 25
FRAME_RE = re.compile(r"^(?P<function>.*) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")
SITE = "site-packages/"


def short(frame: str) -> str:
    """`function (path:line)` as `module.function`, paths cut to the package or app/ part."""
    match = FRAME_RE.match(frame)
    if not match:
        return frame
    path = match["file"]
    if SITE in path:
        path = path.split(SITE, 1)[1]
    elif "/app/" in path:
        path = "app/" + path.split("/app/", 1)[1]
    elif "/lib/python" in path:
        path = "stdlib/" + path.split("/lib/python", 1)[1].split("/", 1)[-1]
    return f"{path.removesuffix('.py')}:{match['function']}"


def summarize(raw: Path) -> dict:
    """Own and inclusive sample counts per function from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [short(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return {"total": total, "own": own, "inclusive": inclusive}


def print_summary(title: str, summary: dict, seconds: float) -> None:
    total = summary["total"] or 1
    print(
        f"\n=== {title}: {summary['total']} samples ({summary['total'] / RATE / seconds:.2f} "
        "busy worker-seconds per second)"
    )
    print(f"  own time (top {TOP}):")
    for name, count in summary["own"].most_common(TOP):
        print(f"    {100 * count / total:5.1f}%  {name}")
    print(f"  inclusive, pyshelf and libraries (top {TOP}):")
    shown = 0
    for name, count in summary["inclusive"].most_common():
        if name.startswith(("stdlib/threading", "stdlib/concurrent", "gunicorn/workers/base")):
            continue
        print(f"    {100 * count / total:5.1f}%  {name}")
        shown += 1
        if shown >= TOP:
            break


def record(server: Server, out: Path, seconds: float, workload: Callable[[], object]) -> Path:
    """py-spy on the server's master and all its workers while `workload` runs."""
    raw = out.with_suffix(".txt")
    command = [
        str(VENVS / "tools" / "bin" / "py-spy"),
        "record",
        "--pid",
        str(server.process.pid),
        "--subprocesses",
        "--rate",
        str(RATE),
        "--duration",
        str(round(seconds)),
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(raw),
    ]
    spy = subprocess.Popen(  # noqa: S603 - py-spy from our venv, built argv
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        time.sleep(1.0)  # py-spy attaches
        stop = threading.Event()

        def loop() -> None:
            deadline = time.monotonic() + seconds - 1
            while not stop.is_set() and time.monotonic() < deadline:
                workload()

        runner = threading.Thread(target=loop, daemon=True)
        runner.start()
        _, errors = spy.communicate(timeout=seconds + 120)
        stop.set()
        runner.join(timeout=120)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {errors.decode(errors='replace')}")
    finally:
        if spy.poll() is None:
            os.killpg(spy.pid, signal.SIGTERM)
            spy.wait(timeout=10)
    return raw


IN_PROCESS = {  # name: (path below the server, Accept, requests)
    "page-json": ("/admin/dev/+simple/bench-pkg-02/", JSON_ACCEPT, 2000),
    "page-html": ("/admin/dev/+simple/bench-pkg-02/", "text/html", 2000),
    "page-304": ("/admin/dev/+simple/bench-pkg-02/", JSON_ACCEPT, 2000),
    "many-json": (f"/admin/dev/+simple/{packages.MANY_PROJECT}/", JSON_ACCEPT, 20),
    "many-html": (f"/admin/dev/+simple/{packages.MANY_PROJECT}/", "text/html", 20),
    "many-304": (f"/admin/dev/+simple/{packages.MANY_PROJECT}/", JSON_ACCEPT, 20),
}


def in_process(data_dir: Path, upstream_url: str, files: dict[str, str]) -> None:
    """The app without gunicorn, called as WSGI in this process on a primed data directory:
    milliseconds per request and cProfile's top functions, for pages and file responses."""
    import cProfile
    import pstats

    from werkzeug.test import EnvironBuilder

    os.environ.update(
        DATA_DIR=str(data_dir),
        MIRROR_URL=upstream_url,
        LOG_LEVEL="WARNING",
        ACCESS_LOG="false",
        ENV_FILE=os.devnull,
    )
    from app import create_app

    app = create_app()
    cases = dict(IN_PROCESS)
    for name, path in files.items():
        cases[name] = (path, "*/*", 500)

    def call(environ: dict) -> tuple[str, int, dict[str, str]]:
        """One request through the whole WSGI stack: (status, body bytes, headers)."""
        answer: list = []
        body = app(environ, lambda status, headers, *exc: answer.extend((status, headers)))
        size = 0
        try:
            for chunk in body:
                size += len(chunk)
        finally:
            close = getattr(body, "close", None)
            if close:
                close()
        return answer[0], size, dict(answer[1])

    print("\n=== in process (no gunicorn): ms per request, then cProfile's top cumulative")
    for name, (path, accept, count) in cases.items():
        headers = {"Accept": accept}
        if name.endswith("-304"):  # with the validator of a first answer
            first = EnvironBuilder(path=path, headers=headers).get_environ()
            headers["If-None-Match"] = call(first)[2]["ETag"]
        environ = EnvironBuilder(path=path, headers=headers).get_environ()
        status, size, _ = call(dict(environ))
        started = time.perf_counter()
        for _ in range(count):
            call(dict(environ))
        per_request = (time.perf_counter() - started) / count
        print(f"\n--- {name}: {status}, {size} bytes, {per_request * 1000:.2f} ms per request")
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(count):
            call(dict(environ))
        profiler.disable()
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative")
        rows = []
        for (file, line, function), (_, calls, own, cumulative, _) in stats.stats.items():
            if "/app/" in file or "site-packages/" in file:
                rows.append((cumulative, own, calls, short(f"{function} ({file}:{line})")))
        for cumulative, own, calls, label in sorted(rows, reverse=True)[:18]:
            print(
                f"    {cumulative / count * 1000:7.3f} ms cum  {own / count * 1000:7.3f} ms own"
                f"  {calls / count:8.1f} calls  {label}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15, help="per workload (default 15)")
    parser.add_argument("--out", type=Path, default=CACHE_DIR / "profiles", help="raw stacks")
    parser.add_argument(
        "--in-process-only", action="store_true", help="skip py-spy: only the in-process profile"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    ensure_tools()
    ensure_venv("tools")
    args.out.mkdir(parents=True, exist_ok=True)
    releases = packages.load_or_build(CACHE_DIR / f"upstream-{packages.BUILD_VERSION}")
    wanted = packages.installed(releases)
    sizes = {r.filename: r.size for r in releases}
    huge = next(r for r in releases if r.project == packages.HUGE_PROJECT)
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="pyshelf-profile-") as tmp:
        work = Path(tmp)
        upstream = prepared_upstream(work, releases)
        upstream.start()
        try:
            scratch = work / "scratch"
            scratch.mkdir()
            recorded = record_pip(upstream, packages.META_PROJECT, scratch, len(wanted))
            server = Pyshelf(work / "pyshelf", upstream.simple_url)
            servers.append(server)
            server.start()
            clients.install(
                "pip", server.stage_simple_url(), packages.META_PROJECT, scratch, len(wanted)
            )
            plan, _ = clients.replay_plan(server.stage_simple_url(), recorded, sizes)
            huge_url = clients.file_urls(server.stage_simple_url(), [huge.project])[huge.filename][
                0
            ]
            clients.download(huge_url, huge.size)
            small = server.stage_simple_url() + "bench-pkg-02/"
            many = server.stage_simple_url() + f"{packages.MANY_PROJECT}/"
            _, answer, _ = get(small, {"Accept": JSON_ACCEPT})
            etag = answer.get("etag", "")
            server.wait_until_idle()

            def wrk(url: str, headers: dict[str, str]) -> Callable[[], object]:
                return lambda: clients.wrk(
                    url, connections=8, seconds=args.seconds - 2, headers=headers, work_dir=work
                )

            workloads = {
                "page-json": wrk(small, {"Accept": JSON_ACCEPT}),
                "page-304": wrk(small, {"Accept": JSON_ACCEPT, "If-None-Match": etag}),
                "many-json": lambda: clients.closed_loop(
                    many, {"Accept": JSON_ACCEPT}, connections=4, seconds=args.seconds - 3
                ),
                "many-html": lambda: clients.closed_loop(
                    many, {"Accept": "text/html"}, connections=4, seconds=args.seconds - 3
                ),
                "replay": lambda: clients.run_plan(plan, 1),
                "download-cached": lambda: clients.download(huge_url, huge.size),
            }
            for name, workload in workloads.items() if not args.in_process_only else ():
                raw = record(server, args.out / name, args.seconds, workload)
                server.wait_until_idle(60)
                print_summary(name, summarize(raw), args.seconds)
            urls = clients.file_urls(
                server.stage_simple_url(), ["bench-pkg-02", packages.MANY_PROJECT]
            )
            newest_many = next(
                r.filename
                for r in reversed(releases)
                if r.project == packages.MANY_PROJECT and r.filename.endswith("-py3-none-any.whl")
            )
            clients.download(urls[newest_many][0], sizes[newest_many])
            files = {
                "file-small": urlsplit(urls["bench_pkg_02-1.2.0-py3-none-any.whl"][0]).path,
                "file-of-many": urlsplit(urls[newest_many][0]).path,
                "file-huge": urlsplit(huge_url).path,
            }
            server.stop()
            in_process(server.data_dir, upstream.simple_url, files)
            if args.in_process_only:
                return 0

            cold = Pyshelf(work / "pyshelf-cold", upstream.simple_url)
            servers.append(cold)
            cold.start()
            cold_url = clients.file_urls(cold.stage_simple_url(), [huge.project])[huge.filename][0]
            cold.wait_until_idle()
            raw = record(
                cold,
                args.out / "download-cold",
                args.seconds,
                _once(lambda: clients.download(cold_url, huge.size)),
            )
            print_summary("download-cold", summarize(raw), args.seconds)

            # pip's requests on an empty server: pages, sidecars and files all from upstream
            fresh = Pyshelf(work / "pyshelf-cold-replay", upstream.simple_url)
            servers.append(fresh)
            fresh.start()
            fresh.wait_until_idle()
            cold_plan = [
                dataclasses.replace(r, url=r.url.replace(server.url, fresh.url)) for r in plan
            ]
            raw = record(
                fresh,
                args.out / "replay-cold",
                args.seconds,
                _once(lambda: clients.run_plan(cold_plan, 1)),
            )
            print_summary("replay-cold", summarize(raw), args.seconds)
        finally:
            for server in servers:
                with contextlib.suppress(Exception):
                    server.stop()
            upstream.stop()
    print(f"\nraw stacks (py-spy --format raw) in {args.out}")
    return 0


def _once(action: Callable[[], object]) -> Callable[[], object]:
    """A workload that runs `action` the first time only (then idles until the end)."""
    done = threading.Event()

    def run() -> None:
        if not done.is_set():
            done.set()
            action()
        else:
            time.sleep(0.1)

    return run


if __name__ == "__main__":
    sys.exit(main())
