"""Encryption at rest for secret variables and database URLs (Fernet)."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from batchyard.errors import BatchyardError


class SecretUndecryptable(BatchyardError):
    """A stored secret cannot be decrypted with this server's key."""


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)
        # Not the Fernet key itself: a digest key that cannot decrypt anything.
        self._digest_root = hmac.new(key, b"batchyard variable digest", hashlib.sha256).digest()

    @classmethod
    def from_data_dir(cls, data_dir: Path, configured: str | None) -> SecretBox:
        """Use the configured key, else the one generated into the data folder on first start."""
        if configured:
            return cls(configured.encode())
        path = data_dir / "secret.key"
        if not path.exists():
            key = Fernet.generate_key()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(key)
        return cls(path.read_bytes().strip())

    def encrypt(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise SecretUndecryptable() from exc

    def value_digest(self, account_id: str, job_id: str, key: str, value: str) -> str:
        """A keyed digest of a variable's value, so a client can tell whether a secret
        changed without it ever being returned (``batchyard deploy``).

        Keyed per account by this server only (no client can compute it, so it is no
        offline oracle for guessing a weak secret), over job and key too, so two variables
        holding the same value do not show it.
        """
        account_key = hmac.new(self._digest_root, account_id.encode(), hashlib.sha256).digest()
        message = b"\0".join((job_id.encode(), key.encode(), value.encode()))
        return hmac.new(account_key, message, hashlib.sha256).hexdigest()
