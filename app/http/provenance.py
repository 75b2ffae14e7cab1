"""bp: PEP 740 provenance objects of release files, /USER/INDEX/+provenance/SHA256/FILENAME."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, Response, current_app

from app.core.dists import InvalidDistribution, parse_filename
from app.core.upstream import UpstreamError, UpstreamTimeout
from app.data.db import get_session
from app.data.models import Index
from app.http.auth import require_read
from app.http.errors import HTTPError
from app.services.indexes import get_index
from app.services.provenance import (
    MIME_PROVENANCE,
    InvalidAttestation,
    fetch_provenance,
    hosted_provenance,
)

log = logging.getLogger(__name__)
bp = Blueprint("provenance", __name__)


@bp.get("/<user>/<index>/+provenance/<sha256>/<filename>")
def provenance(user: str, index: str, sha256: str, filename: str) -> Response:
    """The provenance object of a file, to those who may read the index: an upload's own, or a
    mirror's upstream one fetched through the mirror (clients need no upstream access)."""
    found = get_index(get_session(), user, index)
    if found is None:
        raise HTTPError(404, f"Index {user}/{index} does not exist.")
    # Like the file itself: only this index's own acl_read counts (app/http/files.py).
    require_read(found, with_bases=False)
    if found.is_mirror:
        document = _mirrored(found, sha256, filename)
    else:
        document = hosted_provenance(get_session(), found.id, sha256, filename)
    if document is None:
        raise HTTPError(404, f"No provenance for {filename} on {found.path} (PEP 740).")
    return Response(json.dumps(document), mimetype=MIME_PROVENANCE)


def _mirrored(index: Index, sha256: str, filename: str) -> dict[str, Any] | None:
    """The upstream's provenance of a file the mirror lists with this sha256, checked against
    it; None when the upstream names none."""
    try:
        name = parse_filename(filename).normalized_name
    except InvalidDistribution:
        return None
    mirror = current_app.extensions["pyshelf.mirror"]
    # Its failures (502/504, Retry-After) are the mirror's: app/http/errors.py maps them.
    entry = mirror.listed_entry(index, name, filename, sha256)
    if entry is None or entry.get("sha256") != sha256 or not entry.get("provenance"):
        return None
    try:
        return fetch_provenance(
            mirror.upstream, entry["provenance"], index.mirror_url, filename, sha256
        )
    except UpstreamTimeout as exc:
        raise HTTPError(504, f"Upstream timed out: {exc}", {"Retry-After": "30"}) from None
    except UpstreamError as exc:
        raise HTTPError(502, f"Upstream failed: {exc}", {"Retry-After": "30"}) from None
    except InvalidAttestation as exc:
        log.warning("%s: refused the upstream's provenance of %s: %s", index.path, filename, exc)
        raise HTTPError(502, f"Upstream's provenance of {filename} refused: {exc}"[:300]) from None
