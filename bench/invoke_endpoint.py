"""The invoke endpoint with admission: 8 concurrent clients, requests/s and p99 latency.

Target (issue 3): >= 300 requests/s on SQLite. The server runs with no workers, so
the figure is the endpoint's (HTTP + auth + atomic admission + the durable record).
"""

from __future__ import annotations

import http.client
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _harness import Server, admin_client, percentile, published_job, running_server

CLIENTS = 8
PER_CLIENT = 250


@dataclass(frozen=True)
class Figures:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    accepted: int
    answered: int


def measure(server: Server, clients: int = CLIENTS, per_client: int = PER_CLIENT) -> Figures:
    """Hammer the invoke endpoint of a running server with a fresh account and job."""
    client = admin_client(server)
    job_id = published_job(client, "endpoint", "def main():\n    pass\n")
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()

    host, port = server.url.removeprefix("http://").split(":")
    path = f"/api/v1/jobs/{job_id}/invoke"
    headers = {**client.headers, "Content-Type": "application/json"}

    def hammer() -> None:
        # http.client, not httpx: on a 2-core machine the load generator's own CPU is
        # taken from the server it measures, and httpx costs several times more a call.
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("POST", path, body=b"{}", headers=headers)  # warm-up
        connection.getresponse().read()
        for _ in range(per_client):
            started = time.perf_counter()
            connection.request("POST", path, body=b'{"n": 1}', headers=headers)
            answer = connection.getresponse()
            answer.read()
            took = time.perf_counter() - started
            with lock:
                latencies.append(took * 1000)
                statuses.append(answer.status)
        connection.close()

    threads = [threading.Thread(target=hammer) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return Figures(len(statuses) / elapsed, statistics.median(latencies),
                   percentile(latencies, 0.99), statuses.count(202), len(statuses))


def main() -> None:
    with running_server(workers=0) as server:
        figures = measure(server)
    print(f"invoke endpoint, {CLIENTS} clients x {PER_CLIENT}: "
          f"{figures.requests_per_second:.0f} requests/s, p50 {figures.p50_ms:.1f} ms,"
          f" p99 {figures.p99_ms:.1f} ms ({figures.accepted} answered 202; "
          "target >= 300 requests/s on SQLite)")


if __name__ == "__main__":
    main()
