"""Fixtures for the web UI tests: CSRF off unless a test turns it on, fast password hashes."""

from __future__ import annotations

from typing import Any

import pytest
from werkzeug.security import generate_password_hash

from app.cli import accounts
from app.http import api, auth
from app.http.web import admin


@pytest.fixture(autouse=True)
def fast_password_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hash new passwords with 1-round PBKDF2 instead of scrypt (tests only)."""

    def fast(password: str) -> str:
        return generate_password_hash(password, "pbkdf2:sha256:1")

    for module in (auth, api, accounts, admin):
        monkeypatch.setattr(module, "hash_password", fast)


@pytest.fixture
def app(app: Any) -> Any:
    """The bootstrapped app with CSRF checks off; CSRF tests set WTF_CSRF_ENABLED = True."""
    app.config["WTF_CSRF_ENABLED"] = False
    return app
