"""bp: PEP 740 provenance objects of release files, /USER/INDEX/+provenance/SHA256/FILENAME."""

from __future__ import annotations

import json

from flask import Blueprint, Response

from app.data.db import get_session
from app.http.auth import require_read
from app.http.errors import HTTPError
from app.services.indexes import get_index
from app.services.provenance import MIME_PROVENANCE, hosted_provenance

bp = Blueprint("provenance", __name__)


@bp.get("/<user>/<index>/+provenance/<sha256>/<filename>")
def provenance(user: str, index: str, sha256: str, filename: str) -> Response:
    """The provenance object of a file uploaded with attestations, to those who may read it."""
    found = get_index(get_session(), user, index)
    if found is None:
        raise HTTPError(404, f"Index {user}/{index} does not exist.")
    # Like the file itself: only this index's own acl_read counts (app/http/files.py).
    require_read(found, with_bases=False)
    document = hosted_provenance(get_session(), found.id, sha256, filename)
    if document is None:
        raise HTTPError(404, f"No provenance for {filename} on {found.path} (PEP 740).")
    return Response(json.dumps(document), mimetype=MIME_PROVENANCE)
