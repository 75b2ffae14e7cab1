"""Login throttling: failed password checks per (account, address) pair and per address, kept
in the database; and the same counters for anonymous refreshes of mirrored pages per address.

An account is locked only for the address that failed: a stranger guessing a colleague's
password locks themselves out, never the colleague working from elsewhere. The per-address
limit, across all accounts, stops one address from trying many accounts.

The counters live in the `login_failures` table, not in process memory, so every gunicorn
worker (and every container behind a load balancer) sees the same lockout. After
MAX_FAILURES failures of one key within WINDOW_SECONDS the key is locked for
FIRST_LOCK_SECONDS, doubling with each further failure up to MAX_LOCK_SECONDS; a key that
stays quiet for WINDOW_SECONDS (after its lock ended) starts afresh, and a successful login
clears its pair's counter. Unknown usernames are counted like known ones, so a lockout
never tells whether an account exists.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError

from app.data import models
from app.data.db import Database, begin_write
from app.data.models import LoginFailure

WINDOW_SECONDS = 900  # 15 minutes
FIRST_LOCK_SECONDS = 60
MAX_LOCK_SECONDS = 3600  # 1 hour
MAX_FAILURES = {"user": 5, "addr": 20}  # an address may be a whole office behind NAT
# Anonymous refreshes of mirrored pages per address (devpi-client's `devpi refresh` sends no
# credentials), counted and locked like failures: strangers cannot make us hammer the upstream.
MAX_ANONYMOUS_REFRESHES = 10
FORGET_SECONDS = 86_400  # 1 day: rows this quiet are deleted
MAX_KEY_CHARS = 320


class LoginThrottled(Exception):
    """Too many failed logins for this account or address: retry after `retry_after_seconds`."""

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(f"retry after {retry_after_seconds} s")
        self.retry_after_seconds = retry_after_seconds


@dataclass(frozen=True)
class State:
    """What the table says about some keys right now."""

    retry_after_seconds: int  # 0: not locked
    known_keys: frozenset[str]  # keys that have a row (a success must clear them)


def keys_for(username: str, address: str | None) -> list[str]:
    """The throttle keys of a login attempt: the (address, account) pair, then the address."""
    # The address first: a long username is what gets cut, never the address.
    keys = [f"user:{address or '-'}/{username}"[:MAX_KEY_CHARS]]
    if address:
        keys.append(f"addr:{address}"[:MAX_KEY_CHARS])
    return keys


def _limit(key: str) -> int:
    kind = key.partition(":")[0]
    return MAX_ANONYMOUS_REFRESHES if kind == "refresh" else MAX_FAILURES.get(kind, 5)


def _is_stale(row: LoginFailure, now: dt.datetime) -> bool:
    """Whether the key has been quiet long enough to start counting afresh."""
    quiet_since = max(row.window_started_at, row.locked_until or row.window_started_at)
    return (now - quiet_since).total_seconds() >= WINDOW_SECONDS


def check(database: Database, keys: list[str]) -> State:
    """How long these keys are still locked (0 if not), read in a fresh session."""
    now = models.utcnow()
    with database.session() as session:
        rows = session.scalars(select(LoginFailure).where(LoginFailure.key.in_(keys))).all()
    waits = [
        math.ceil((row.locked_until - now).total_seconds())
        for row in rows
        if row.locked_until is not None and row.locked_until > now
    ]
    return State(max(waits, default=0), frozenset(row.key for row in rows))


def record_failure(database: Database, keys: list[str]) -> None:
    """Count one failed attempt against each key and lock the keys past their limit."""
    for attempt in range(2):  # a concurrent first insert of the same key (PostgreSQL) retries
        try:
            _record_failure(database, keys)
            return
        except IntegrityError:
            if attempt:
                raise


def _record_failure(database: Database, keys: list[str]) -> None:
    now = models.utcnow()
    with database.session() as session:
        begin_write(session)
        for key in keys:
            row = session.get(LoginFailure, key)
            if row is None:
                row = LoginFailure(key=key, count=0, window_started_at=now, locked_until=None)
                session.add(row)
            elif _is_stale(row, now):
                row.count, row.window_started_at, row.locked_until = 0, now, None
            row.count += 1
            over = row.count - _limit(key)
            if over >= 0:
                seconds = min(FIRST_LOCK_SECONDS * 2 ** min(over, 16), MAX_LOCK_SECONDS)
                row.locked_until = now + dt.timedelta(seconds=seconds)
        forget = now - dt.timedelta(seconds=FORGET_SECONDS)
        session.execute(
            delete(LoginFailure).where(
                LoginFailure.window_started_at < forget,
                or_(LoginFailure.locked_until.is_(None), LoginFailure.locked_until < forget),
            )
        )
        session.commit()


def count_anonymous_refresh(database: Database, address: str | None) -> int:
    """Count an anonymous refresh from `address` and return 0, or, while the address has used
    up MAX_ANONYMOUS_REFRESHES (within WINDOW_SECONDS), the seconds until it may again."""
    key = f"refresh:{address or '-'}"[:MAX_KEY_CHARS]
    wait = check(database, [key]).retry_after_seconds
    if not wait:
        record_failure(database, [key])
    return wait


def record_success(database: Database, state: State, keys: list[str]) -> None:
    """Clear the pair's counter after a successful login (a write only if there is one); the
    address's counter stays."""
    key = keys[0]
    if key not in state.known_keys:
        return
    with database.session() as session:
        begin_write(session)
        session.execute(delete(LoginFailure).where(LoginFailure.key == key))
        session.commit()
