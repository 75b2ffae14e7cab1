"""bench/RESULTS.md from the raw results: medians, ratios, and the issues' targets."""

from __future__ import annotations

from functools import partial
from typing import Any

from .clients import median, percentile

SERVERS = ("pyshelf", "devpi", "proxpi")
MIB = 1024  # the memory numbers are in KiB


def _f(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _median_of(samples: list[dict], key: str) -> float | None:
    values = [s[key] for s in samples if s.get(key) is not None]
    return median(values) if values else None


class Numbers:
    """The medians the tables and the target checks share."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.r = results

    def startup(self, name: str) -> float | None:
        row = self.r.get("startup", {}).get(name)
        return median(row["seconds"]) if row else None

    def idle_rss_mib(self, name: str) -> float | None:
        row = self.r.get("startup", {}).get(name)
        return median(row["rss_kib"]) / MIB if row else None

    def idle_pss_mib(self, name: str) -> float | None:
        row = self.r.get("startup", {}).get(name)
        return median(row["pss_kib"]) / MIB if row else None

    def warm_rss_mib(self, name: str) -> float | None:
        row = self.r.get("memory_after_warm", {}).get(name)
        return row["rss_kib"] / MIB if row else None

    def stream_added_mib(self, name: str, state: str) -> float | None:
        row = self.r.get("downloads", {}).get(name)
        if not row:
            return None
        added = [
            s["peak_rss_kib"] - idle
            for s, idle in zip(row[state], row["idle_rss_kib"], strict=True)
        ]
        return median(added) / MIB

    def install(self, tool: str, variant: str) -> float | None:
        row = self.r.get("install", {}).get(tool, {}).get(variant)
        return median(row["seconds"]) if row and row["seconds"] else None

    def upstream_requests(self, tool: str, variant: str) -> float | None:
        row = self.r.get("install", {}).get(tool, {}).get(variant)
        return median(row["upstream_requests"]) if row and row["upstream_requests"] else None

    def replay_warm(self, target: str) -> float | None:
        row = self.r.get("replay", {}).get(target)
        return row["seconds_per_pass"] if row else None

    def replay_cold(self, name: str) -> float | None:
        row = self.r.get("install", {}).get("replay cold", {}).get(name)
        return median(row["seconds"]) if row and row["seconds"] else None

    def rps(self, key: str, name: str) -> float | None:
        samples = self.r.get("pages", {}).get(key, {}).get(name)
        return _median_of(samples, "requests_per_second") if samples else None

    def latency_ms(self, key: str, name: str, q: float) -> float | None:
        """Percentile `q` of one client's sequential requests, pooled over the repeats."""
        samples = self.r.get("pages", {}).get("latency", {}).get(key, {}).get(name)
        return percentile(samples, q) * 1000 if samples else None

    def download(self, name: str, state: str) -> float | None:
        row = self.r.get("downloads", {}).get(name)
        return _median_of(row[state], "megabytes_per_second") if row else None

    def redirects(self, name: str, state: str) -> int:
        row = self.r.get("downloads", {}).get(name)
        return sum(s["redirects"] for s in row[state]) if row else 0


def _target_row(rows: list[list[str]], target: str, measured: str, ok: bool | None) -> None:
    """One row of a targets table: met, not met (in bold), or not measured."""
    rows.append([target, measured, "-" if ok is None else ("yes" if ok else "**no**")])


def _targets(n: Numbers, results: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    add = partial(_target_row, rows)

    connections = results.get("plan", {}).get("connections", (8, 32))
    for fmt in ("html", "json"):
        for c in connections:
            key = f"bench-pkg-02 {fmt} {c}"
            p, d, x = n.rps(key, "pyshelf"), n.rps(key, "devpi"), n.rps(key, "proxpi")
            ok = None if None in (p, d, x) else (p >= 4 * d and p > x)
            add(
                f"{fmt.upper()} page req/s ≥ 4x devpi and > proxpi ({c} connections)",
                f"{_ratio(p, d)} devpi, {_ratio(p, x)} proxpi",
                ok,
            )
    for c in connections:
        key = f"bench-pkg-02 304 {c}"
        p, d = n.rps(key, "pyshelf"), n.rps(key, "devpi")
        add(
            f"304 req/s ≥ 6x devpi ({c} connections)",
            _ratio(p, d),
            None if None in (p, d) else p >= 6 * d,
        )
    p99 = n.latency_ms("bench-many json", "pyshelf", 99)
    add(
        "10,000-file page p99 < 100 ms (one client, JSON)",
        f"{_f(p99, 0)} ms",
        None if p99 is None else p99 < 100,
    )
    p99h = n.latency_ms("bench-many html", "pyshelf", 99)
    add(
        "10,000-file page p99 < 100 ms (one client, HTML)",
        f"{_f(p99h, 0)} ms",
        None if p99h is None else p99h < 100,
    )
    cached, static = n.download("pyshelf", "cached"), n.download("static", "cached")
    ok = None if None in (cached, static) else cached >= 0.9 * static
    add(
        "cached download at static-server speed (≥ 90% of nginx)",
        f"{_f(cached, 0)} vs {_f(static, 0)} MB/s",
        ok,
    )
    first = {name: n.download(name, "cold") for name in SERVERS}
    others = [first["devpi"], first["proxpi"]]
    add(
        "first download through the mirror ahead of devpi and proxpi (MB/s, hash checked)",
        f"{_f(first['pyshelf'], 0)} vs {_f(first['devpi'], 0)} and {_f(first['proxpi'], 0)}",
        None if None in first.values() else all(first["pyshelf"] > o for o in others),
    )
    startup = n.startup("pyshelf")
    add("startup < 1.5 s", f"{_f(startup)} s", None if startup is None else startup < 1.5)
    p, d = n.idle_rss_mib("pyshelf"), n.idle_rss_mib("devpi")
    add("idle RSS ≤ devpi's", f"{_f(p, 0)} vs {_f(d, 0)} MiB", None if None in (p, d) else p <= d)
    added = [
        v for v in (n.stream_added_mib("pyshelf", s) for s in ("cold", "cached")) if v is not None
    ]
    worst = max(added) if added else None
    add(
        "streaming 200 MB adds < 20 MB",
        f"{_f(worst, 1)} MiB",
        None if worst is None else worst < 20 * 1e6 / (1 << 20),
    )
    uv, base = n.install("uv", "pyshelf warm"), n.install("uv", "upstream")
    add(
        "warm `uv pip install` within 1.2x of the static upstream",
        _ratio(uv, base),
        None if None in (uv, base) else uv <= 1.2 * base,
    )
    p, u = n.replay_warm("pyshelf"), n.replay_warm("upstream")
    f = n.replay_warm("gunicorn floor")
    add(
        "replayed warm install within 2x of the static upstream",
        _ratio(p, u) + ("" if f is None else f" (the gunicorn floor: {_ratio(f, u)})"),
        None if None in (p, u) else p <= 2 * u,
    )
    return rows


def _second_round(n: Numbers) -> list[list[str]]:
    """Issue #21's targets: the cold path ahead of proxpi, idle memory below it, the warm replay
    within 2x of the upstream (its PostgreSQL target is measured by `make bench-backends`)."""
    rows: list[list[str]] = []
    add = partial(_target_row, rows)

    for tool, label in (("pip", "`pip install`"), ("uv", "`uv pip install`")):
        p, x = n.install(tool, "pyshelf cold"), n.install(tool, "proxpi cold")
        add(
            f"{label} cold at most proxpi's time",
            f"{_f(p)} vs {_f(x)} s",
            None if None in (p, x) else p <= x,
        )
    p, x, u = n.replay_cold("pyshelf"), n.replay_cold("proxpi"), n.replay_warm("upstream")
    add(
        "pip's requests replayed cold at most proxpi's multiple of the upstream",
        f"{_ratio(p, u)} vs {_ratio(x, u)}",
        None if None in (p, x) else p <= x,
    )
    add(
        "3-file page on PostgreSQL + S3 at ≥ 70% of SQLite + disk",
        "see Backends (`make bench-backends`)",
        None,
    )
    p, x = n.idle_rss_mib("pyshelf"), n.idle_rss_mib("proxpi")
    add(
        "idle RSS below proxpi's",
        f"{_f(p, 0)} vs {_f(x, 0)} MiB",
        None if None in (p, x) else p < x,
    )
    p, u = n.replay_warm("pyshelf"), n.replay_warm("upstream")
    f = n.replay_warm("gunicorn floor")
    add(
        "replayed warm install within 2x of the static upstream",
        _ratio(p, u) + ("" if f is None else f" (the gunicorn floor: {_ratio(f, u)})"),
        None if None in (p, u) else p <= 2 * u,
    )
    return rows


def _replay_breakdown(results: dict[str, Any]) -> list[str]:
    """Milliseconds per pass of the warm replay, by kind of request."""
    replay = results["replay"]
    rows = []
    for target in ("upstream", "gunicorn floor", *SERVERS):
        row = replay.get(target)
        if not row:
            continue
        kinds = {}
        for kind in ("page", "metadata", "file"):
            per_pass = [s["seconds_by_kind"].get(kind, 0.0) / s["passes"] for s in row["samples"]]
            kinds[kind] = median(per_pass) * 1000
        rows.append(
            [target, *(_f(kinds[k], 1) for k in kinds), str(row["requests"]), str(row["errors"])]
        )
    lines = ["Where a warm replay pass spends its time (ms per pass, median):", ""]
    lines += _table(["target", "pages", "PEP 658 sidecars", "files", "requests", "errors"], rows)
    return [
        *lines,
        "The gunicorn floor (bench/compare/floor.py) serves the upstream's own pages and files "
        "with the smallest WSGI app under the same gunicorn, worker class, workers and threads "
        "as pyshelf: the least any Python app behind this server takes for these requests.",
        "",
    ]


def _label(project: str) -> str:
    return "10,000 files" if project == "bench-many" else f"{project} (3 files)"


def _runs(pages: dict[str, Any]) -> list[dict]:
    """Every throughput run's summary."""
    return [
        run
        for key, by_server in pages.items()
        if key not in ("checks", "latency", "upstream_requests")
        for runs in by_server.values()
        for run in runs
    ]


def _pages(n: Numbers, results: dict[str, Any]) -> list[str]:
    pages = results["pages"]
    plan = results["plan"]
    lines = ["## Simple pages (requests/s, median)", ""]
    rows = []
    for key in pages:
        if key in ("checks", "latency", "upstream_requests"):
            continue
        project, fmt, c = key.split(" ")
        values = [n.rps(key, s) for s in SERVERS]
        rows.append(
            [
                _label(project),
                fmt,
                c,
                *(_f(v, 1 if project == "bench-many" else 0) for v in values),
                _ratio(values[0], values[1]),
                _ratio(values[0], values[2]),
            ]
        )
    header = ["page", "format", "connections", *SERVERS, "pyshelf / devpi", "pyshelf / proxpi"]
    lines += _table(header, rows)
    rows = []
    for key in pages.get("latency", {}):
        project, fmt = key.split(" ")
        row = [_label(project), fmt]
        for s in SERVERS:
            row.append(f"{_f(n.latency_ms(key, s, 50), 1)} / {_f(n.latency_ms(key, s, 99), 1)}")
        rows.append(row)
    lines += ["One client, one request after the other: latency p50 / p99 in ms.", ""]
    lines += _table(["page", "format", *SERVERS], rows)
    checks = pages.get("checks", {})
    conditional = {
        s: checks.get(f"{s} bench-pkg-02 304", {}).get("conditional_status") for s in SERVERS
    }
    runs = _runs(pages)
    wrk_cpu = max((r.get("wrk_cpu_share", 0.0) for r in runs), default=0.0)
    errors = sum(r["status_errors"] + r["socket_errors"] for r in runs)
    lines += [
        "The stage index pip uses (pages cached by the installs), with pip's Accept-Encoding. "
        "`304`: the JSON request carrying the validator of the previous answer (If-None-Match, "
        "or If-Modified-Since where there is no ETag); what it answered: "
        + ", ".join(f"{s} {conditional[s]}" for s in SERVERS)
        + " (a 200: the server does not revalidate, so the row measures full pages). "
        f"The 3-file page: wrk (one thread, {plan['page_seconds']:g} s per run; it used at "
        f"most {wrk_cpu * 100:.0f}% of one CPU). The 10,000-file page: a closed loop of "
        f"keep-alive clients for {plan['many_seconds']:g} s, every request read to its end "
        "(at a few requests per second a fixed-duration tool counts the queue, not the rate). "
        f"Errors (unexpected status, socket errors) in all runs: {errors}. Requests that "
        f"reached the upstream during the page runs: {pages.get('upstream_requests')}.",
        "",
    ]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The whole RESULTS.md."""
    n = Numbers(results)
    m = results["machine"]
    plan = results["plan"]
    pkg = results["package_set"]
    mode = "quick (`--quick`: a smoke test, not numbers to quote)" if results["quick"] else "full"
    lines = [
        "# pyshelf compared with devpi-server and proxpi",
        "",
        f"Written by `make bench` (`python -m bench.compare`, {mode}) on {m['date']}, "
        f"in {results['total_seconds'] / 60:.0f} minutes. See bench/README.md for what each "
        "number means and how it is measured; bench/PROFILE.md for where pyshelf's time goes.",
        "",
        f"- **Machine**: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, Linux "
        f"{m['kernel']}; load average {m['load_average_at_start'][0]:.2f} at the start, "
        f"{m['load_average_at_end'][0]:.2f} at the end.",
        f"- **Versions**: pyshelf {m['pyshelf']} (gunicorn {m['gunicorn']}, "
        f"{results['config']['workers']} gthread workers x {results['config']['threads']} "
        "threads); "
        f"devpi-server {m['devpi-server']} (waitress, one process, 50 threads); proxpi "
        f"{m['proxpi']} (gunicorn, same workers and threads as pyshelf); Python {m['python']}; "
        f"pip {m['pip']}; {m['uv']}; {m['nginx']}; {m['wrk']}.",
        f"- **Upstream**: nginx on 127.0.0.1 serving {pkg['projects']} projects, {pkg['files']:,} "
        f"files (one project with {pkg['many_files']:,}); `pip install bench-meta` fetches "
        f"{pkg['installed']} wheels, {pkg['installed_bytes'] / 1e6:.0f} MB, "
        f"{pkg['smallest_installed'] / 1e3:.0f} KB to {pkg['largest_installed'] / 1e6:.1f} MB; "
        f"the largest file is {pkg['largest'] / 1e6:.0f} MB.",
        f"- **Runs**: medians of {plan['runs']} runs (startup, installs, downloads) and of "
        f"{plan['page_repeats']} throughput runs per page configuration, the servers taking "
        f"turns in a different order each round; {plan['replay_repeats']} replay samples per "
        "target.",
        "",
        "## The issues' targets",
        "",
        "Second round (issue #21):",
        "",
    ]
    lines += _table(["target", "measured (pyshelf)", "met"], _second_round(n))
    lines += ["First round (issue #7):", ""]
    lines += _table(["target", "measured (pyshelf)", "met"], _targets(n, results))

    lines += ["## Startup and memory", ""]
    rows = []

    def server_row(label: str, get, digits: int = 2) -> list[str]:
        values = [get(s) for s in SERVERS]
        return [
            label,
            *(_f(v, digits) for v in values),
            _ratio(values[0], values[1]),
            _ratio(values[0], values[2]),
        ]

    rows.append(server_row("startup to first 200 of a mirrored page, s", n.startup))
    rows.append(server_row("idle RSS (all processes), MiB", n.idle_rss_mib, 0))
    rows.append(server_row("idle PSS (shared pages split), MiB", n.idle_pss_mib, 0))
    rows.append(server_row("RSS after the warm runs, MiB", n.warm_rss_mib, 0))
    rows.append(
        server_row(
            "RSS added while streaming 200 MB, first download, MiB",
            lambda s: n.stream_added_mib(s, "cold"),
            1,
        )
    )
    rows.append(
        server_row(
            "RSS added while streaming 200 MB, cached, MiB",
            lambda s: n.stream_added_mib(s, "cached"),
            1,
        )
    )
    lines += _table(["", *SERVERS, "pyshelf / devpi", "pyshelf / proxpi"], rows)
    lines += [
        "Startup includes everything a fresh start does: pyshelf's migrations and bootstrap "
        "(entrypoint.sh), devpi-init plus creating root/pypi and root/dev over devpi's API, and "
        "the first (upstream) fetch of the page. RSS counts pages shared by forked workers once "
        "per process; PSS divides them.",
        "",
    ]

    if "install" in results:
        lines += ["## Installs (seconds, median; x the same from the upstream)", ""]
        rows = []
        for tool in ("pip", "uv"):
            for state in ("warm", "cold"):
                base = n.install(tool, "upstream")
                row = [f"`{tool} install` {state}", _f(base)]
                for s in SERVERS:
                    value = n.install(tool, f"{s} {state}")
                    row.append(f"{_f(value)} ({_ratio(value, base)})")
                rows.append(row)
        base = n.replay_warm("upstream")
        for state, getter in (("warm", n.replay_warm), ("cold", n.replay_cold)):
            row = [f"pip's requests replayed, {state}", _f(base, 3)]
            for s in SERVERS:
                value = getter(s)
                row.append(f"{_f(value, 3)} ({_ratio(value, base)})")
            rows.append(row)
        lines += _table(["", "upstream", *SERVERS], rows)
        reached = {s: [n.upstream_requests(t, f"{s} warm") for t in ("pip", "uv")] for s in SERVERS}
        count = len(results.get("pip_requests", []))
        skipped = results.get("replay_skipped_sidecars", {})
        lines += [
            f"`pip install --no-cache-dir --target NEW` and `uv pip install --no-cache --target "
            f"NEW` of bench-meta through the stage index (pyshelf admin/dev, devpi root/dev over "
            f"root/pypi; proxpi has one index). Warm: one long-running server primed by one pip "
            f"and one uv install; cold: a new server on an empty data directory for every run. "
            f"The replay sends the {count} requests pip made to the upstream (pages, PEP 658 "
            f"sidecars, wheels, with pip's headers) over one keep-alive connection; sidecars a "
            f"server does not offer are left out, as pip would ({skipped}). Upstream requests "
            "during warm runs (pip, uv; median): "
            + ", ".join(
                f"{s} {reached[s][0]:.0f}, {reached[s][1]:.0f}"
                for s in SERVERS
                if None not in reached[s]
            )
            + ".",
            "",
        ]

    if "replay" in results:
        lines += _replay_breakdown(results)

    if "pages" in results:
        lines += _pages(n, results)

    if "downloads" in results:
        lines += ["## Downloads of the 200 MB wheel (MB/s, median)", ""]
        rows = []
        for state, label in (("cold", "first download (through the mirror)"), ("cached", "cached")):
            row = [label]
            for s in SERVERS:
                value = n.download(s, state)
                note = f" ({n.redirects(s, state)} redirected)" if n.redirects(s, state) else ""
                row.append(_f(value, 0) + note)
            row.append(_f(n.download("static", "cached"), 0) if state == "cached" else "-")
            rows.append(row)
        lines += _table(["", *SERVERS, "nginx (static ceiling)"], rows)
        lines += [
            "One client on one connection reading 1 MiB at a time; a new server for every first "
            "download; a cached download (and nginx's) is the median of 5 in each round, "
            "none of them sampled (memory is sampled in 5 more). "
            "proxpi answers a file it has not finished caching within 0.9 s with a "
            "redirect to the upstream (followed here, counted as redirected).",
            "",
        ]

    if "scale" in results:
        sc = results["scale"]
        lines += ["## pyshelf with a large database", ""]
        rows = []
        small, large = sc.get("small"), sc.get("large")

        def pair(label: str, get, digits: int = 1) -> list[str]:
            a = get(small) if small else None
            b = get(large) if large else None
            return [label, _f(a, digits), _f(b, digits), _ratio(b, a)]

        rows.append(pair("projects", lambda r: r["projects"], 0))
        rows.append(pair("files", lambda r: r["files"], 0))
        rows.append(pair("database, MB", lambda r: r["database_bytes"] / 1e6, 0))
        rows.append(
            pair(
                "project page p50, ms (JSON, one client, random projects)",
                lambda r: r["page"]["p50_us"] / 1000,
            )
        )
        rows.append(pair("project page p99, ms", lambda r: r["page"]["p99_us"] / 1000))
        rows.append(
            pair("project pages/s, one client", lambda r: r["page"]["requests_per_second"], 0)
        )
        rows.append(pair("search p50, ms", lambda r: r["search_p50"] * 1000))
        rows.append(pair("search p99, ms", lambda r: r["search_p99"] * 1000))
        rows.append(pair("startup, s", lambda r: r["startup_seconds"], 2))
        rows.append(pair("RSS after, MiB", lambda r: r["rss_kib_after"] / MIB, 0))
        lines += _table(["", "small", "large", "large / small"], rows)
        lines += [
            "Projects and files inserted straight into SQLite (admin/dev, 10 files each), then "
            f"pyshelf started on that database; {plan['search_queries']} searches (a word, a "
            "name prefix, a word that matches nothing, in turn) on the web UI's /+search.",
            "",
        ]

    complaints = results.get("complaints", [])
    lines += ["## Server logs", ""]
    if not complaints:
        lines += ["Nothing at WARNING or above.", ""]
    for server in SERVERS:
        mine = [line for line in complaints if line.startswith(f"{server}: ")]
        if mine:
            lines += [
                f"{server}: {len(mine)} lines at WARNING or above; the first ones:",
                "",
                "```",
            ]
            lines += [line.removeprefix(f"{server}: ") for line in mine[:5]]
            lines += ["```", ""]
    return "\n".join(lines)


def _split_section(text: str, heading: str) -> tuple[str, str, str]:
    """(before, the section from `heading` to the next `## ` heading, after); the section is
    empty when the text has none."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        return text, "", ""
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "".join(lines[:start]), "".join(lines[start:end]), "".join(lines[end:])


def replace_section(text: str, heading: str, section: str) -> str:
    """`text` with its `heading` section replaced by `section` (added before the server logs,
    or at the end, when there is none yet)."""
    before, old, after = _split_section(text, heading)
    section = section.rstrip("\n") + "\n\n"
    if not text.strip():
        return section
    if old:
        return before + section + after
    before, logs, after = _split_section(text, "## Server logs")
    if logs:
        return before + section + logs + after
    return text.rstrip("\n") + "\n\n" + section


def keep_section(previous: str, new: str, heading: str) -> str:
    """`new`, carrying over the `heading` section of `previous` (another command writes it)."""
    _, section, _ = _split_section(previous, heading)
    return replace_section(new, heading, section) if section else new
