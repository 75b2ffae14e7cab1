"""Project status markers (PEP 792): the values, who set them where, and how an index and its
bases merge them (the supply-chain guard, app/services/guard.py, refuses a quarantined
project's files)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.data.models import Index, Project, User, utcnow

log = logging.getLogger(__name__)

ACTIVE = "active"
QUARANTINED = "quarantined"
STATUSES = (ACTIVE, "archived", QUARANTINED, "deprecated")  # PEP 792's four markers
# PEP 792: an archived or quarantined project's index MUST NOT allow uploads to it.
CLOSED_TO_UPLOADS = ("archived", QUARANTINED)
MAX_REASON_CHARS = 1000  # a reason goes into 404 status lines (cut there to about 200)


class StatusError(ValueError):
    """A status change is invalid; the message says why."""


@dataclass(frozen=True)
class Marker:
    """A project's status on one index: set there (a stage), or passed on from upstream."""

    status: str
    reason: str | None
    index_path: str


def check_status(status: object, reason: object) -> tuple[str, str | None]:
    """The status and reason of a request, checked: one of STATUSES, a short text or nothing."""
    if not isinstance(status, str) or status.strip().lower() not in STATUSES:
        raise StatusError(
            f"status must be one of {', '.join(STATUSES)} (PEP 792), not {str(status)[:40]!r}"
        )
    if reason is not None and not isinstance(reason, str):
        raise StatusError("reason must be a string")
    text = " ".join((reason or "").split())  # one line: it goes into status lines and meta tags
    if len(text) > MAX_REASON_CHARS:
        raise StatusError(f"reason is longer than {MAX_REASON_CHARS} characters")
    return status.strip().lower(), text or None


def set_status(project: Project, status: str, reason: str | None, user: User) -> None:
    """Record a checked status on a stage project, with who set it and when (the caller commits)."""
    project.status, project.status_reason = status, reason
    project.status_by, project.status_at = user.username, utcnow()
    log.info(
        "project status of %s on %s set to %s by %s: %s",
        project.normalized_name,
        project.index.path,
        status,
        user.username,
        reason or "(no reason)",
    )


def hosted_marker(session: Session, index: Index, normalized_name: str) -> Marker | None:
    """The status set on a stage's project, or None (active by default)."""
    row = session.execute(
        select(Project.status, Project.status_reason).where(
            Project.index_id == index.id, Project.normalized_name == normalized_name
        )
    ).first()
    if row is None or row[0] is None:
        return None
    return Marker(row[0], row[1], index.path)


def view_marker(markers: Iterable[Marker | None]) -> Marker | None:
    """The status of a project merged across an index and its bases: quarantine anywhere in the
    chain wins (a stage must not serve what its base quarantined), else the first one set."""
    found = [m for m in markers if m is not None]
    quarantined = next((m for m in found if m.status == QUARANTINED), None)
    return quarantined or (found[0] if found else None)


def is_quarantined(marker: Marker | None) -> bool:
    """Whether installers get no files of the project (PEP 792 `quarantined`)."""
    return marker is not None and marker.status == QUARANTINED


def quarantine_reason(normalized_name: str, marker: Marker) -> str:
    """The 404 reason of a quarantined project's file (pip prints it)."""
    why = f": {marker.reason}" if marker.reason else ""
    return f"Project {normalized_name} is quarantined on {marker.index_path} (PEP 792){why}"
