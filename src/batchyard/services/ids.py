"""Identifiers: a type prefix, then milliseconds since the epoch and randomness.

Time-ordered ids make "newest first" an index scan and give stable cursors.
"""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    return f"{prefix}_{int(time.time() * 1000):011x}{secrets.token_hex(6)}"
