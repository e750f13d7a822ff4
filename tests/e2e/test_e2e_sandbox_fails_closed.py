"""Fail closed: a real ``batchyard serve`` on a host without bubblewrap never runs customer
code as its own uid unless the operator says ``BATCHYARD_SANDBOX=off``.

Each server's PATH has no ``bwrap``, and its configured job interpreter lies under a 0700
folder (a link to the real one inside a fresh 0700 folder: root reaches it, a job uid does
not; a pyenv build under ``/root`` is the usual case). A probe job then tries the data
folder, the secret key, the operator token, the database and the environment of every
process on the host. With ``auto`` and ``none`` it is refused everything (or, on a host
without any interpreter a job uid can run, the execution ends ``failed`` with reason
``sandbox_unavailable``); with ``off`` it runs as the server's own uid. A server whose
jobs cannot be isolated at all still serves, tells its operator why and what to change,
and fails each execution without starting it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import (
    OPERATOR_TOKEN,
    ServerProcess,
    create_account,
    deploy_job,
    invoke,
    lines_of,
    path_without,
    read_logs,
    wait_for,
)

from batchyard.app import job_python
from batchyard.runtime.box.jobroot import SYSTEM_PYTHONS
from batchyard.runtime.box.netguard import remove_network_guard

pytestmark = pytest.mark.timeout(90)

UID_BASE = 2_400_000_000
UID_COUNT = 10_000
CANARY = "fails-closed-canary-7d1e"

PROBE = textwrap.dedent("""\
    import json
    import os

    def attempt(action):
        try:
            return f"DONE {action()!r}"[:200]
        except Exception as exc:
            return f"DENIED {type(exc).__name__}"

    def read(path):
        if os.path.isdir(path):
            return os.listdir(path)
        with open(path, "rb") as handle:
            return handle.read(64)

    def main(event):
        body = event["body"]
        found = {"uid": os.getuid()}
        for path in body["paths"]:
            found[path] = attempt(lambda: read(path))
        # Any process on the host whose environment holds the server's canary.
        leaked = []
        for pid in [name for name in os.listdir("/proc") if name.isdigit()]:
            try:
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    if body["canary"].encode() in handle.read():
                        leaked.append(int(pid))
            except OSError:
                pass
        found["environ leaked by"] = leaked
        print("FOUND", json.dumps(found))
    """)


def system_python() -> str | None:
    return next((path for path in SYSTEM_PYTHONS if os.path.isfile(path)), None)


def start(base: Path, mode: str, **extra: str) -> ServerProcess:
    """A server on a PATH without bwrap whose job interpreter lies under a 0700 folder."""
    closed = base / "closed"
    closed.mkdir(mode=0o700)
    python = closed / "python3"
    python.symlink_to(os.path.realpath(job_python(None)))
    data_dir = base / "data"
    data_dir.mkdir(mode=0o700)
    env = {"PATH": path_without(base / "bin", "bwrap"), "BATCHYARD_SANDBOX": mode,
           "BATCHYARD_PYTHON": str(python), "BATCHYARD_SANDBOX_UID_BASE": str(UID_BASE),
           "BATCHYARD_E2E_CANARY": CANARY, **extra}
    return ServerProcess(base, data_dir=data_dir, workers=2, env=env).start()


@pytest.fixture
def base() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("checked against a server running as root, which gives each attempt "
                    "a uid of its own")
    folder = Path(tempfile.mkdtemp(prefix="batchyard-fails-closed-"))  # 0700
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
    # The network guard's table outlives its server by design (runtime/box/netguard.py).
    remove_network_guard((UID_BASE, UID_BASE + UID_COUNT - 1))


@pytest.fixture
def stopped() -> Iterator[list[ServerProcess]]:
    """Servers to stop at the end, with the runtime folder each made outside the test's."""
    servers: list[ServerProcess] = []
    yield servers
    for server in servers:
        folder = server.sandbox()["runtime_dir"] if server.running else None
        server.stop()
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


