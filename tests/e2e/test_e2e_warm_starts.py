"""Warm starts through a real ``batchyard serve``: once a job's key is hot its next
execution starts in a warm interpreter (the attempt's log says so, health counts it), and
the warm interpreters are gone after the server stops, and after it is killed with SIGKILL
(no orphans: each box's boot dies with its supervisor's liveness pipe, bwrap with its
parent), and the folders a killed server left are swept when it starts again."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import (
    ServerFactory,
    ServerProcess,
    create_account,
    deploy_job,
    invoke,
    lines_of,
    process_alive,
    read_logs,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

JOB = "def main():\n    print('hello from main')\n"


def warm_starts(server: ServerProcess) -> dict[str, Any]:
    with server.client() as client:
        answer = client.get("/api/v1/health")
    assert answer.status_code == 200, answer.text
    view = answer.json()["warm_starts"]
    assert view is not None, "warm starts are on by default"
    return dict(view)


def processes_in(work_dir: str) -> list[int]:
    """Host pids whose environment puts their output in a warm folder of ``work_dir``."""
    marker = f"OUTPUT_DIR={work_dir}/warm-".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and process_alive(int(entry.name)):
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
    return found


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_warm_starts_once_hot_and_no_warm_interpreter_outlives_its_server(
        launch_server: ServerFactory, how: str) -> None:
    server = launch_server()
    work_dir = server.sandbox()["work_dir"]
    with server.client() as operator:
        account = create_account(operator)
    with contextlib.closing(account):
        job_id = deploy_job(account, JOB)
        # The first execution of a key starts cold; the key is hot after it.
        first = invoke(account.owner, job_id)
        assert wait_for(account.owner, first)["status"] == "succeeded"
        wait_until(lambda: warm_starts(server)["ready"] >= 1, 10,
                   lambda: f"no warm interpreter: {warm_starts(server)}")
        second = invoke(account.owner, job_id)
        assert wait_for(account.owner, second)["status"] == "succeeded"
        logs = read_logs(account.owner, second)
        assert any("(warm start" in line for line in lines_of(logs, "log")), logs
        assert lines_of(logs, "stdout") == ["hello from main"]
        view = warm_starts(server)
        assert view["warm_starts"] >= 1 and view["cold_starts"] >= 1, view
        # The box of the second execution is gone; new ones wait for the next.
        wait_until(lambda: processes_in(work_dir), 10, "no warm interpreter process")
    waiting = processes_in(work_dir)
    if how == "stopped":
        assert server.stop() in (0, -15), "the server needed SIGKILL to stop"
    else:
        server.kill()
    wait_until(lambda: not [pid for pid in waiting if process_alive(pid)], 5,
               lambda: f"{[p for p in waiting if process_alive(p)]} outlived the {how} "
                       "server")
    assert processes_in(work_dir) == []
    if how == "killed":
        # SIGKILL ran no cleanup: the boxes' folders stay until the next start on the
        # data folder sweeps them (the SQLite store's only process: all of it is stale).
        left = [entry for entry in Path(work_dir).iterdir() if entry.name.startswith("warm-")]
        assert left, "a killed server's warm folders were expected in its work folder"
        restarted = launch_server(data_dir=server.data_dir)
        assert restarted.sandbox()["work_dir"] == work_dir
        assert [entry for entry in left if entry.exists()] == []


def test_health_counts_warm_starts_for_the_operator_only(server: ServerProcess) -> None:
    view = warm_starts(server)
    assert view["size"] == 4 and view["spawn_failures"] == 0, view
    public = httpx.get(f"{server.base_url}/api/v1/health", timeout=10).json()
    assert public.get("warm_starts") is None
