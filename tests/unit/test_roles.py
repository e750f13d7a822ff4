"""--role and its older aliases (BATCHYARD_SCHEDULER=false, --workers 0)."""

from __future__ import annotations

import pytest

from batchyard.app import process_roles
from batchyard.config import Settings
from batchyard.services.nodes import parse_roles


def test_roles_are_any_non_empty_subset() -> None:
    assert parse_roles("api,scheduler,worker") == {"api", "scheduler", "worker"}
    assert parse_roles(" worker ") == {"worker"}
    for wrong in ("", "api,cook", ","):
        with pytest.raises(ValueError, match="subset of api, scheduler, worker"):
            parse_roles(wrong)


def test_the_older_switches_drop_their_role() -> None:
    assert process_roles(Settings(scheduler=False)) == {"api", "worker"}
    assert process_roles(Settings(workers=0)) == {"api", "scheduler"}
    assert process_roles(Settings(roles="api,worker", workers=0)) == {"api"}
    with pytest.raises(ValueError, match="no role left"):
        process_roles(Settings(roles="worker", workers=0))
