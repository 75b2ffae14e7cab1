"""Benchmark: simple pages with the supply-chain guard on (a 3d cooldown and 1,000 block rules)
against the same server with it off, in one run, as a ratio of requests per second.

One server mirrors a FakeUpstream of PROJECTS projects x VERSIONS wheels with upload times from
an hour to 100 days old; clients read `admin/dev` (bases root/pypi) project pages as PEP 691
JSON, two ways: as installers do (answered from the page cache: the usual case) and with
`If-None-Match: *`, which the page cache never answers (every request builds the page: merges
the indexes and asks the guard about every file). Rounds alternate off/on so drift hits both
alike; besides requests per second it prints requests per CPU second of the server's workers,
which a busy machine disturbs less. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/guard.py`
    sys.path.insert(0, str(ROOT))

from tests.builders import make_wheel  # noqa: E402 - needs ROOT on sys.path first
from tests.conftest import ADMIN_PASSWORD, LiveServer, basic_auth  # noqa: E402
from tests.fake_upstream import FakeUpstream  # noqa: E402

SEED = 20_261_207
PROJECTS = 40
VERSIONS = 20
RULES = 1000
ACCEPT = "application/vnd.pypi.simple.v1+json"
CLIENT_PROCESSES = 4
THREADS_PER_PROCESS = 2


def publish(upstream: FakeUpstream) -> list[str]:
    """PROJECTS projects of VERSIONS wheels each, uploaded from 100 days to an hour ago."""
    rng = random.Random(SEED)  # noqa: S311 - test data, not secrets
    now = datetime.now(UTC)
    names = []
    for i in range(PROJECTS):
        name = f"guard-bench-{i:02d}"
        names.append(name)
        for v in range(VERSIONS):
            age = timedelta(hours=rng.uniform(1, 100 * 24))
            upstream.add_file(name, *make_wheel(name, f"1.{v}"), upload_time=now - age)
    return names


def rules(names: list[str]) -> list[str]:
    """RULES block rules: most name projects that are not there, some hit versions here."""
    found = [f"{name}==1.{i % VERSIONS}: bench rule" for i, name in enumerate(names)]
    missing = [f"absent-{i:04d}>=2,<3: bench rule" for i in range(RULES - len(found))]
    return found + missing


def _client(args: tuple[str, list[str], bool, float]) -> int:
    """Requests answered 200 by one process's threads in `seconds`."""
    import threading

    url, names, build, seconds = args
    parts = urlsplit(url)
    counts = [0] * THREADS_PER_PROCESS
    deadline = time.monotonic() + seconds

    def loop(slot: int) -> None:
        rng = random.Random(slot)  # noqa: S311
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        headers = {"Accept": ACCEPT}
        if build:
            headers["If-None-Match"] = "*"
        while time.monotonic() < deadline:
            name = rng.choice(names)
            connection.request("GET", f"/admin/dev/+simple/{name}/", headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status in (200, 304):  # 304: If-None-Match: * (built all the same)
                counts[slot] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(THREADS_PER_PROCESS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts)


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU seconds the processes have used (/proc/PID/stat, proc(5))."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
    return total / os.sysconf("SC_CLK_TCK")


def measure(
    server: LiveServer, names: list[str], *, build: bool, seconds: float
) -> tuple[float, float]:
    """Requests per second of CLIENT_PROCESSES x THREADS_PER_PROCESS keep-alive clients, and
    requests per CPU second of the server's workers (steadier on a busy machine)."""
    pids = server.worker_pids()
    cpu_before = cpu_seconds(pids)
    with multiprocessing.Pool(CLIENT_PROCESSES) as pool:
        done = sum(pool.map(_client, [(server.url, names, build, seconds)] * CLIENT_PROCESSES))
    return done / seconds, done / max(cpu_seconds(pids) - cpu_before, 1e-9)


def configure(server: LiveServer, body: object) -> None:
    """PATCH root/pypi's settings as admin."""
    connection = http.client.HTTPConnection(
        urlsplit(server.url).hostname, urlsplit(server.url).port
    )
    connection.request(
        "PATCH",
        "/root/pypi",
        body=json.dumps(body),
        headers={
            "Authorization": basic_auth("admin", ADMIN_PASSWORD),
            "Content-Type": "application/json",
            "Accept": "application/json",
        },
    )
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        raise SystemExit(f"PATCH root/pypi: {response.status} {response.reason}")


def main() -> None:
    """Alternate guard off/on rounds; print requests/s and the on/off ratio per page kind."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    options = parser.parse_args()
    guard_on = {"mirror_min_age": "3d"}
    guard_off = {"mirror_min_age": "0", "blocked": []}
    with FakeUpstream() as upstream, tempfile.TemporaryDirectory() as tmp:
        names = publish(upstream)
        guard_on["blocked"] = rules(names)  # type: ignore[assignment]
        server = LiveServer(
            Path(tmp) / "data",
            {
                "ADMIN_PASSWORD": ADMIN_PASSWORD,
                "MIRROR_URL": upstream.url,
                "WEB_CONCURRENCY": "2",
                "THREADS": "8",
                "ACCESS_LOG": "false",
                "LOG_LEVEL": "WARNING",
            },
        )
        server.start()
        try:
            for name in names:  # every page fetched from the upstream once
                server.get(f"/admin/dev/+simple/{name}/", headers={"Accept": ACCEPT})
            results: dict[tuple[str, bool], list[tuple[float, float]]] = {}
            for run in range(options.runs):
                order = [False, True] if run % 2 == 0 else [True, False]
                for is_on in order:
                    configure(server, guard_on if is_on else guard_off)
                    for kind, build in (("cached", False), ("built", True)):
                        for name in names:  # the settings changed: pages are built anew
                            server.get(f"/admin/dev/+simple/{name}/", headers={"Accept": ACCEPT})
                        rate = measure(server, names, build=build, seconds=options.seconds)
                        results.setdefault((kind, is_on), []).append(rate)
                        print(
                            f"run {run + 1} guard {'on ' if is_on else 'off'} {kind}: "
                            f"{rate[0]:.0f}/s, {rate[1]:.0f} per worker CPU second"
                        )
        finally:
            server.stop()
    print(f"\n{PROJECTS} projects x {VERSIONS} files; guard on: 3d cooldown + {RULES} block rules")
    for kind in ("cached", "built"):
        for column, unit in ((0, "requests/s"), (1, "requests/CPU-s")):
            off = statistics.median(r[column] for r in results[(kind, False)])
            on = statistics.median(r[column] for r in results[(kind, True)])
            print(f"{kind:6} pages, {unit:14}: off {off:.0f}, on {on:.0f}, on/off {on / off:.3f}")


if __name__ == "__main__":
    main()
