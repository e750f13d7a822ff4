"""Shared bench plumbing: a real `batchyard serve` process and a ready account.

Benches print figures; they assert nothing (targets are read by people, not CI).
"""

from __future__ import annotations

import io
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

BIG_PLAN = {"max_jobs": 1000, "max_executions_per_day": 10_000_000,
            "max_invocations_per_job_per_day": 10_000_000,
            "daily_runtime_budget_minutes": 10_000_000}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    operator: str
    process: subprocess.Popen[bytes]
    data_dir: Path


@contextmanager
def running_server(*extra_env: tuple[str, str], workers: int | None = None) -> Iterator[Server]:
    port = free_port()
    token = "bench-" + secrets.token_hex(8)
    with tempfile.TemporaryDirectory(prefix="batchyard-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        env = {**os.environ, "BATCHYARD_OPERATOR_TOKEN": token, **dict(extra_env)}
        command = [sys.executable, "-m", "batchyard.cli.main", "serve", "--port", str(port),
                   "--data-dir", str(data_dir)]
        if workers is not None:
            command += ["--workers", str(workers)]
        # BATCHYARD_BENCH_SERVER_LOG names a file for the server's output (debugging).
        log_path = os.environ.get("BATCHYARD_BENCH_SERVER_LOG")
        log_file = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=log_file)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the server did not start")
            time.sleep(0.1)
        try:
            yield Server(url, token, process, data_dir)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def code_zip(main_py: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", main_py)
    return buffer.getvalue()


def admin_client(server: Server) -> httpx.Client:
    operator = httpx.Client(base_url=server.url,
                            headers={"Authorization": f"Bearer {server.operator}"})
    account = operator.post("/api/v1/admin/accounts", json={
        "name": "bench", "batch_jobs_enabled": True, "plan": BIG_PLAN}).json()
    user = operator.post(f"/api/v1/admin/accounts/{account['id']}/users", json={
        "email": f"bench-{secrets.token_hex(4)}@example.com", "role": "admin"}).json()
    return httpx.Client(base_url=server.url, timeout=30,
                        headers={"Authorization": f"Bearer {user['api_key']}"})


def published_job(client: httpx.Client, name: str, main_py: str,
                  timeout_minutes: float = 5) -> str:
    job = client.post("/api/v1/jobs", json={"name": name}).json()
    client.put(f"/api/v1/jobs/{job['id']}/code", content=code_zip(main_py),
               headers={"Content-Type": "application/zip"}).raise_for_status()
    client.put(f"/api/v1/jobs/{job['id']}/schedule", json={"type": "none"}).raise_for_status()
    client.put(f"/api/v1/jobs/{job['id']}/settings",
               json={"timeout_minutes": timeout_minutes,
                     "concurrency": "allow"}).raise_for_status()
    client.post(f"/api/v1/jobs/{job['id']}/publish").raise_for_status()
    return str(job["id"])


def wait_finished(client: httpx.Client, execution_id: str, timeout: float = 30,
                  poll: float = 0.02) -> dict:
    """Poll gently: the bench must not steal the server's CPU from what it measures."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        execution = client.get(f"/api/v1/executions/{execution_id}").json()
        if execution["status"] not in ("queued", "running"):
            return dict(execution)
        time.sleep(poll)
    raise TimeoutError(execution_id)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def invoke_concurrently(url: str, headers: httpx.Headers, job_id: str, count: int,
                        clients: int) -> list[str]:
    """``count`` invocations of ``job_id`` from ``clients`` threads, each with its own
    connection; the execution ids, in no particular order."""
    ids: list[str] = []
    lock = threading.Lock()

    def invoke_some(how_many: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as own:
            for _ in range(how_many):
                answer = own.post(f"/api/v1/jobs/{job_id}/invoke", json={})
                answer.raise_for_status()
                with lock:
                    ids.append(answer.json()["execution_id"])

    threads = [threading.Thread(target=invoke_some, args=(count // clients,))
               for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ids


def wait_all_succeeded(client: httpx.Client, job_id: str, ids: list[str],
                       timeout: float = 300) -> None:
    """Claims go oldest first: wait for the last one invoked, then check them all once a
    poll (a listing on every poll would cost the server more than the jobs do). Raises
    if one of them ended otherwise, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    wait_finished(client, max(ids), timeout=timeout, poll=0.05)
    wanted = set(ids)
    while True:
        statuses = _statuses(client, job_id)
        ended_otherwise = {i: s for i, s in statuses.items()
                           if i in wanted and s not in ("queued", "running", "succeeded")}
        if ended_otherwise:
            raise RuntimeError(f"{len(ended_otherwise)} executions did not succeed: "
                               f"{sorted(ended_otherwise.items())[:5]}")
        if sum(statuses.get(i) == "succeeded" for i in wanted) == len(wanted):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all {len(wanted)} executions succeeded in {timeout} s")
        time.sleep(0.05)


def _statuses(client: httpx.Client, job_id: str) -> dict[str, str]:
    """Every execution of the job and its status, page by page."""
    statuses: dict[str, str] = {}
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"job_id": job_id, "limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/executions", params=params).json()
        statuses.update({item["id"]: item["status"] for item in page["items"]})
        cursor = page.get("next_cursor")
        if not cursor:
            return statuses
