"""batchyard against a Celery + subprocess baseline, on this machine, in one run, interleaved.

The baseline is what a team would build instead: Celery 5 with Redis as broker and result
backend, whose task spawns the same child interpreter (``python -I -S -B``) per execution
and runs the job's ``main()`` in it: no sandbox, no uid, no admission, no durable record.
Celery and Redis come from PyPI and Debian, in a bench-only environment (a venv under
~/.cache/batchyard-bench, Debian's redis-server; neither is a dependency of batchyard).

batchyard runs as shipped: ``batchyard serve`` on the embedded store, the default pool
(and the same number of Celery worker processes), jobs sandboxed (bubblewrap where it
runs), warm starts on (BATCHYARD_WARM_POOL_SIZE, default 4).

Three rounds, each measuring both systems back to back (Celery first in odd rounds,
batchyard first in even ones), medians of the three printed with the ratios:
- invoke -> main() entered, p50 and p99 over sequential invocations (the clock: the
  client's before the call, the job's own ``time.time()`` in main());
- trivial executions/s, 8 clients submitting, until the last has succeeded.

Issue 14's targets: latency <= 1.0x Celery's, throughput >= 1.2x Celery's.
``BENCH_ROUNDS``, ``BENCH_LATENCY_RUNS`` and ``BENCH_THROUGHPUT_RUNS`` change the sizes.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _harness import (
    admin_client,
    free_port,
    invoke_concurrently,
    percentile,
    published_job,
    running_server,
    wait_all_succeeded,
)

from batchyard.app import job_python

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
LATENCY_RUNS = int(os.environ.get("BENCH_LATENCY_RUNS", "100"))
THROUGHPUT_RUNS = int(os.environ.get("BENCH_THROUGHPUT_RUNS", "400"))
CLIENTS = 8
CELERY = "celery[redis]>=5.3,<6"
VENV = Path.home() / ".cache" / "batchyard-bench" / "celery-5"

MAIN = '''import time
def main():
    print("ENTER", repr(time.time()))
'''

# The Celery side: the worker's tasks module and the client that measures, both run by
# the bench-only venv's interpreter.
TASKS = textwrap.dedent('''\
    import os
    import subprocess

    from celery import Celery

    app = Celery("bench", broker=os.environ["BENCH_REDIS"], backend=os.environ["BENCH_REDIS"])
    app.conf.update(worker_prefetch_multiplier=1, result_expires=600,
                    broker_connection_retry_on_startup=True, task_ignore_result=False)
    CHILD = os.environ["BENCH_CHILD_PYTHON"]


    @app.task
    def run_job(code_dir):
        # The same child interpreter per execution as batchyard's (-I -S -B), main() in it.
        done = subprocess.run([CHILD, "-I", "-S", "-B", "run.py"], cwd=code_dir,
                              capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        return done.returncode, done.stdout.decode()
    ''')
CLIENT = textwrap.dedent('''\
    import json
    import sys
    import threading
    import time

    from tasks import app, run_job

    mode, count, code_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "ping":
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                run_job.delay(code_dir).get(timeout=2)
                break
            except Exception:
                time.sleep(0.2)
        else:
            sys.exit("the Celery worker did not answer")
        print(json.dumps({"ok": True}))
    elif mode == "latency":
        enter = []
        for _ in range(count):
            before = time.time()
            code, out = run_job.delay(code_dir).get(timeout=30)
            assert code == 0, out
            enter.append((float(out.split()[1]) - before) * 1000)
        print(json.dumps({"enter_ms": enter}))
    else:
        clients = int(sys.argv[4])
        results = []
        lock = threading.Lock()

        def submit(n):
            mine = [run_job.delay(code_dir) for _ in range(n)]
            with lock:
                results.extend(mine)

        started = time.monotonic()
        threads = [threading.Thread(target=submit, args=(count // clients,))
                   for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for result in results:
            code, out = result.get(timeout=300)
            assert code == 0, out
        print(json.dumps({"per_second": len(results) / (time.monotonic() - started)}))
    ''')


def celery_python() -> str:
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"(creating the bench-only Celery environment in {VENV})", flush=True)
        VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", CELERY], check=True)
    return str(python)


def redis_server() -> str:
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(found):
        print("(installing Debian's redis-server for the baseline)", flush=True)
        prefix = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run([*prefix, "apt-get", "install", "-y", "-qq", "redis-server"],
                       check=True, stdout=subprocess.DEVNULL)
    return found


@contextmanager
def celery_baseline(workers: int) -> Iterator[tuple[str, dict[str, str], str]]:
    """Redis and a Celery worker (``workers`` prefork processes); yields the venv's python,
    the environment and the job's folder."""
    python = celery_python()
    with tempfile.TemporaryDirectory(prefix="batchyard-bench-celery-") as tmp:
        folder = Path(tmp)
        (folder / "tasks.py").write_text(TASKS)
        (folder / "client.py").write_text(CLIENT)
        code = folder / "job"
        code.mkdir()
        (code / "run.py").write_text(MAIN + "\nmain()\n")
        port = free_port()
        redis = subprocess.Popen([redis_server(), "--port", str(port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no", "--dir", tmp],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = {**os.environ, "BENCH_REDIS": f"redis://127.0.0.1:{port}/0",
               "BENCH_CHILD_PYTHON": job_python(None), "PYTHONPATH": tmp}
        env.pop("VIRTUAL_ENV", None)
        worker = subprocess.Popen(
            [python, "-m", "celery", "-A", "tasks", "worker", "--pool", "prefork",
             "--concurrency", str(workers), "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-l", "WARNING"],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            run_client(python, env, tmp, "ping", 1, str(code))
            yield python, env, str(code)
        finally:
            worker.terminate()
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
            redis.terminate()
            redis.wait(10)


def run_client(python: str, env: dict[str, str], cwd: str, *args: object) -> dict:
    done = subprocess.run([python, "client.py", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, check=True, timeout=900)
    return dict(json.loads(done.stdout.decode().strip().splitlines()[-1]))


def batchyard_latency(server_url: str, client: httpx.Client, job_id: str) -> list[float]:
    enter: list[float] = []
    for _ in range(LATENCY_RUNS):
        before = time.time()
        answer = client.post(f"/api/v1/jobs/{job_id}/invoke", json={})
        answer.raise_for_status()
        execution_id = answer.json()["execution_id"]
        while True:
            # Gently: each look costs the server CPU the starting job competes for (on
            # two cores), where Celery's client waits on a Redis subscription.
            time.sleep(0.02)
            execution = client.get(f"/api/v1/executions/{execution_id}").json()
            if execution["status"] not in ("queued", "running"):
                break
        assert execution["status"] == "succeeded", execution
        lines = client.get(f"/api/v1/executions/{execution_id}/logs").json()["items"]
        stamp = next(float(line["message"].split()[1]) for line in lines
                     if line["stream"] == "stdout")
        enter.append((stamp - before) * 1000)
    return enter


def batchyard_throughput(server_url: str, client: httpx.Client, job_id: str) -> float:
    started = time.monotonic()
    ids = invoke_concurrently(server_url, client.headers, job_id, THROUGHPUT_RUNS, CLIENTS)
    wait_all_succeeded(client, job_id, ids)
    return len(ids) / (time.monotonic() - started)


def main() -> None:
    workers = max(2, os.cpu_count() or 2)
    rows: dict[str, list[float]] = {key: [] for key in (
        "celery_p50", "celery_p99", "by_p50", "by_p99", "celery_tput", "by_tput")}
    with celery_baseline(workers) as (python, env, code), running_server() as server:
        health = httpx.get(f"{server.url}/api/v1/health",
                           headers={"Authorization": f"Bearer {server.operator}"}).json()
        client = admin_client(server)
        job_id = published_job(client, "trivial", MAIN)
        cwd = env["PYTHONPATH"]
        # Warm-up of both (the first runs fill caches and make batchyard's key hot).
        run_client(python, env, cwd, "latency", 10, code)
        batchyard_latency(server.url, client, job_id)
        for number in range(ROUNDS):
            order = ("celery", "batchyard") if number % 2 == 0 else ("batchyard", "celery")
            for system in order:
                if system == "celery":
                    enter = run_client(python, env, cwd, "latency", LATENCY_RUNS,
                                       code)["enter_ms"]
                    rows["celery_p50"].append(statistics.median(enter))
                    rows["celery_p99"].append(percentile(enter, 0.99))
                else:
                    enter = batchyard_latency(server.url, client, job_id)
                    rows["by_p50"].append(statistics.median(enter))
                    rows["by_p99"].append(percentile(enter, 0.99))
            for system in order:
                if system == "celery":
                    rows["celery_tput"].append(run_client(
                        python, env, cwd, "throughput", THROUGHPUT_RUNS, code,
                        CLIENTS)["per_second"])
                else:
                    # A job per round: its listing counts this round's executions only.
                    fresh = published_job(client, f"trivial-{number}", MAIN)
                    rows["by_tput"].append(batchyard_throughput(server.url, client, fresh))
            print(f"round {number + 1}: invoke -> main() p50 Celery "
                  f"{rows['celery_p50'][-1]:.1f} ms, batchyard {rows['by_p50'][-1]:.1f} ms; "
                  f"executions/s Celery {rows['celery_tput'][-1]:.1f}, batchyard "
                  f"{rows['by_tput'][-1]:.1f}", flush=True)
        warm = httpx.get(f"{server.url}/api/v1/health", headers={
            "Authorization": f"Bearer {server.operator}"}).json().get("warm_starts")
    median = {key: statistics.median(values) for key, values in rows.items()}
    level = health["isolation"].split(" (")[0]
    print(f"vs Celery + subprocess ({workers} worker processes each, {os.cpu_count()} cores; "
          f"batchyard: {level}, warm starts {warm['warm_starts'] if warm else 'off'} of "
          f"{(warm['warm_starts'] + warm['cold_starts']) if warm else '-'} starts), "
          f"medians of {ROUNDS} interleaved rounds:")
    for name, ours, theirs, target, better in (
            ("invoke -> main() p50 (ms)", median["by_p50"], median["celery_p50"],
             "<= 1.0x", "lower"),
            ("invoke -> main() p99 (ms)", median["by_p99"], median["celery_p99"],
             "<= 1.0x", "lower"),
            (f"trivial executions/s, {CLIENTS} clients", median["by_tput"],
             median["celery_tput"], ">= 1.2x", "higher")):
        print(f"  {name}: batchyard {ours:.1f}, Celery {theirs:.1f}, ratio "
              f"{ours / theirs:.2f}x (target {target}; {better} is better)")


if __name__ == "__main__":
    main()
