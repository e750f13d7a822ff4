"""Identifiers: a type prefix, then milliseconds since the epoch and randomness.

Time-ordered ids make "newest first" an index scan and give stable cursors.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_sequence = itertools.count()


def new_id(prefix: str) -> str:
    """Ids made by one process sort in creation order, even within a millisecond.

    The queue claims the oldest id first, so order matters; across processes the
    random tail only breaks ties.
    """
    global _last_ms, _sequence
    with _lock:
        now_ms = int(time.time() * 1000)
        if now_ms > _last_ms:
            _last_ms, _sequence = now_ms, itertools.count()
        sequence = next(_sequence)
    return f"{prefix}_{_last_ms:011x}{sequence:04x}{secrets.token_hex(4)}"