def probe(server: ServerProcess) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Run PROBE on ``server``: the execution, what the job found, the data folder's paths."""
    data_dir = server.data_dir.resolve()
    paths = [str(data_dir), str(data_dir / "secret.key"), str(data_dir / "operator.token"),
             str(data_dir / "batchyard.sqlite3"), str(data_dir / "node.id")]
    with server.client() as operator:
        account = create_account(operator)
    try:
        job_id = deploy_job(account, PROBE)
        execution = wait_for(account.owner, invoke(account.owner, job_id, {
            "paths": paths, "canary": CANARY}), timeout=30)
        found: dict[str, Any] = {}
        stdout = lines_of(read_logs(account.owner, execution["id"]), "stdout")
        for line in stdout:
            if line.startswith("FOUND "):
                found = json.loads(line.removeprefix("FOUND "))
        return execution, found, paths
    finally:
        account.close()


@pytest.mark.parametrize("mode", ["auto", "none"])
def test_without_bwrap_a_probe_job_reaches_nothing_of_the_servers(
        base: Path, stopped: list[ServerProcess], mode: str) -> None:
    server = start(base, mode)
    stopped.append(server)
    view = server.sandbox()

    execution, found, paths = probe(server)

    if not view["jobs_run"]:
        # A host where no interpreter the job uids can run exists: nothing ran at all.
        assert system_python() is None, view
        assert (execution["status"], execution["reason"]) == ("failed", "sandbox_unavailable")
        return
    assert view["level"] == "rlimits" and view["python"] != str(base / "closed" / "python3")
    assert execution["status"] == "succeeded", execution
    assert UID_BASE <= found.pop("uid") < UID_BASE + UID_COUNT
    assert found.pop("environ leaked by") == []
    assert set(found) == set(paths)
    assert all(outcome.startswith("DENIED") for outcome in found.values()), found


def test_off_is_the_explicit_way_to_run_jobs_as_the_servers_uid(
        base: Path, stopped: list[ServerProcess]) -> None:
    server = start(base, "off")
    stopped.append(server)
    view = server.sandbox()
    assert (view["level"], view["jobs_run"], view["job_uids"]) == ("unconfined", True, None)

    execution, found, paths = probe(server)

    assert execution["status"] == "succeeded", execution
    assert found["uid"] == os.geteuid()
    assert found[paths[1]].startswith("DONE")  # the secret key: unconfined means that


def test_a_server_that_cannot_isolate_jobs_serves_says_why_and_fails_each_execution(
        base: Path, stopped: list[ServerProcess]) -> None:
    closed = base / "closed-runtime"
    closed.mkdir(mode=0o700)
    server = start(base, "auto", BATCHYARD_RUNTIME_DIR=str(closed / "runtime"))
    stopped.append(server)

    # The API serves; anyone sees that jobs do not run, only the operator sees why.
    public = httpx.get(f"{server.base_url}/api/v1/health", timeout=10).json()
    assert public["isolation"].startswith("unavailable (jobs do not run")
    assert public["sandbox"] is None and str(base) not in json.dumps(public)
    view = server.sandbox()
    assert (view["level"], view["jobs_run"]) == ("unavailable", False)
    assert f"{closed} (mode 0700) does not let other users pass" in view["problem"]
    assert view["fix"].startswith("set BATCHYARD_RUNTIME_DIR to a folder whose every parent")
    log = server.output()
    assert re.search(r"ERROR batchyard: NO JOB WILL RUN: this host cannot isolate them: .*"
                     r"To change: set BATCHYARD_RUNTIME_DIR", log), log[-3000:]

    with server.client() as operator:
        account = create_account(operator)
    try:
        job_id = deploy_job(account, PROBE, settings={"retries": 1})
        execution = wait_for(account.owner, invoke(account.owner, job_id, {
            "paths": [], "canary": CANARY}), timeout=30)
        logs = read_logs(account.owner, execution["id"])
    finally:
        account.close()
    assert (execution["status"], execution["reason"]) == ("failed", "sandbox_unavailable")
    # One attempt, not retried; the tenant learns nothing of the host.
    assert len(execution["attempts"]) == 1 and execution["attempts"][0]["exit_code"] is None
    assert execution["message"] == (
        "sandbox_unavailable: this server cannot run jobs in isolation at the moment, so the "
        "job was not started; the server's operator has been told why")
    assert lines_of(logs, "stdout") == []
    text = json.dumps(logs) + json.dumps(execution)
    assert str(base) not in text and OPERATOR_TOKEN not in text
