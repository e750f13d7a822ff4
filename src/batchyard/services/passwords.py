"""Password hashing (argon2), made at first use: an idle server that no one signs in to
does not load it (~2.5 MiB), nor spends a hash computing the dummy at start."""

from __future__ import annotations

import functools
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from argon2 import PasswordHasher


@functools.cache
def hasher() -> PasswordHasher:
    from argon2 import PasswordHasher

    return PasswordHasher()


def hash_password(password: str) -> str:
    return hasher().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """False for a wrong password or a hash that is not one."""
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@functools.cache
def dummy_hash() -> str:
    """Verified against when the e-mail is unknown: the answer takes as long as a real
    check, so its timing does not tell which addresses have accounts."""
    return hash_password("not-a-real-password-" + secrets.token_hex(8))
