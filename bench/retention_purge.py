"""Retention under load: invoke p99 while 200,000 expired executions are purged, vs without.

A real `batchyard serve` (SQLite, no workers, the retention loop looking every 2 s). The
bench writes 200,000 executions (each with an attempt and two log lines) straight into
the server's database as young rows and measures the invoke endpoint (8 clients) for a
while; then it ages them past the plan's retention and measures again while the server's
retention loop deletes them, until none is left. It prints both p99s, the purge's rate
and the database file's size before and after. Prints figures; asserts nothing.
"""

from __future__ import annotations

import http.client
import os
import sqlite3
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _harness import admin_client, percentile, published_job, running_server

EXECUTIONS = int(os.environ.get("BENCH_EXECUTIONS", "200000"))
CLIENTS = 8
BASELINE_SECONDS = 15.0
PURGE_TIMEOUT_SECONDS = 900.0


def seed(database: Path, account_id: str, job_id: str, count: int) -> None:
    created = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
    connection = sqlite3.connect(database, timeout=60)
    with connection:
        for start in range(0, count, 10_000):
            ids = [f"exe_bench{n:09d}" for n in range(start, min(count, start + 10_000))]
            connection.executemany(
                "INSERT INTO executions (id, account_id, job_id, job_name, revision, source, "
                "status, params, account_day, created_at, ended_at, runtime_seconds, "
                "reserved_seconds, attempt_count, cancel_requested, log_bytes, log_seq, "
                "log_truncated, emails_sent) VALUES (?, ?, ?, 'bench', 1, 'api', 'succeeded',"
                " '{}', '2026-01-01', ?, ?, 0.1, 0, 1, 0, 100, 2, 0, 0)",
                [(i, account_id, job_id, created, created) for i in ids])
            connection.executemany(
                "INSERT INTO attempts (account_id, execution_id, number, status, account_day, "
                "started_at, deadline_seconds) VALUES (?, ?, 1, 'succeeded', '2026-01-01', ?, "
                "60)", [(account_id, i, created) for i in ids])
            connection.executemany(
                "INSERT INTO log_lines (account_id, execution_id, seq, attempt, at, stream, "
                "message) VALUES (?, ?, ?, 1, ?, 'stdout', ?)",
                [(account_id, i, seq, created, "a line of an old run " + "x" * 100)
                 for i in ids for seq in (0, 1)])
    connection.close()


def age(database: Path) -> None:
    old = (datetime.now(UTC) - timedelta(days=60)).strftime("%Y-%m-%d %H:%M:%S.%f")
    connection = sqlite3.connect(database, timeout=60)
    with connection:
        connection.execute("UPDATE executions SET created_at = ? WHERE id LIKE 'exe_bench%'",
                           (old,))
    connection.close()


def remaining(database: Path) -> int:
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=60)
    try:
        return int(connection.execute(
            "SELECT count(*) FROM executions WHERE id LIKE 'exe_bench%'").fetchone()[0])
    finally:
        connection.close()


def file_size(database: Path) -> int:
    return sum(os.path.getsize(f"{database}{suffix}") for suffix in ("", "-wal")
               if os.path.exists(f"{database}{suffix}"))


class Load:
    """8 clients invoking as fast as they are answered, latencies kept."""

    def __init__(self, url: str, job_id: str, headers: dict[str, str]) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.path = f"/api/v1/jobs/{job_id}/invoke"
        self.headers = {**headers, "Content-Type": "application/json"}
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.hammer) for _ in range(CLIENTS)]

    def hammer(self) -> None:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        while not self.stop.is_set():
            started = time.perf_counter()
            connection.request("POST", self.path, body=b"{}", headers=self.headers)
            connection.getresponse().read()
            took = (time.perf_counter() - started) * 1000
            with self.lock:
                self.latencies.append(took)
        connection.close()

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def main() -> None:
    with running_server(("BATCHYARD_RETENTION_INTERVAL_SECONDS", "2"), workers=0) as server:
        client = admin_client(server)
        job_id = published_job(client, "retention", "def main():\n    pass\n")
        account_id = client.get("/api/v1/me").json()["account"]["id"]
        database = server.data_dir / "batchyard.sqlite3"
        seed(database, account_id, job_id, EXECUTIONS)
        headers = dict(client.headers)
        with Load(server.url, job_id, headers) as baseline:
            time.sleep(BASELINE_SECONDS)
        size_before = file_size(database)
        age(database)
        started = time.monotonic()
        with Load(server.url, job_id, headers) as during:
            while remaining(database) and time.monotonic() - started < PURGE_TIMEOUT_SECONDS:
                time.sleep(0.5)
        purge_seconds = time.monotonic() - started
        time.sleep(3)  # the last vacuum steps
        size_after = file_size(database)
        left = remaining(database)
    print(f"retention purge of {EXECUTIONS - left:,} executions (+ attempts, 2 log lines "
          f"each) in {purge_seconds:.1f} s ({(EXECUTIONS - left) / purge_seconds:,.0f}/s) "
          f"under 8 invoking clients; {left} left")
    print(f"invoke p99 without a purge {percentile(baseline.latencies, 0.99):.1f} ms "
          f"(p50 {percentile(baseline.latencies, 0.5):.1f}, {len(baseline.latencies)} calls); "
          f"during the purge {percentile(during.latencies, 0.99):.1f} ms "
          f"(p50 {percentile(during.latencies, 0.5):.1f}, {len(during.latencies)} calls)")
    print(f"database file (+WAL) {size_before / 2**20:.1f} MiB before, "
          f"{size_after / 2**20:.1f} MiB after")


if __name__ == "__main__":
    main()
