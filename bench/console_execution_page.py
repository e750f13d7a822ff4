"""The execution page of an execution with a 5 MiB log: the whole page, showing the last
200 lines (the rest is downloaded, never rendered): p50 over 50 loads (target < 150 ms),
and the download of the whole log for comparison."""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).parent))
from _console import NOW, SETTINGS, platform_at, seed_account, signed_in_client, timed

from batchyard.store.models import Attempt, Execution, Job, LogLine, execution_row

LOG_BYTES = 5 * 1024 * 1024
LINE = "processed record {n:08d}: " + "x" * 70


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        platform = platform_at(f"{folder}/bench.sqlite3")
        account = seed_account(platform, {})
        lines = LOG_BYTES // len(LINE.format(n=0))
        with platform.db.write() as session:
            session.execute(insert(Job), [{
                "id": "job_log", "account_id": account, "name": "log heavy", "description": "",
                "status": "published", "settings": SETTINGS, "schedule": None,
                "created_at": NOW, "modified_at": NOW}])
            session.execute(insert(Execution), [execution_row(
                id="exe_log", account_id=account, job_id="job_log", job_name="log heavy",
                revision=1, source="api", status="succeeded", params={},
                account_day=NOW.date().isoformat(), created_at=NOW, started_at=NOW,
                ended_at=NOW + timedelta(minutes=5), runtime_seconds=300.0,
                attempt_count=1, log_seq=lines, log_bytes=LOG_BYTES)])
            session.execute(insert(Attempt), [{
                "account_id": account, "execution_id": "exe_log", "number": 1,
                "status": "succeeded", "account_day": NOW.date().isoformat(),
                "started_at": NOW, "ended_at": NOW + timedelta(minutes=5),
                "runtime_seconds": 300.0, "deadline_seconds": 3600.0, "exit_code": 0}])
            for start in range(0, lines, 10_000):
                session.execute(insert(LogLine), [{
                    "account_id": account, "execution_id": "exe_log", "seq": n, "attempt": 1,
                    "at": NOW + timedelta(milliseconds=n), "stream": "stdout", "level": None,
                    "message": LINE.format(n=n), "data": None}
                    for n in range(start, min(lines, start + 10_000))])
        client = signed_in_client(platform, account)
        page = client.get("/executions/exe_log")
        assert page.status_code == 200, page.text[:500]
        shown = page.text.count('<span class="line')
        print(f"execution page: {lines} log lines ({LOG_BYTES / 1024 / 1024:.0f} MiB), "
              f"{shown} shown, page {len(page.content) / 1024:.0f} KiB")
        p50, p95 = timed(lambda: client.get("/executions/exe_log"), 50)
        print(f"execution page with a 5 MiB log: p50 {p50:.1f} ms, p95 {p95:.1f} ms over 50 "
              "loads (target < 150 ms)")
        started = time.perf_counter()
        download = client.get("/executions/exe_log/log.txt")
        print(f"whole log download: {len(download.content) / 1024 / 1024:.1f} MiB in "
              f"{(time.perf_counter() - started) * 1000:.0f} ms")
        platform.db.dispose()


if __name__ == "__main__":
    main()
