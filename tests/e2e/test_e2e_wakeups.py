"""On PostgreSQL a worker process hears of work queued by another process at once
(NOTIFY/LISTEN, store/wakeups.py), not at its next poll, and hears again after the
database crash-restarted. The worker's poll is set to a minute here: an execution that
starts within seconds was woken, since no poll came."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from cryptography.fernet import Fernet
from e2e_support import OPERATOR_TOKEN, create_account, deploy_job, free_port, invoke, wait_for

from support.fleet import FleetProcess
from support.pgcluster import PostgresCluster

POLL_SECONDS = 60.0


def _started_after(client: httpx.Client, job_id: str) -> float:
    before = time.monotonic()
    execution_id = invoke(client, job_id)
    done = wait_for(client, execution_id, timeout=POLL_SECONDS / 2)
    assert done["status"] == "succeeded", done
    return time.monotonic() - before


def test_a_worker_process_is_woken_by_work_another_process_queued(
        cluster: PostgresCluster, tmp_path: Path) -> None:
    env = {"BATCHYARD_DATABASE_URL": cluster.url(), "BATCHYARD_OPERATOR_TOKEN": OPERATOR_TOKEN,
           "BATCHYARD_SECRET_KEY": Fernet.generate_key().decode(),
           "BATCHYARD_POLL_INTERVAL_SECONDS": str(POLL_SECONDS)}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = FleetProcess("api", tmp_path / "api", [
        "serve", "--role", "api,scheduler", "--port", str(port),
        "--data-dir", str(tmp_path / "api" / "data")], env,
        health_url=f"{url}/api/v1/health").start()
    worker = FleetProcess("worker", tmp_path / "worker", [
        "worker", "--workers", "2", "--data-dir", str(tmp_path / "worker" / "data")], env)
    try:
        worker.start()
        with httpx.Client(base_url=url, timeout=30,
                          headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as operator:
            account = create_account(operator)
        job_id = deploy_job(account, "def main():\n    print('woken')\n")
        # The worker's first poll found nothing; its next is a minute away.
        time.sleep(2)
        first = _started_after(account.owner, job_id)
        assert first < 10, (first, worker.output()[-3000:])

        cluster.restart(crash=True)
        # The API answers again once its pool reconnects; the worker's listener comes back
        # by itself (1 s between tries) and must hear the next execution too.
        deadline = time.monotonic() + 60
        while True:
            try:
                if account.owner.get("/api/v1/jobs").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, api.output()[-3000:]
            time.sleep(0.5)
        time.sleep(3)
        again = _started_after(account.owner, job_id)
        assert again < 15, (again, worker.output()[-3000:])
        assert "not listening for wake-ups" in worker.output()  # it did lose the database
        account.close()
    finally:
        worker.stop()
        api.stop()
