"""Login throttling on a live server, from distinct loopback addresses: a stranger who fails
alice's password locks alice out only for their own address, and one address failing on many
accounts is locked out for all of them (issue #15 item 9)."""

from __future__ import annotations

import http.client
import json

import pytest

from app.services import throttle
from tests.conftest import ADMIN_PASSWORD, LiveServer
from tests.e2e.helpers import api

pytestmark = pytest.mark.e2e

ALICE = ("alice", "alice-password")
TIMEOUT_SECONDS = 30


def login_from(server: LiveServer, address: str, user: str, password: str) -> int:
    """POST /+login (devpi-client's JSON login) from `address` (a 127.0.0.0/8 address the
    client socket binds to): the status."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", server.port, timeout=TIMEOUT_SECONDS, source_address=(address, 0)
    )
    try:
        body = json.dumps({"user": user, "password": password})
        connection.request("POST", "/+login", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_a_stranger_locks_only_their_own_address_out_of_an_account(
    live_server: LiveServer,
) -> None:
    """Failures from 127.0.0.2 lock alice there (even her right password is refused), while
    alice from 127.0.0.3 logs in."""
    status, body, _ = api(live_server, "PUT", "/alice", {"password": ALICE[1]})
    assert status == 201, body
    for _ in range(throttle.MAX_FAILURES["user"]):
        assert login_from(live_server, "127.0.0.2", "alice", "wrong-password") == 401

    assert login_from(live_server, "127.0.0.2", *ALICE) == 429
    assert login_from(live_server, "127.0.0.3", *ALICE) == 200
    assert login_from(live_server, "127.0.0.2", *ALICE) == 429  # her success clears no lock


def test_one_address_failing_on_many_accounts_is_locked_out_of_all(
    live_server: LiveServer,
) -> None:
    """The per-address limit counts across accounts: 127.0.0.4 is locked for admin too, which
    it never guessed; 127.0.0.5 is not."""
    for number in range(throttle.MAX_FAILURES["addr"]):
        assert login_from(live_server, "127.0.0.4", f"user{number}", "wrong-password") == 401

    assert login_from(live_server, "127.0.0.4", "admin", ADMIN_PASSWORD) == 429
    assert login_from(live_server, "127.0.0.5", "admin", ADMIN_PASSWORD) == 200
