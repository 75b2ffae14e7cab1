"""Prometheus counters: requests, the mirror cache, uploads, upstreams, the guard.

Counted by the services and the HTTP edge alike; app/http/metrics.py serves them at /+metrics.
Under gunicorn every worker is its own process: app/http/gunicorn_conf.py points
PROMETHEUS_MULTIPROC_DIR at DATA_DIR/tmp/metrics before any worker imports prometheus_client,
so counters live in per-process files that a scrape adds up (prometheus_client's multiprocess
mode), whichever worker answers it. Without that variable (tests, a single process) the
counters live in this module's registry.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram

# With PROMETHEUS_MULTIPROC_DIR set, an unlabelled counter opens its file there as soon as it is
# made, so the directory must exist before this module is imported: a command started with the
# variable already set (entrypoint.sh's `prepare`, before gunicorn's settings make it) would
# otherwise stop at the import.
if multiproc_dir := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(multiproc_dir, exist_ok=True)

# Single-process mode registers here; in multiprocess mode the values go to files instead.
REGISTRY = CollectorRegistry(auto_describe=True)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)  # s

REQUESTS = Counter(
    "pyshelf_http_requests",
    "HTTP requests answered, by route kind and status code.",
    ["kind", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "pyshelf_http_request_duration_seconds",
    "Time from request to the last byte of the response, by route kind.",
    ["kind"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
CACHE_HITS = Counter(
    "pyshelf_mirror_cache_hits", "Mirrored files served from the cache.", registry=REGISTRY
)
CACHE_MISSES = Counter(
    "pyshelf_mirror_cache_misses",
    "Mirrored files fetched from the upstream because they were not cached.",
    registry=REGISTRY,
)
CACHE_SERVED_BYTES = Counter(
    "pyshelf_mirror_cache_served_bytes",
    "Bytes of mirrored files sent to clients from the cache.",
    registry=REGISTRY,
)
UPSTREAM_FETCHED_BYTES = Counter(
    "pyshelf_upstream_fetched_bytes",
    "Bytes of files downloaded from upstream indexes.",
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "pyshelf_upstream_errors",
    "Failed upstream requests (errors, timeouts, wrong hashes), by mirror index.",
    ["index"],
    registry=REGISTRY,
)
UPLOADS = Counter(
    "pyshelf_uploads",
    "Upload requests (files and docs), by status code: 200 is stored (or identical).",
    ["status"],
    registry=REGISTRY,
)
EVICTIONS = Counter(
    "pyshelf_mirror_cache_evicted_bytes",
    "Bytes of mirror-cached files removed to stay under MIRROR_CACHE_MAX_SIZE.",
    registry=REGISTRY,
)

CACHE_WRITE_FAILURES = Counter(
    "pyshelf_cache_write_failures",
    "Blob store writes that failed (disk full, I/O error), by what was written: a mirror file "
    "or sidecar is then sent uncached, an upload answers 507.",
    ["what"],
    registry=REGISTRY,
)

GUARD_DECISIONS = Counter(
    "pyshelf_guard_decisions",
    "Files the supply-chain guard kept from installers, by rule kind (cooldown, blocked, "
    "quarantined, vulnerable) and where: a file or .metadata URL refused, or a file left out "
    "of a project page built.",
    ["kind", "where"],
    registry=REGISTRY,
)


def count_cache(*, hits: int = 0, misses: int = 0, fetched_bytes: int = 0) -> None:
    """Count mirror cache events (called by the mirror's Counters next to its database counts)."""
    if hits:
        CACHE_HITS.inc(hits)
    if misses:
        CACHE_MISSES.inc(misses)
    if fetched_bytes:
        UPSTREAM_FETCHED_BYTES.inc(fetched_bytes)


def count_upstream_error(index_path: str) -> None:
    """Count one failed upstream request of a mirror index."""
    UPSTREAM_ERRORS.labels(index=index_path).inc()


def count_write_failure(what: str) -> None:
    """Count one failed blob store write: `what` is "mirror", "metadata" or "upload"."""
    CACHE_WRITE_FAILURES.labels(what=what).inc()


def count_guard(kind: str, where: str, count: int = 1) -> None:
    """Count files the guard kept back: `where` is "file" (a refused URL) or "page"."""
    GUARD_DECISIONS.labels(kind=kind, where=where).inc(count)


def count_eviction(removed_bytes: int) -> None:
    """Count bytes the mirror cache evicted to stay under its cap."""
    EVICTIONS.inc(removed_bytes)
