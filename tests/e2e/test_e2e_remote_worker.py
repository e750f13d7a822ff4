"""A remote worker (``batchyard worker --server URL --token-file F``) with no database URL:
runs the control plane's executions over HTTP, its token opens nothing else, a revoked
token is refused at once, and a worker frozen past its lease loses its attempt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from e2e_support import (
    OPERATOR_TOKEN,
    Account,
    ServerProcess,
    create_account,
    deploy_job,
    get_execution,
    invoke,
    lines_of,
    process_alive,
    processes_of,
    read_logs,
    wait_for,
    wait_until,
)

from batchyard.domain import attempt_wire
from batchyard.domain.attempts import AttemptResult, ClaimedAttempt
from batchyard.domain.executions import AttemptOutcome
from batchyard.runtime.port_remote import RemotePort

LEASE = 5.0
TIMING = {"BATCHYARD_LEASE_SECONDS": str(LEASE), "BATCHYARD_HEARTBEAT_SECONDS": "1",
          "BATCHYARD_SWEEP_INTERVAL_SECONDS": "1", "BATCHYARD_NODE_HEARTBEAT_SECONDS": "1"}


class RemoteWorkerProcess:
    def __init__(self, root: Path, url: str, token: str, workers: int = 2) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.token_file = root / "worker.token"
        self.token_file.write_text(token)
        self.log_path = root / "worker.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHYARD_")}
        env.update(PYTHONUNBUFFERED="1", TMPDIR=str(root))
        assert "BATCHYARD_DATABASE_URL" not in env
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "batchyard.cli.main", "worker", "--server", url,
                 "--token-file", str(self.token_file), "--data-dir", str(root / "data"),
                 "--workers", str(workers), "--labels", "region=eu"],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ServerProcess]:
    """API and scheduler only: every attempt runs on a remote worker."""
    server = ServerProcess(tmp_path / "control", workers=None,
                           extra_args=("--role", "api,scheduler"), env=TIMING)
    server.start()
    yield server
    server.stop()


def _worker_token(operator: httpx.Client, name: str) -> dict[str, str]:
    made = operator.post("/api/v1/admin/workers", json={"name": name})
    assert made.status_code == 201, made.text
    return dict(made.json())


def test_a_remote_worker_runs_executions_and_its_token_opens_nothing_else(
        control_plane: ServerProcess, tmp_path: Path) -> None:
    operator = control_plane.client()
    token = _worker_token(operator, "eu-1")
    account = create_account(operator)
    # The worker token is no API key and no operator token.
    with control_plane.client(token["token"]) as as_worker:
        assert as_worker.get("/api/v1/me").status_code == 401
        assert as_worker.get("/api/v1/jobs").status_code == 401
        assert as_worker.get("/api/v1/admin/workers").status_code == 401
        assert as_worker.post("/api/v1/admin/accounts", json={"name": "x"}).status_code == 401
        assert as_worker.get("/api/v1/health").json()["nodes"] is None
    # ... and neither an API key nor the operator token opens the worker protocol.
    for other in (account.keys["owner"], OPERATOR_TOKEN):
        with control_plane.client(other) as client:
            assert client.get("/api/v1/worker/hello").status_code == 401
    worker = RemoteWorkerProcess(tmp_path / "remote", control_plane.base_url, token["token"])
    try:
        job = deploy_job(account, "import os\nfrom helper import LS\n\ndef main(event):\n"
                         "    LS.log.info('remote says ' + event['body']['name'])\n"
                         "    open(os.path.join(os.environ['OUTPUT_DIR'], 'out.txt'), 'w')"
                         ".write('made remotely')\n", settings={"concurrency": "allow"})
        executions = [invoke(account.owner, job, {"name": f"n{i}"}) for i in range(3)]
        for execution_id in executions:
            done = wait_for(account.owner, execution_id, timeout=60)
            assert done["status"] == "succeeded", (done, worker.output()[-3000:])
            assert done["attempts"][0]["worker"].startswith(token["id"] + ":")
        logs = read_logs(account.owner, executions[0])
        assert any("remote says n0" in item["message"] for item in logs)
        artifacts = account.owner.get(f"/api/v1/executions/{executions[0]}/artifacts")
        assert artifacts.status_code == 200, artifacts.text
        # The operator's health view lists the remote worker and the control plane's node.
        nodes = wait_until(lambda: [n for n in operator.get("/api/v1/health").json()["nodes"]
                                    if n["remote"]], 10, "the remote worker is not listed")
        assert nodes[0]["roles"] == ["worker"] and nodes[0]["labels"] == ["region=eu"]
        assert nodes[0]["capacity"] == 2
        health = operator.get("/api/v1/health").json()
        assert health["roles"] == ["api", "scheduler"]
        assert any(not n["remote"] and n["roles"] == ["api", "scheduler"]
                   for n in health["nodes"])
        listed = operator.get("/api/v1/admin/workers").json()["items"]
        assert [t["id"] for t in listed] == [token["id"]] and listed[0]["last_seen_at"]
        assert "token" not in listed[0]

        # Revoked: refused at its next call, and nothing more is claimed.
        assert operator.delete(f"/api/v1/admin/workers/{token['id']}").status_code == 200
        with control_plane.client(token["token"]) as as_worker:
            assert as_worker.get("/api/v1/worker/hello").status_code == 401
            assert as_worker.post("/api/v1/worker/claim",
                                  json={"worker": "x/0"}).status_code == 401
        waiting = invoke(account.owner, job, {"name": "late"})
        # The worker learns it at its next call (a beat a second): it stops claiming and
        # exits non-zero with one plain message, no traceback and no polling on.
        assert worker.process.wait(20) == 1
        assert get_execution(account.owner, waiting)["status"] == "queued"
        output = worker.output()
        assert "Traceback" not in output, output
        assert output.count("refused this worker (") == 1, output
        assert "create a new one with POST /api/v1/admin/workers" in output
    finally:
        worker.stop()
        operator.close()
        account.close()


def test_a_frozen_remote_worker_loses_its_attempt_and_its_late_writes_are_refused(
        control_plane: ServerProcess, tmp_path: Path) -> None:
    operator = control_plane.client()
    token = _worker_token(operator, "freezer")
    account = create_account(operator)
    worker = RemoteWorkerProcess(tmp_path / "remote", control_plane.base_url, token["token"])
    try:
        job = deploy_job(account, "import time\n\ndef main():\n    for i in range(600):\n"
                         "        print('tick', i, flush=True)\n        time.sleep(0.1)\n")
        execution_id = invoke(account.owner, job)
        wait_for(account.owner, execution_id, "running", timeout=60)
        wait_until(lambda: len(lines_of(read_logs(account.owner, execution_id), "stdout")) > 3,
                   20, "the job printed nothing")
        children = wait_until(lambda: processes_of(execution_id), 10, "no job process")
        os.kill(worker.process.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        ended = wait_for(account.owner, execution_id, "failed", timeout=LEASE + 15)
        detected = time.monotonic() - frozen
        # Lost-worker detection: the lease, then at most one sweep interval and a beat.
        assert detected <= LEASE + 5, detected
        assert ended["reason"] == "worker_lost"
        assert ended["attempts"][0]["status"] == "interrupted"
        lines_before = len(read_logs(account.owner, execution_id))
        os.kill(worker.process.pid, signal.SIGCONT)
        # Its next renewal is refused: it kills its own child; its late logs and its
        # finish are refused (the execution and its log stay as the sweeper left them).
        wait_until(lambda: not any(process_alive(pid) for pid in children), 15,
                   "the frozen worker's child outlived its lost lease")
        time.sleep(2)
        after = get_execution(account.owner, execution_id)
        assert (after["status"], after["reason"]) == ("failed", "worker_lost")
        assert after["attempts"][0]["status"] == "interrupted"
        assert len(read_logs(account.owner, execution_id)) == lines_before
        print(f"lost-worker detection: {detected:.1f} s with a {LEASE:g} s lease")
    finally:
        worker.stop()
        operator.close()
        account.close()


def _queued_executions(account: Account, job: str, count: int) -> list[str]:
    return [invoke(account.owner, job, {"n": i}) for i in range(count)]


def test_slots_that_fetch_one_zip_at_once_each_get_it(
        control_plane: ServerProcess, tmp_path: Path) -> None:
    """Two slots of one worker claim two executions of one job together, and both fetch
    the zip (its cache is emptied each round): each gets its code and runs. A shared
    partial file name let one slot's rename take the other's file away; that attempt
    was then left to lapse into worker_lost."""
    operator = control_plane.client()
    token = _worker_token(operator, "twins")
    account = create_account(operator, plan={
        "max_concurrent_executions": 8, "max_executions_per_day": 100,
        "max_invocations_per_job_per_day": 100})
    port = RemotePort(control_plane.base_url, token["token"], tmp_path / "cache",
                      claim_wait=0.0)
    try:
        job = deploy_job(account, "def main():\n    pass\n", settings={"concurrency": "allow"})
        for round_ in range(6):
            for cached in (tmp_path / "cache").iterdir():
                cached.unlink()
            executions = _queued_executions(account, job, 4)
            start = threading.Barrier(4)

            def claim(slot: str, start: threading.Barrier = start) -> ClaimedAttempt | None:
                start.wait()
                return port.claim(slot, LEASE)

            with ThreadPoolExecutor(4) as pool:
                claimed = list(pool.map(claim, [f"twin/{round_}-{n}" for n in range(4)]))
            assert all(c is not None for c in claimed), claimed
            assert sorted(c.execution_id for c in claimed if c) == sorted(executions)
            assert len({c.code for c in claimed if c}) == 1
            assert not list((tmp_path / "cache").glob("*.part"))
            for attempt in claimed:
                assert attempt is not None
                assert port.finish(attempt, AttemptResult(
                    AttemptOutcome.SUCCEEDED, 0.0, 0, None, datetime.now(UTC)))
    finally:
        port.close()
        operator.close()
        account.close()


def test_a_claim_whose_code_cannot_be_kept_ends_its_attempt_at_once(
        control_plane: ServerProcess, tmp_path: Path) -> None:
    """The worker cannot store the zip (a folder stands where the cached file goes): the
    attempt it claimed is ended failed there and then, with a reference and no host path,
    not left running until its lease lapses into worker_lost."""
    operator = control_plane.client()
    token = _worker_token(operator, "broken-cache")
    account = create_account(operator)
    port = RemotePort(control_plane.base_url, token["token"], tmp_path / "cache",
                      claim_wait=0.0)
    try:
        main = "def main():\n    pass\n"
        job = deploy_job(account, main)
        stored = account.owner.get(f"/api/v1/jobs/{job}/code/versions/1")
        assert stored.status_code == 200, stored.text
        (tmp_path / "cache" / f"{attempt_wire.code_digest(stored.content)}.zip").mkdir()
        execution_id = invoke(account.owner, job)
        assert port.claim("broken/0", LEASE) is None
        ended = wait_for(account.owner, execution_id, timeout=LEASE - 1)
        assert ended["status"] == "failed" and ended["reason"] != "worker_lost", ended
        error = ended["attempts"][0]["error"]
        assert "reference err_" in error and str(tmp_path) not in error, error
    finally:
        port.close()
        operator.close()
        account.close()


def test_claims_beyond_the_held_long_polls_are_answered_503_with_retry_after_at_once(
        control_plane: ServerProcess) -> None:
    """An overloaded control plane tells workers when to come back instead of holding
    them until they time out: past MAX_WAITING_CLAIMS long-polls, a claim is 503 at once."""
    from batchyard.api.routes_worker import MAX_WAITING_CLAIMS

    operator = control_plane.client()
    token = _worker_token(operator, "crowd")
    headers = {"Authorization": f"Bearer {token['token']}"}
    url = f"{control_plane.base_url}/api/v1/worker/claim"
    held_for = 8.0

    def hold(n: int) -> int:
        with httpx.Client(timeout=30) as client:
            return client.post(url, headers=headers, json={
                "worker": f"w/{n}", "wait_seconds": held_for}).status_code

    try:
        with ThreadPoolExecutor(MAX_WAITING_CLAIMS) as pool:
            holders = [pool.submit(hold, n) for n in range(MAX_WAITING_CLAIMS)]
            # Every long-poll is held (nothing is queued) before the one over the limit.
            time.sleep(3)
            assert not any(h.done() for h in holders)
            asked = time.monotonic()
            over = httpx.post(url, headers=headers, timeout=30,
                              json={"worker": "w/over", "wait_seconds": held_for})
            answered_in = time.monotonic() - asked
            assert over.status_code == 503, over.text
            assert over.headers["retry-after"] == "1"
            assert over.json()["error"]["code"] == "overloaded"
            assert answered_in < 2.0, answered_in
            assert [h.result() for h in holders] == [204] * MAX_WAITING_CLAIMS
        # Once they are answered, claims are held again.
        assert hold(0) == 204
    finally:
        operator.close()
