"""Password hashing (argon2id) and TOTP second factors (RFC 6238)."""

from __future__ import annotations

import secrets
from datetime import datetime

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from salus.errors import InvalidInput

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "check_password_strength",
    "hash_password",
    "needs_rehash",
    "new_totp_secret",
    "totp_uri",
    "verify_password",
    "verify_totp",
]

MIN_PASSWORD_LENGTH = 12
# OWASP's argon2id recommendation (m=19 MiB, t=2, p=1).
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
_DUMMY = _HASHER.hash(secrets.token_urlsafe(16))


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"A password must have at least {MIN_PASSWORD_LENGTH} characters.")
    if len(set(password)) < 5:
        raise InvalidInput("A password needs more distinct characters.")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def needs_rehash(stored_hash: str) -> bool:
    """Whether a hash was made with other parameters than today's (rehash on success)."""
    return bool(_HASHER.check_needs_rehash(stored_hash))


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Constant work whether or not the account exists (``stored_hash`` None)."""
    try:
        return _HASHER.verify(stored_hash or _DUMMY, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, username: str, issuer: str = "Salus") -> str:
    """``otpauth://`` URI for authenticator apps (shown once, as a QR code)."""
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=issuer)


def verify_totp(secret: str, code: str, at: datetime) -> bool:
    """Accept the 30-second step of ``at`` and one step either side (clock drift)."""
    code = code.strip().replace(" ", "")
    if not code.isdigit() or len(code) != 6:
        return False
    return bool(pyotp.TOTP(secret).verify(code, for_time=at, valid_window=1))
