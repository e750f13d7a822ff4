"""Shared by every tier: what test servers leave on the host is taken away at the end, and
a private PostgreSQL cluster for the tests that kill or restart their database."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from batchyard.config import Settings
from batchyard.runtime.box.netguard import guard_installed, remove_network_guard
from batchyard.runtime.box.sandbox import UID_COUNT
from support.pgcluster import ClusterUnavailable, PostgresCluster

TIERS = ("unit", "integration", "e2e", "ui")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked with its tier, its folder under tests/, so that one tier runs
    alone: ``./dev test -m unit`` (seconds), ``-m "not e2e and not ui"``."""
    root = os.path.dirname(__file__)
    for item in items:
        tier = os.path.relpath(str(item.path), root).split(os.sep, 1)[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


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


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of the test's own (temp folder, free port), started; skipped
    where one cannot be made (not root, no Debian server binaries)."""
    try:
        made = PostgresCluster()
    except ClusterUnavailable as exc:
        pytest.skip(f"no private PostgreSQL cluster here: {exc}")
    try:
        try:
            made.start()
        except ClusterUnavailable as exc:
            pytest.skip(f"the private PostgreSQL cluster did not start: {exc}")
        yield made
    finally:
        made.remove()
