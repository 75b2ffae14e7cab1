"""pyshelf on its storage back ends, side by side: `python -m bench.compare.backends [--quick]`.

The page-throughput and download phases of `python -m bench.compare`, run against pyshelf alone
on (a) SQLite + local disk, (b) PostgreSQL + S3 and, for downloads, (c) PostgreSQL + S3 with
S3_REDIRECT=true, the set-ups taking turns in one run; medians. PostgreSQL and the S3 server
start as the tests start them (tests/pgserver.py: Debian's server in a temporary directory on a
loopback port; tests/s3server.py: moto's server). Writes the "Backends" section of
bench/RESULTS.md. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

from tests.pgserver import PostgresServer, database_name, wait_until_ready
from tests.s3server import CREDENTIALS, PREFIX, S3Server, bucket_name

from . import packages, report
from .__main__ import (
    RESULTS,
    Fleet,
    Plan,
    host,
    log,
    measure_downloads,
    measure_pages,
)
from .packages import CACHE_DIR
from .report import Numbers, _f, _ratio, _table
from .servers import THREADS, WEB_CONCURRENCY, Pyshelf, Server
from .upstream import Upstream, ensure_tools, prepared_upstream

SQLITE = "sqlite+disk"
POSTGRES_S3 = "postgres+s3"
REDIRECT = "postgres+s3+redirect"
BACKENDS = (SQLITE, POSTGRES_S3, REDIRECT)
PAGE_BACKENDS = (SQLITE, POSTGRES_S3)  # S3_REDIRECT changes file downloads only
LABELS = {
    SQLITE: "SQLite + local disk",
    POSTGRES_S3: "PostgreSQL + S3 (moto)",
    REDIRECT: "PostgreSQL + S3 (moto), S3_REDIRECT=true",
}
PIP_ACCEPT_ENCODING = "gzip, deflate"  # what pip sends
HEADING = "## Backends"
PHASES = ("pages", "downloads")


class Backing:
    """The PostgreSQL and S3 servers, and one database and bucket per pyshelf data directory."""

    def __init__(self) -> None:
        self.postgres: PostgresServer | None = None
        self.s3: S3Server | None = None

    def start(self) -> Backing:
        self.postgres = PostgresServer().start()
        wait_until_ready(self.postgres)
        self.s3 = S3Server().start()
        return self

    def stop(self) -> None:
        if self.s3 is not None:
            self.s3.stop()
        if self.postgres is not None:
            self.postgres.stop()

    def _started(self) -> tuple[PostgresServer, S3Server]:
        if self.postgres is None or self.s3 is None:
            raise RuntimeError("Backing.start() first")
        return self.postgres, self.s3

    def env(self, backend: str, data_dir: Path) -> dict[str, str]:
        """The variables that put a pyshelf on `data_dir` on `backend` (a new, empty database
        and bucket for PostgreSQL + S3: entrypoint.sh migrates it as on a first start)."""
        if backend == SQLITE:
            return {}
        postgres, s3 = self._started()
        env = {
            "DATABASE_URL": postgres.create_database(database_name(data_dir)),
            "SECRET_KEY": secrets.token_hex(16),
            "STORAGE_URL": f"s3://{s3.create_bucket(bucket_name(data_dir))}/{PREFIX}",
            "S3_ENDPOINT_URL": s3.endpoint_url,
            **CREDENTIALS,
        }
        if backend == REDIRECT:
            env["S3_REDIRECT"] = "true"
        return env

    def drop(self, backend: str, data_dir: Path) -> None:
        """Drop the database and the bucket (moto keeps its objects in memory)."""
        if backend == SQLITE:
            return
        postgres, s3 = self._started()
        postgres.drop_database(database_name(data_dir))
        s3.drop_bucket(bucket_name(data_dir))

    def versions(self) -> dict[str, str]:
        bin_dir = self.postgres.bin_dir if self.postgres else None
        postgres = "?"
        if bin_dir is not None:
            result = subprocess.run(  # noqa: S603 - Debian's postgres binary, --version
                [str(bin_dir / "postgres"), "--version"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            # "postgres (PostgreSQL) 15.18 (Debian ...)": the part after the program's name
            postgres = result.stdout.strip().removeprefix("postgres (PostgreSQL) ") or "?"
        return {
            "postgres": postgres,
            "moto": version("moto"),
            "boto3": version("boto3"),
            "psycopg": version("psycopg"),
        }


@dataclass
class BackendPyshelf(Pyshelf):
    """pyshelf as bench.compare runs it, plus the environment of one back end."""

    NAME: ClassVar[str] = "pyshelf"
    backend: str = SQLITE
    extra_env: dict[str, str] = field(default_factory=dict)

    def command(self) -> tuple[list[str], dict[str, str]]:
        argv, env = super().command()
        env.update(self.extra_env)
        return argv, env


class BackendFleet(Fleet):
    """Fleet whose server names are back ends: pyshelf on a new database and bucket each."""

    def __init__(self, work_dir: Path, upstream: Upstream, backing: Backing) -> None:
        super().__init__(work_dir, upstream)
        self.backing = backing

    def start(self, name: str) -> Server:
        self.count += 1
        work_dir = self.work_dir / f"{name}-{self.count}"
        server = BackendPyshelf(
            work_dir,
            self.upstream.simple_url,
            backend=name,
            extra_env=self.backing.env(name, work_dir / "data"),
        )
        self.running.append(server)
        server.start()
        return server

    def stop(self, server: Server, *, keep_data: bool = False) -> None:
        first = len(self.complaints)
        backend = getattr(server, "backend", SQLITE)
        try:
            super().stop(server, keep_data=keep_data)
        finally:
            self.complaints[first:] = [
                line.replace("pyshelf: ", f"{backend}: ", 1) for line in self.complaints[first:]
            ]
            if not keep_data:
                self.backing.drop(backend, server.work_dir / "data")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the upstream, PostgreSQL and moto; measure; stop everything; the raw results."""
    plan = Plan.for_args(args)
    if args.quick and not args.runs:
        plan = dataclasses.replace(plan, page_repeats=2)  # still a median over turns
    phases = set(args.phases.split(",")) if args.phases else set(PHASES)
    ensure_tools()
    started = time.perf_counter()
    releases = packages.load_or_build(CACHE_DIR / f"upstream-{packages.BUILD_VERSION}")
    results: dict[str, Any] = {
        "machine": host(),
        "plan": dataclasses.asdict(plan),
        "quick": args.quick,
        "config": {"workers": WEB_CONCURRENCY, "threads": THREADS},
    }
    backing = Backing()
    with tempfile.TemporaryDirectory(prefix="pyshelf-backends-") as tmp:
        work = Path(tmp)
        upstream = prepared_upstream(work, releases)
        fleet = BackendFleet(work / "servers", upstream, backing)
        upstream.start()
        try:
            backing.start()
            results["versions"] = backing.versions()
            log(
                f"PostgreSQL {results['versions']['postgres']} on port {backing.postgres.port}, "  # type: ignore[union-attr]
                f"moto {results['versions']['moto']} on port {backing.s3.port}"  # type: ignore[union-attr]
            )
            if "pages" in phases:
                log("phase: page throughput")
                warm = {name: fleet.start(name) for name in PAGE_BACKENDS}
                for server in warm.values():
                    server.wait_until_idle()
                results["pages"] = measure_pages(warm, upstream, plan, PIP_ACCEPT_ENCODING, work)
                for server in warm.values():
                    fleet.stop(server)
            if "downloads" in phases:
                log(
                    "phase: downloads (S3 MB/s measure moto, a Python emulator, more than "
                    "pyshelf: see the note under the table)"
                )
                results["downloads"] = measure_downloads(
                    fleet, upstream, releases, plan, names=BACKENDS
                )
        finally:
            fleet.stop_all()
            upstream.stop()
            backing.stop()
    results["complaints"] = fleet.complaints
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["total_seconds"] = time.perf_counter() - started
    return results


