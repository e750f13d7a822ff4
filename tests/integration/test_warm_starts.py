"""Warm starts against real sandboxed processes: one attempt per warm interpreter, gone
after it; a pool emptied when its key goes cold and when the supervisor closes; a change
of requirements never reaching a box built for the old ones.

The escape probes through warm and cold starts are test_sandbox.py's (every test there
runs on a server with and one without warm starts); the server killed with SIGKILL is
tests/e2e/test_e2e_warm_starts.py's.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from batchyard.app import Server
from batchyard.config import Settings
from batchyard.domain.attempts import AttemptResult, LogRecord
from batchyard.domain.executions import AttemptOutcome
from batchyard.runtime.box.sandbox import SandboxUnavailable
from batchyard.runtime.box.warm import WarmKey
from support.attempts import claimed_attempt, run_attempt, wait_for_warm
from support.processes import process_alive as alive

pytestmark = pytest.mark.timeout(180)

UID_BASE = 2_100_200_000
REPORTS = """
import os
def main():
    print('uid', os.getuid(), 'cwd', os.getcwd())
"""


def _server(base: Path, level: str, **settings: object) -> Server:
    try:
        return Server(Settings(
            data_dir=base / "data", workers=1,
            sandbox="bubblewrap" if level == "bubblewrap" else "none",  # type: ignore[arg-type]
            sandbox_uid_base=UID_BASE, job_network="open",
            **{"warm_pool_size": 4, **settings}))  # type: ignore[arg-type]
    except SandboxUnavailable as exc:
        pytest.skip(f"bubblewrap cannot run here: {exc.message}")


def _skip_unless_level_runs(level: str) -> None:
    if level == "bubblewrap" and shutil.which("bwrap") is None:
        pytest.skip("bwrap is not installed (Debian package bubblewrap)")
    if level == "rlimits" and os.geteuid() != 0:
        pytest.skip("the rlimits level switches to a job uid only when run as root")


@pytest.fixture(scope="module", params=["bubblewrap", "rlimits"])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    _skip_unless_level_runs(request.param)
    built = _server(tmp_path_factory.mktemp(f"warm-{request.param}"), request.param)
    if not built.supervisor.sandbox.runs_jobs:
        pytest.skip(f"jobs do not run here: {built.supervisor.sandbox.report.problem}")
    yield built
    built.supervisor.close()
    built.db.dispose()
    placement = built.supervisor.sandbox.placement
    if placement is not None and placement.runtime_dir is not None:
        shutil.rmtree(placement.runtime_dir, ignore_errors=True)


def started_warm(logs: list[LogRecord]) -> bool:
    return any("(warm start" in record.message for record in logs)


def stdout(logs: list[LogRecord]) -> list[str]:
    return [record.message for record in logs if record.stream == "stdout"]


def watch_takes(server: Server) -> list[tuple[int, Path]]:
    """Record the host pid and folder of every box the supervisor takes (an observer on
    the real pool; the pool still hands out its real processes)."""
    warm = server.supervisor.warm
    assert warm is not None
    taken: list[tuple[int, Path]] = []
    real_take: Callable[..., object] = warm.take

    def take(key: WarmKey) -> object:
        box = real_take(key)
        if box is not None:
            taken.append((box.child.process.pid, box.workspace.root))  # type: ignore[attr-defined]
        return box

    warm.take = take  # type: ignore[method-assign]
    return taken


def test_each_warm_interpreter_serves_one_attempt_and_is_gone_after(server: Server) -> None:
    taken = watch_takes(server)
    try:
        results: list[tuple[AttemptResult, list[LogRecord]]] = []
        for _ in range(6):
            claimed = claimed_attempt(REPORTS)
            wait_for_warm(server.supervisor, claimed)
            ready_before = server.supervisor.warm_pids()
            results.append(run_attempt(server.supervisor, claimed))
            pid, folder = taken[-1]
            # The box it ran in was ready before, is gone after, its folder too, and it
            # is not among the ready ones any more.
            assert pid in ready_before
            assert not alive(pid)
            assert not folder.exists()
            assert pid not in server.supervisor.warm_pids()
        assert len(taken) == 6
        assert len({pid for pid, _ in taken}) == 6, taken
        for result, logs in results:
            assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
            assert started_warm(logs)
        # Each in its own uid and its own folder, as cold starts are.
        lines = [stdout(logs)[0].split() for _, logs in results]
        assert len({line[1] for line in lines}) == 6, lines
        assert len({line[3] for line in lines}) == 6, lines
        if server.supervisor.sandbox.per_attempt_uid:
            low, high = server.supervisor.sandbox.uid_range or (0, 0)
            assert all(low <= int(line[1]) <= high for line in lines), lines
    finally:
        del server.supervisor.warm.take  # type: ignore[union-attr]


def test_a_failed_setup_in_a_warm_box_ends_the_box_too(server: Server) -> None:
    taken = watch_takes(server)
    try:
        claimed = claimed_attempt(REPORTS)
        wait_for_warm(server.supervisor, claimed)
        broken = replace(claimed, code=b"PK\x03\x04 not a zip")
        result, _ = run_attempt(server.supervisor, broken)
        assert result.outcome is AttemptOutcome.FAILED
        assert result.error is not None and result.error.startswith("setup_failed"), \
            result.error
        pid, folder = taken[-1]
        assert not alive(pid) and not folder.exists()
    finally:
        del server.supervisor.warm.take  # type: ignore[union-attr]


def test_the_pool_is_emptied_when_its_key_goes_cold_and_when_closed(
        tmp_path: Path) -> None:
    _skip_unless_level_runs("bubblewrap")
    server = _server(tmp_path, "bubblewrap", warm_idle_seconds=1.0)
    try:
        warm = server.supervisor.warm
        assert warm is not None
        plain = claimed_attempt(REPORTS)  # no requirements: the key WarmKey()
        wait_for_warm(server.supervisor, plain)
        pids = server.supervisor.warm_pids()
        assert pids
        # Nothing started for a second: the key is cold, its boxes retired.
        deadline = time.monotonic() + 10
        while warm.ready_count() or any(alive(pid) for pid in pids):
            assert time.monotonic() < deadline, (warm.stats(), [p for p in pids if alive(p)])
            time.sleep(0.05)
        assert warm.stats().retired >= 1
        # Hot again, then the supervisor closes (the server's stop): nothing left.
        wait_for_warm(server.supervisor, plain)
        pids = server.supervisor.warm_pids()
        server.supervisor.close()
        # The boxes' inner processes (bwrap's child, the interpreter in its PID
        # namespace) follow their outer bwrap within moments.
        deadline = time.monotonic() + 3
        while [pid for pid in pids if alive(pid)]:
            assert time.monotonic() < deadline, [pid for pid in pids if alive(pid)]
            time.sleep(0.02)
        assert not list(server.supervisor.work_root.glob("warm-*"))
    finally:
        server.supervisor.close()
        server.db.dispose()


def test_a_server_with_warm_starts_off_spawns_nothing_ahead(tmp_path: Path) -> None:
    _skip_unless_level_runs("bubblewrap")
    server = _server(tmp_path, "bubblewrap", warm_pool_size=0)
    try:
        assert server.supervisor.warm is None
        result, logs = run_attempt(server.supervisor, claimed_attempt(REPORTS))
        assert result.outcome is AttemptOutcome.SUCCEEDED
        assert not started_warm(logs)
        assert not list(server.supervisor.work_root.glob("warm-*"))
    finally:
        server.db.dispose()


def _acting_on_take(server: Server, act: Callable[[object], None]) -> None:
    """After each take, ``act`` on the box taken (before its code is extracted)."""
    warm = server.supervisor.warm
    assert warm is not None
    real_take: Callable[..., object] = warm.take

    def take(key: WarmKey) -> object:
        box = real_take(key)
        if box is not None:
            act(box)
        return box

    warm.take = take  # type: ignore[method-assign]


def test_a_box_killed_after_it_was_taken_is_not_used_the_attempt_starts_cold(
        server: Server) -> None:
    def kill(box: object) -> None:
        process = box.child.process  # type: ignore[attr-defined]
        os.killpg(process.pid, 9)
        process.wait(timeout=5)

    _acting_on_take(server, kill)
    try:
        claimed = claimed_attempt(REPORTS)
        wait_for_warm(server.supervisor, claimed)
        result, logs = run_attempt(server.supervisor, claimed)
        assert result.outcome is AttemptOutcome.SUCCEEDED, (result.error, logs)
        assert not started_warm(logs)
        assert stdout(logs)[0].startswith("uid ")
    finally:
        del server.supervisor.warm.take  # type: ignore[union-attr]


def test_a_stop_during_setup_ends_the_attempt_before_main_runs(server: Server) -> None:
    claimed = claimed_attempt(REPORTS)

    def cancel(box: object) -> None:
        assert server.supervisor.stop(claimed.execution_id, AttemptOutcome.CANCELLED,
                                      "cancelled during setup")

    _acting_on_take(server, cancel)
    try:
        wait_for_warm(server.supervisor, claimed)
        result, logs = run_attempt(server.supervisor, claimed)
        assert result.outcome is AttemptOutcome.CANCELLED, (result.error, logs)
        assert result.error == "cancelled during setup"
        assert stdout(logs) == []  # main() never ran
    finally:
        del server.supervisor.warm.take  # type: ignore[union-attr]


def test_no_warm_starts_where_jobs_run_unconfined(tmp_path: Path) -> None:
    server = Server(Settings(data_dir=tmp_path / "data", workers=1, sandbox="off",
                             job_network="open", warm_pool_size=4))
    try:
        assert server.supervisor.warm is None
    finally:
        server.db.dispose()
