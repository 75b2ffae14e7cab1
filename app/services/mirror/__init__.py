"""Mirror indexes' caching policy: freshness, stale-if-error, single flight, hash checks.

Pages are cached in the database (MirrorPage: pages.py), files in the blob store under their
sha256 (downloads.py: one download per file across workers and replicas; service.py: PEP 658
sidecars), each committed file recorded in the cache's accounting (app/services/cache.py: size
cap, LRU eviction) and counted (stats.py, app/core/metrics.py). Nothing here speaks HTTP: the
mirror answers with results.py's values or raises its errors, and app/http maps both.

All indexes share one blob store, and an upstream page may list any sha256 (another index's
private upload, say): a mirror serves only blobs it holds (app/services/cache_blobs.py `holds`:
it fetched and verified them itself). Bytes already stored for someone else are downloaded and
verified all the same, then kept as they are (the store deduplicates).
"""

from app.services.mirror.pages import age_from, file_key
from app.services.mirror.results import (
    Blob,
    Data,
    Head,
    MirrorError,
    NotListed,
    PageNotes,
    Served,
    StillFetching,
    Stream,
    UpstreamFailed,
    UpstreamTimedOut,
)
from app.services.mirror.service import Mirror

__all__ = [
    "Blob",
    "Data",
    "Head",
    "Mirror",
    "MirrorError",
    "NotListed",
    "PageNotes",
    "Served",
    "StillFetching",
    "Stream",
    "UpstreamFailed",
    "UpstreamTimedOut",
    "age_from",
    "file_key",
]
