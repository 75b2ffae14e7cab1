"""Accounts' credentials: the form of a user name, and password hashes (made, and checked).

Hashes are stored in the format werkzeug.security writes (`scrypt:N:R:P$SALT$HEX` or
`pbkdf2:HASH:ITERATIONS$SALT$HEX`), made here with hashlib, so every hash stored so far still
matches; devpi-server's hashes, kept by `import-devpi`, match until their owner next logs in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PASSWORD_CHARS = 8
SALT_CHARS = string.ascii_letters + string.digits
SALT_LENGTH = 16
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1  # werkzeug's default cost: about 75 ms of CPU
# Password hashes imported from devpi-server (app/ops/devpi_import.py): argon2 PHC strings as
# devpi-server >= 6 stores them, and its older salted sha256 as "devpi-sha256$SALT$HEXDIGEST".
ARGON2_PREFIX = "$argon2"
DEVPI_SHA256_PREFIX = "devpi-sha256$"
# Checked when the username is unknown, so timing reveals nothing: a hash of "not a password"
# made by hash_password (same KDF and cost; a literal: hashing at import costs every process
# 75 ms of CPU at start). tests/test_passwords.py checks it against hash_password's.
DUMMY_HASH = (
    "scrypt:32768:8:1$17o9n30EDKXwvmlP$3a7a821ebefe26f438f5cb4a4c69c6fadd99438354b8721d5ede4df"
    "007672612a7dc7336fabe3b490046fe7573cdc3d534fe7ce69e3417cb6f9bcbdca9f9ac66"
)


def _derive(method: str, salt: str, password: str) -> str | None:
    """The hex digest of `password` by a stored hash's method and parameters; None for a
    method this server does not make (a locked "!..." hash, a damaged one)."""
    kind, *args = method.split(":")
    secret, salt_bytes = password.encode("utf-8"), salt.encode("utf-8")
    try:
        if kind == "scrypt" and len(args) == 3:
            n, r, p = map(int, args)
            return hashlib.scrypt(
                secret, salt=salt_bytes, n=n, r=r, p=p, maxmem=132 * n * r * p
            ).hex()
        if kind == "pbkdf2" and len(args) == 2:
            return hashlib.pbkdf2_hmac(args[0], secret, salt_bytes, int(args[1])).hex()
    except ValueError:  # parameters that are no numbers, or that hashlib refuses
        return None
    return None


def hash_password(password: str) -> str:
    """Hash a password with scrypt, in werkzeug's format (`scrypt:32768:8:1$SALT$HEX`)."""
    salt = "".join(secrets.choice(SALT_CHARS) for _ in range(SALT_LENGTH))
    method = f"scrypt:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}"
    return f"{method}${salt}${_derive(method, salt, password)}"


def is_imported_hash(stored: str) -> bool:
    """Whether a stored hash came from devpi-server (and should become scrypt at next login)."""
    return stored.startswith((ARGON2_PREFIX, DEVPI_SHA256_PREFIX))


def password_matches(stored: str, password: str) -> bool:
    """Check a password against a stored hash: scrypt or PBKDF2, or one imported from
    devpi-server.

    IMPORTED DEVPI HASHES: `import-devpi` keeps devpi-server's hashes so that people log in
    with their old passwords; a user with such a hash is re-hashed to scrypt on the next
    successful login (app/http/auth.py), so these branches only serve users who have not
    logged in since the migration.
    """
    if stored.startswith(ARGON2_PREFIX):  # devpi-server >= 6 (passlib's argon2, PHC format)
        from argon2 import PasswordHasher  # here: only imported accounts need it
        from argon2.exceptions import InvalidHashError, VerificationError

        try:
            return PasswordHasher().verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
    if stored.startswith(DEVPI_SHA256_PREFIX):  # devpi-server < 6: sha256(salt + password)
        salt, _, digest = stored[len(DEVPI_SHA256_PREFIX) :].partition("$")
        computed = hashlib.sha256(salt.encode("ascii") + password.encode("utf-8")).hexdigest()
        return hmac.compare_digest(computed, digest.lower())
    parts = stored.split("$", 2)
    if len(parts) != 3:
        return False  # a locked "!..." hash never matches
    method, salt, digest = parts
    derived = _derive(method, salt, password)
    return derived is not None and hmac.compare_digest(derived.encode(), digest.encode())
