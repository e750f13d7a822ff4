"""Scale-out figures on a private PostgreSQL cluster (issue 10's performance section).

    python bench/scale_out.py [cpu] [throughput] [remote] [fairness]   (default: all)

- cpu: control-plane CPU per execution of trivial jobs (the batchyard processes'
  own CPU, job children excluded), PostgreSQL's CPU beside it. Target < 5 ms.
- throughput: N executions of time.sleep(2) with 1, 2 and 4 worker processes of
  capacity 64 each; wall time and executions/s against min(slots / 2 s, the job-start
  ceiling measured first with trivial jobs). Target >= 80 %.
- remote: invoke -> main() p50, a remote worker (HTTP) vs a worker on the database.
  Target: remote adds < 10 ms on loopback.
- fairness: account B's one invocation behind account A's 5,000 queued: time to start.

BENCH_SCALE_EXECUTIONS (default 1000) sets N; BENCH_FAIRNESS_QUEUED (default 5000) A's
backlog; BENCH_SCALE_WORKERS (default 1,2,4) the worker counts; BENCH_WARM_POOL_SIZE the
workers' warm pools (default: theirs, 4). Needs root (the cluster is made as the postgres
user). The chaos run at 2,000 executions:
BATCHYARD_CHAOS_EXECUTIONS=2000 pytest -m chaos -s tests/e2e/test_e2e_chaos.py
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from cryptography.fernet import Fernet

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from _harness import BIG_PLAN, code_zip, free_port, percentile

from support.fleet import FleetProcess
from support.pgcluster import PostgresCluster

PLAN = {**BIG_PLAN, "max_concurrent_executions": 1000, "max_jobs": 100}
TRIVIAL = "def main():\n    pass\n"
SLEEPER = "import time\ndef main():\n    time.sleep(2)\n"
STAMPED = "import time\ndef main():\n    print('ENTER', repr(time.time()))\n"


@dataclass
class Fleet:
    url: str
    operator: str
    api: FleetProcess
    workers: list[FleetProcess]
    database: str


@contextmanager
def fleet(root: Path, workers: int, capacity: int, remote: bool = False) -> Iterator[Fleet]:
    # Each worker process on the database may hold a connection per slot, plus its loops'.
    cluster = PostgresCluster(max_connections=100 + workers * (capacity + 30), settings={
        "shared_preload_libraries": "pg_stat_statements"}).start()
    token = "bench-" + secrets.token_hex(8)
    env = {"BATCHYARD_DATABASE_URL": cluster.url(), "BATCHYARD_OPERATOR_TOKEN": token,
           "BATCHYARD_SECRET_KEY": Fernet.generate_key().decode()}
    if "BENCH_WARM_POOL_SIZE" in os.environ:  # e.g. 0: the workers start every job cold
        env["BATCHYARD_WARM_POOL_SIZE"] = os.environ["BENCH_WARM_POOL_SIZE"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = FleetProcess("api", root / "api", ["serve", "--role", "api,scheduler", "--port",
                                             str(port), "--data-dir", str(root / "api/d")],
                       env, health_url=f"{url}/api/v1/health").start()
    started: list[FleetProcess] = []
    try:
        for n in range(workers):
            if remote:
                made = httpx.post(f"{url}/api/v1/admin/workers", json={"name": f"w{n}"},
                                  headers={"Authorization": f"Bearer {token}"}).json()
                token_file = root / f"w{n}.token"
                token_file.write_text(made["token"])
                args = ["worker", "--server", url, "--token-file", str(token_file)]
                worker_env = {k: v for k, v in env.items() if k != "BATCHYARD_DATABASE_URL"}
            else:
                args, worker_env = ["worker"], env
            started.append(FleetProcess(f"w{n}", root / f"w{n}", [
                *args, "--workers", str(capacity), "--data-dir", str(root / f"w{n}/d")],
                worker_env).start())
        yield Fleet(url, token, api, started, cluster.url())
    finally:
        for process in [*started, api]:
            process.stop()
        cluster.remove()


def account(server: Fleet) -> httpx.Client:
    operator = httpx.Client(base_url=server.url, timeout=60,
                            headers={"Authorization": f"Bearer {server.operator}"})
    made = operator.post("/api/v1/admin/accounts", json={
        "name": "bench", "batch_jobs_enabled": True, "plan": PLAN}).json()
    user = operator.post(f"/api/v1/admin/accounts/{made['id']}/users", json={
        "email": f"b-{secrets.token_hex(4)}@example.com", "role": "admin"}).json()
    operator.close()
    return httpx.Client(base_url=server.url, timeout=60,
                        headers={"Authorization": f"Bearer {user['api_key']}"},
                        limits=httpx.Limits(max_connections=16))


def job(client: httpx.Client, main_py: str) -> str:
    made = client.post("/api/v1/jobs", json={"name": "j" + secrets.token_hex(4)}).json()
    client.put(f"/api/v1/jobs/{made['id']}/code", content=code_zip(main_py),
               headers={"Content-Type": "application/zip"}).raise_for_status()
    client.put(f"/api/v1/jobs/{made['id']}/schedule", json={"type": "none"}).raise_for_status()
    client.put(f"/api/v1/jobs/{made['id']}/settings",
               json={"concurrency": "allow"}).raise_for_status()
    client.post(f"/api/v1/jobs/{made['id']}/publish").raise_for_status()
    return str(made["id"])


def invoke_many(client: httpx.Client, job_id: str, count: int, clients: int = 8) -> None:
    """``count`` invocations from ``clients`` concurrent callers, as an API's users make
    them: one sequential caller was the bottleneck (its round trips, not the workers)."""
    def invoke(_: int) -> None:
        client.post(f"/api/v1/jobs/{job_id}/invoke", json={}).raise_for_status()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(invoke, range(count)))


def invoke_spread(clients: list[httpx.Client], job_ids: list[str], count: int) -> None:
    """``count`` invocations from 8 concurrent callers, round robin over the accounts."""
    def invoke(n: int) -> None:
        clients[n % len(clients)].post(f"/api/v1/jobs/{job_ids[n % len(clients)]}/invoke",
                                       json={}).raise_for_status()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(invoke, range(count)))


def wait_drained(database: str, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(database, autocommit=True) as connection:
        while time.monotonic() < deadline:
            left = connection.execute("SELECT count(*) FROM executions WHERE status IN "
                                      "('queued', 'running')").fetchone()
            if left is not None and left[0] == 0:
                return
            time.sleep(0.2)
    raise TimeoutError("executions left unfinished")


def _ticks(pid: int, with_children: bool) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = int(fields[11]) + int(fields[12])
    return own + (int(fields[13]) + int(fields[14]) if with_children else 0)


def cpu_seconds(pids: list[int]) -> float:
    """The processes' own CPU (their threads), not their waited children's (the jobs)."""
    return sum(_ticks(pid, False) for pid in pids) / os.sysconf("SC_CLK_TCK")


def postgres_seconds(database: str) -> float:
    with psycopg.connect(database) as connection:
        directory = connection.execute("SHOW data_directory").fetchone()
    assert directory is not None
    postmaster = int(Path(directory[0], "postmaster.pid").read_text().split()[0])
    total = _ticks(postmaster, True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    total += _ticks(int(entry.name), False)
            except (OSError, ValueError, IndexError):
                continue
    return total / os.sysconf("SC_CLK_TCK")


def _statements(database: str) -> tuple[int, int, list[tuple[int, str]]]:
    """(statements, commits, the busiest statements) since the last reset."""
    with psycopg.connect(database, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT calls, query FROM pg_stat_statements WHERE dbid = (SELECT oid FROM "
            "pg_database WHERE datname = current_database()) ORDER BY calls DESC").fetchall()
        commits = connection.execute("SELECT xact_commit FROM pg_stat_database WHERE "
                                     "datname = current_database()").fetchone()
    # Transaction control and the counting queries themselves are not the platform's work.
    work = [(int(calls), " ".join(str(query).split())) for calls, query in rows
            if not str(query).upper().startswith(("BEGIN", "COMMIT", "ROLLBACK", "SELECT CALLS",
                                                  "SELECT XACT_COMMIT", "SELECT PG_STAT"))]
    return sum(calls for calls, _ in work), int(commits[0]) if commits else 0, work


def _reset_statements(database: str) -> int:
    with psycopg.connect(database, autocommit=True) as connection:
        connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        connection.execute("SELECT pg_stat_statements_reset()")
        commits = connection.execute("SELECT xact_commit FROM pg_stat_database WHERE "
                                     "datname = current_database()").fetchone()
    return int(commits[0]) if commits else 0


def bench_cpu(root: Path) -> float:
    count = 500
    with fleet(root, 1, 16) as server:
        client = account(server)
        job_id = job(client, TRIVIAL)
        invoke_many(client, job_id, 20)
        wait_drained(server.database)
        pids = [p.process.pid for p in [server.api, *server.workers] if p.process]
        commits_before = _reset_statements(server.database)
        ours, pg = cpu_seconds(pids), postgres_seconds(server.database)
        started = time.monotonic()
        invoke_many(client, job_id, count)
        wait_drained(server.database)
        wall = time.monotonic() - started
        ours = cpu_seconds(pids) - ours
        pg = postgres_seconds(server.database) - pg
        statements, commits, busiest = _statements(server.database)
        commits -= commits_before
    rate = count / wall
    print(f"cpu: {count} trivial executions in {wall:.1f} s ({rate:.1f}/s, the job-start "
          f"ceiling of one worker process here); control plane + worker threads "
          f"{ours / count * 1000:.1f} ms CPU per execution (target < 5 ms), PostgreSQL "
          f"{pg / count * 1000:.1f} ms")
    # Every process's statements on the database, the idle loops' included.
    print(f"cpu: {statements / count:.1f} statements and {commits / count:.1f} commits per "
          f"execution; the busiest:")
    width = int(os.environ.get("BENCH_STATEMENT_CHARS", "110"))
    for calls, query in busiest[:int(os.environ.get("BENCH_SHOW_STATEMENTS", "12"))]:
        print(f"  {calls / count:5.2f}  {query[:width]}")
    return rate


def bench_throughput(root: Path, ceiling: float) -> None:
    count = int(os.environ.get("BENCH_SCALE_EXECUTIONS", "1000"))
    print(f"throughput: {count} executions of time.sleep(2), capacity 64 per worker process")
    print("  workers  accounts  slots  wall s  exec/s  bound/s  of bound")
    runs = [(int(n), 1) for n in os.environ.get("BENCH_SCALE_WORKERS", "1,2,4").split(",")]
    # The same with the invocations spread over 8 accounts (one per client): claims and
    # admissions of many tenants at once, not one account's row.
    runs.append((runs[-1][0], 8))
    for workers, accounts in runs:
        with fleet(root / f"t{workers}-{accounts}", workers, 64) as server:
            tenants = [account(server) for _ in range(accounts)]
            jobs = [job(client, SLEEPER) for client in tenants]
            started = time.monotonic()
            invoke_spread(tenants, jobs, count)
            wait_drained(server.database)
            wall = time.monotonic() - started
        bound = min(workers * 64 / 2, ceiling)
        rate = count / wall
        print(f"  {workers:7d}  {accounts:8d}  {workers * 64:5d}  {wall:6.1f}  {rate:6.1f}  "
              f"{bound:7.1f}  {rate / bound:7.0%}")


def _enter_p50(server: Fleet, runs: int = 60) -> float:
    client = account(server)
    job_id = job(client, STAMPED)
    delays = []
    for _ in range(runs + 5):
        before = time.time()
        execution_id = client.post(f"/api/v1/jobs/{job_id}/invoke", json={}).json()[
            "execution_id"]
        while True:
            execution = client.get(f"/api/v1/executions/{execution_id}").json()
            if execution["status"] not in ("queued", "running"):
                break
            time.sleep(0.02)
        lines = client.get(f"/api/v1/executions/{execution_id}/logs").json()["items"]
        enter = next(float(line["message"].split()[1]) for line in lines
                     if line["stream"] == "stdout" and line["message"].startswith("ENTER"))
        delays.append((enter - before) * 1000)
    return percentile(delays[5:], 0.5)


def bench_remote(root: Path) -> None:
    with fleet(root / "local", 1, 8) as server:
        local = _enter_p50(server)
    with fleet(root / "remote", 1, 8, remote=True) as server:
        remote = _enter_p50(server)
    print(f"remote: invoke -> main() p50: worker on the database {local:.1f} ms, remote "
          f"worker over HTTP {remote:.1f} ms (adds {remote - local:+.1f} ms; target < 10)")


def bench_fairness(root: Path) -> None:
    queued = int(os.environ.get("BENCH_FAIRNESS_QUEUED", "5000"))
    with fleet(root / "fair", 1, 8) as server:
        a, b = account(server), account(server)
        job_a, job_b = job(a, "import time\ndef main():\n    time.sleep(1)\n"), job(b, TRIVIAL)
        invoke_many(a, job_a, queued)
        time.sleep(2)
        before = time.monotonic()
        execution_id = b.post(f"/api/v1/jobs/{job_b}/invoke", json={}).json()["execution_id"]
        while b.get(f"/api/v1/executions/{execution_id}").json()["status"] == "queued":
            time.sleep(0.01)
        waited = time.monotonic() - before
    print(f"fairness: account B's one invocation behind account A's {queued} queued "
          f"started after {waited * 1000:.0f} ms")


def main() -> None:
    chosen = set(sys.argv[1:]) or {"cpu", "throughput", "remote", "fairness"}
    with tempfile.TemporaryDirectory(prefix="batchyard-scale-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o711)
        ceiling = bench_cpu(root / "cpu") if chosen & {"cpu", "throughput"} else 0.0
        if "throughput" in chosen:
            bench_throughput(root, ceiling)
        if "remote" in chosen:
            bench_remote(root)
        if "fairness" in chosen:
            bench_fairness(root)


if __name__ == "__main__":
    main()
