"""Shared by every tier: what test servers leave on the host is taken away at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from batchyard.config import Settings
from batchyard.runtime.box.netguard import guard_installed, remove_network_guard
from batchyard.runtime.box.sandbox import UID_COUNT


@pytest.fixture(scope="session", autouse=True)
def _default_network_guard_removed() -> Iterator[None]:
    """Servers of the default uid range (most end-to-end ones) install its network guard,
    whose nftables table outlives them by design (runtime/box/netguard.py): delete it at the
    end when this session made it (a table there before is someone's server's)."""
    first = int(Settings.model_fields["sandbox_uid_base"].default)
    uid_range = (first, first + UID_COUNT - 1)
    existed = os.geteuid() != 0 or guard_installed(uid_range)
    yield
    if not existed:
        remove_network_guard(uid_range)
