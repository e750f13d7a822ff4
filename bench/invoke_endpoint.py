"""The invoke endpoint with admission: 8 concurrent clients, requests/s and p99 latency.

Target (issue 3): >= 300 requests/s on SQLite. The server runs with no workers, so
the figure is the endpoint's (HTTP + auth + atomic admission + the durable record).
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _harness import admin_client, percentile, published_job, running_server

CLIENTS = 8
PER_CLIENT = 250


def main() -> None:
    with running_server(workers=0) as server:
        client = admin_client(server)
        job_id = published_job(client, "endpoint", "def main():\n    pass\n")
        latencies: list[float] = []
        statuses: list[int] = []
        lock = threading.Lock()

        def hammer() -> None:
            with httpx.Client(base_url=server.url, headers=client.headers, timeout=30) as own:
                own.post(f"/api/v1/jobs/{job_id}/invoke", json={})  # connection warm-up
                for _ in range(PER_CLIENT):
                    started = time.perf_counter()
                    answer = own.post(f"/api/v1/jobs/{job_id}/invoke", json={"n": 1})
                    took = time.perf_counter() - started
                    with lock:
                        latencies.append(took * 1000)
                        statuses.append(answer.status_code)

        threads = [threading.Thread(target=hammer) for _ in range(CLIENTS)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    accepted = statuses.count(202)
    print(f"invoke endpoint, {CLIENTS} clients x {PER_CLIENT}: "
          f"{len(statuses) / elapsed:.0f} requests/s, p50 {statistics.median(latencies):.1f} ms,"
          f" p99 {percentile(latencies, 0.99):.1f} ms ({accepted} answered 202; "
          "target >= 300 requests/s on SQLite)")


if __name__ == "__main__":
    main()
