"""A short-lived cache of authenticated API keys.

Every API call authenticates; without this, each one pays a database read and,
in the API server, a hop to a worker thread. An entry lives one second, and this
process forgets every entry at once when a key is revoked or an account
changes, so other processes see a revocation within a second.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchyard.services.context import Actor

TTL_SECONDS = 1.0
MAX_ENTRIES = 10_000


class AuthCache:
    def __init__(self, ttl: float = TTL_SECONDS) -> None:
        self._ttl = ttl
        self._entries: dict[str, tuple[float, Actor]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> Actor | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key_hash: str, actor: Actor) -> None:
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key_hash] = (time.monotonic() + self._ttl, actor)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
