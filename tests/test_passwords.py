"""Password hashes (app/services/passwords.py): werkzeug's stored format, made with hashlib."""

from __future__ import annotations

import pytest
from werkzeug.security import check_password_hash, generate_password_hash

from app.services import passwords


def test_unknown_users_are_checked_against_a_hash_as_costly_as_a_real_one() -> None:
    """A login as an unknown user checks a fixed hash made the way hash_password makes them
    (the same KDF and cost), so the time taken does not tell which usernames exist."""
    method = passwords.hash_password("any password").split("$")[0]

    assert passwords.DUMMY_HASH.split("$")[0] == method == "scrypt:32768:8:1"
    assert passwords.password_matches(passwords.DUMMY_HASH, "not a password")


def test_a_new_hash_is_one_werkzeug_reads_and_the_other_way_round() -> None:
    """Hashes stored before (werkzeug's generate_password_hash) still match, and new ones are
    in the same format."""
    made = passwords.hash_password("correct horse")

    assert check_password_hash(made, "correct horse")
    assert not check_password_hash(made, "wrong horse")
    for method in ("scrypt", "pbkdf2:sha256:1", "pbkdf2:sha512:10"):
        stored = generate_password_hash("correct horse", method)
        assert passwords.password_matches(stored, "correct horse"), method
        assert not passwords.password_matches(stored, "wrong horse"), method


@pytest.mark.parametrize(
    "stored",
    [
        "!devpi-import-reset-0123",  # a locked account
        "!abc$def$012",
        "plain",
        "",
        "md5$salt$0123",
        "scrypt:x:8:1$salt$0123",
        "scrypt:32768:8$salt$0123",
        "pbkdf2:nohash:1$salt$0123",
        "pbkdf2:sha256:1$salt$\u00e9",
    ],
)
def test_a_hash_this_server_does_not_make_never_matches(stored: str) -> None:
    assert not passwords.password_matches(stored, "")
    assert not passwords.password_matches(stored, "any password")
