"""bp: the server-wide block rules of the supply-chain guard, /+blocked (superusers only)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import delete, select, update

from app.data.db import begin_write, get_session
from app.data.models import PageCacheState, ServerBlock
from app.http.auth import require_user
from app.http.errors import HTTPError
from app.services import guard, pagecache

bp = Blueprint("guard", __name__)

MAX_SERVER_RULES = 10_000


def _rules() -> list[dict[str, Any]]:
    rows = get_session().scalars(select(ServerBlock).order_by(ServerBlock.id))
    return [
        {
            "spec": r.spec,
            "reason": r.reason,
            "by": r.created_by,
            "at": r.created_at.strftime(guard.TIME_FORMAT),
        }
        for r in rows
    ]


def _require_superuser() -> str:
    user = require_user()
    if not user.is_superuser:
        raise HTTPError(403, "Only superusers may see or set the server's block rules.")
    return user.username


@bp.get("/+blocked")
def server_blocks() -> Response:
    """The server-wide block rules, with who set each and when."""
    _require_superuser()
    return jsonify({"blocked": _rules()})


@bp.put("/+blocked")
def set_server_blocks() -> Response:
    """Replace the server-wide block rules: {"blocked": ["SPEC: reason", ...]} (or objects
    {"spec", "reason"}); unchanged rules keep who set them and when."""
    username = _require_superuser()
    body = request.get_json(silent=True)
    wanted = body.get("blocked") if isinstance(body, dict) else None
    if not isinstance(wanted, list) or len(wanted) > MAX_SERVER_RULES:
        raise HTTPError(
            400,
            f'Send {{"blocked": ["SPEC: reason", ...]}} with at most {MAX_SERVER_RULES} rules.',
        )
    pairs = []
    try:
        for entry in wanted:
            if isinstance(entry, dict):
                entry = f"{entry.get('spec', '')}: {entry.get('reason', '')}"
            if not isinstance(entry, str):
                raise guard.GuardError("each rule is a string 'SPEC: reason'")
            pairs.append(guard.parse_block_rule(entry))
    except guard.GuardError as exc:
        raise HTTPError(400, f"Cannot set the server's block rules: {exc}.") from None
    session = get_session()
    begin_write(session)
    old = [
        {"spec": r.spec, "reason": r.reason, "by": r.created_by, "at": r.created_at}
        for r in session.scalars(select(ServerBlock).order_by(ServerBlock.id))
    ]
    records = guard.merge_records(old, pairs, username)  # type: ignore[arg-type]
    session.execute(delete(ServerBlock))
    for record in records:
        at = record["at"]
        session.add(
            ServerBlock(
                spec=record["spec"],
                reason=record["reason"],
                created_by=record["by"],
                created_at=at if not isinstance(at, str) else guard.parse_time(at),
            )
        )
    # Pages built under the old rules are forgotten (no trigger watches this table).
    pagecache.clear(session)
    session.execute(update(PageCacheState).values(generation=PageCacheState.generation + 1))
    session.commit()
    return jsonify({"blocked": _rules()})