# --- the report ---------------------------------------------------------------------------------


def _row(label: str, values: list[float | None], digits: int) -> list[str]:
    """A table row: the three set-ups (None: not measured) and PostgreSQL + S3 / SQLite."""
    return [label, *(_f(v, digits) for v in values), _ratio(values[1], values[0])]


def markdown(results: dict[str, Any]) -> str:
    """The Backends section of RESULTS.md."""
    n = Numbers(results)
    m = results["machine"]
    v = results.get("versions", {})
    plan = results["plan"]
    mode = "quick (`--quick`: short runs, fewer rounds)" if results["quick"] else "full"
    lines = [
        HEADING,
        "",
        f"pyshelf alone on its storage back ends, written by `make bench-backends` "
        f"(`python -m bench.compare.backends`, {mode}) on {m['date']}, in "
        f"{results['total_seconds'] / 60:.0f} minutes; the page and download phases of "
        "`bench.compare` (see above and bench/README.md), the set-ups taking turns in a "
        "different order each round.",
        "",
        f"- **Machine**: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, Linux "
        f"{m['kernel']}; load average {m['load_average_at_start'][0]:.2f} at the start, "
        f"{m['load_average_at_end'][0]:.2f} at the end (shared with other work: compare "
        "columns, not these numbers with other runs').",
        f"- **Versions**: pyshelf {m['pyshelf']} (gunicorn {m['gunicorn']}, "
        f"{results['config']['workers']} gthread workers x {results['config']['threads']} "
        f"threads); PostgreSQL {v.get('postgres', '?')} (a throwaway cluster started as the tests "
        f"start it: loopback TCP, fsync off); moto {v.get('moto', '?')} (its server, in memory) "
        f"with boto3 {v.get('boto3', '?')}; psycopg {v.get('psycopg', '?')}; Python "
        f"{m['python']}; {m['nginx']}; {m['wrk']}.",
        "- **Runs**: "
        + " and ".join(
            part
            for part, phase in (
                (
                    f"medians of {plan['page_repeats']} throughput runs per page configuration "
                    f"({plan['page_seconds']:g} s with wrk on the 3-file page, "
                    f"{plan['many_seconds']:g} s of closed loop on the 10,000-file one)",
                    "pages",
                ),
                (
                    f"of {plan['runs']} download rounds (a new server, database and bucket each)",
                    "downloads",
                ),
            )
            if phase in results
        )
        + ".",
        "",
    ]
    header = ["", *(LABELS[b] for b in BACKENDS), "PostgreSQL + S3 / SQLite"]
    rows = []
    if "pages" in results:
        for project, label, digits in (
            ("bench-pkg-02", "3-file page", 0),
            (packages.MANY_PROJECT, "10,000-file page", 1),
        ):
            for fmt in ("html", "json", "304"):
                for connections in plan["connections"]:
                    key = f"{project} {fmt} {connections}"
                    values = [n.rps(key, b) if b in PAGE_BACKENDS else None for b in BACKENDS]
                    rows.append(
                        _row(f"{label} {fmt.upper()}, {connections} conns, req/s", values, digits)
                    )
        for fmt in ("html", "json"):
            for q in (50, 99):
                key = f"{packages.MANY_PROJECT} {fmt}"
                values = [n.latency_ms(key, b, q) if b in PAGE_BACKENDS else None for b in BACKENDS]
                rows.append(_row(f"10,000-file page {fmt.upper()}, one client, p{q} ms", values, 1))
    if "downloads" in results:
        for state, label in (("cached", "cached"), ("cold", "first (cold, through the mirror)")):
            values = [n.download(b, state) for b in BACKENDS]
            row = _row(f"200 MB download {label}, MB/s *", values, 0)
            for i, b in enumerate(BACKENDS, start=1):
                if n.redirects(b, state):
                    row[i] += f" ({n.redirects(b, state)} redirected)"
            rows.append(row)
        rows.append(
            _row(
                "RSS while streaming the cached 200 MB, MiB over idle before the first",
                [n.stream_added_mib(b, "cached") for b in BACKENDS],
                1,
            )
        )
        rows.append(
            [
                "nginx static ceiling (same file), MB/s",
                _f(n.download("static", "cached"), 0),
                *("", "", ""),
            ]
        )
    lines += _table(header, rows)
    checks = results.get("pages", {}).get("checks", {})
    conditional = ", ".join(
        f"{LABELS[b]} {checks.get(f'{b} bench-pkg-02 304', {}).get('conditional_status')}"
        for b in PAGE_BACKENDS
    )
    lines += [
        "\\* **S3 download MB/s measures moto more than pyshelf.** moto is a Python emulator "
        "of S3 (one process, objects in memory) on the same 2 CPUs: a cached download through "
        "pyshelf reads every byte from moto, a cold one writes it to moto too, and with "
        "S3_REDIRECT=true the client downloads straight from moto's presigned URL (pyshelf "
        "only answers the 302). A first download ends only once the file is committed to the "
        "store (pyshelf holds back the last chunk until then), so on S3 it includes the whole "
        "200 MB multipart upload to moto. A real S3, MinIO or Ceph behaves differently; read "
        'these rows as "works, and roughly how much pyshelf adds", not as S3 throughput. The '
        "RSS row counts from the idle server before its first download: on S3 it includes what "
        "boto3's multipart upload of that download left allocated.",
        "",
        "Pages: the stage index admin/dev over root/pypi, pages cached before the runs, pip's "
        f"Accept-Encoding; `304` is the JSON request with the previous ETag (answered: "
        f"{conditional}). S3_REDIRECT changes file downloads only, so its page columns are "
        "empty. One client, 10,000-file page: "
        f"{plan['many_latency_requests']} sequential requests per round.",
        "",
    ]
    complaints = results.get("complaints", [])
    if complaints:
        lines += [f"Server log lines at WARNING or above: {len(complaints)}; the first ones:", ""]
        lines += ["```", *complaints[:5], "```", ""]
    else:
        lines += ["Server logs: nothing at WARNING or above.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, write the Backends section of RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes: shorter runs")
    parser.add_argument("--runs", type=int, help="rounds per measurement (default 5, quick 2)")
    parser.add_argument("--phases", help="comma-separated subset: pages,downloads")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the raw numbers")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="the Markdown whose Backends section to write"
    )
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    if args.phases and not set(args.phases.split(",")) <= set(PHASES):
        raise SystemExit(f"--phases: a subset of {','.join(PHASES)}")
    # SIGTERM (`timeout`, CI) must unwind through the `finally`s that stop the servers.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    previous = args.results.read_text() if args.results.exists() else ""
    args.results.write_text(report.replace_section(previous, HEADING, markdown(results)))
    log(
        f"wrote the Backends section of {args.results}" + (f" and {args.json}" if args.json else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
