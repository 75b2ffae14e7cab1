"""GET /USER/INDEX/+advisories: what an index serves that imported advisories affect (as HTML,
or JSON for API clients), to those who may read it; only from the bases they may read too."""

from __future__ import annotations

from flask import Response, jsonify, render_template
from sqlalchemy.orm import Session

from app.data.db import get_session
from app.data.models import Index
from app.http.auth import require_read
from app.http.web.base import bp, index_or_404, wants_json
from app.http.web.pages import VersionRow
from app.services.advisories import (
    Found,
    refuses,
    served_affected,
    strictest,
    thresholds_by_holder,
)
from app.services.indexes import readable_order, resolution_order


@bp.get("/<user>/<index>/+advisories")
def index_advisories(user: str, index: str) -> Response | str:
    """The releases this index serves, or hides for block_vulnerable, that advisories affect."""
    session = get_session()
    found = index_or_404(user, index)
    order = resolution_order(session, found)
    reader = require_read(found, order=order)
    readable = readable_order(session, found, reader)
    served = served_affected(session, order, readable)
    if wants_json():
        return jsonify(
            {
                "type": "advisories",
                "result": {
                    "index": found.path,
                    "block_vulnerable": found.block_vulnerable,
                    "affected": [entry.as_json() for entry in served],
                },
            }
        )
    return render_template("advisories.html", index=found, served=served)


def refused_by(
    session: Session, index: Index, row: VersionRow, affecting: list[Found]
) -> str | None:
    """The block_vulnerable setting that keeps this version's files from installers on `index`
    (for the version page), or None."""
    thresholds = thresholds_by_holder(resolution_order(session, index))
    threshold = strictest(thresholds.get(f.index_path) for f in row.files)
    return threshold if any(refuses(threshold, a.severity) for a in affecting) else None
