"""End-to-end throughput of trivial jobs: API invoke → run → succeeded, default pool.

Target (issue 2): >= 40 executions/s on this 2-core machine. Eight client threads
invoke `def main(): pass`; the clock stops when the last execution has succeeded.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _harness import admin_client, published_job, running_server, wait_finished

EXECUTIONS = 400
CLIENTS = 8


def main() -> None:
    with running_server() as server:
        client = admin_client(server)
        job_id = published_job(client, "trivial", "def main():\n    pass\n")
        ids: list[str] = []
        lock = threading.Lock()

        def invoke_some(count: int) -> None:
            import httpx

            with httpx.Client(base_url=server.url, headers=client.headers, timeout=30) as own:
                for _ in range(count):
                    answer = own.post(f"/api/v1/jobs/{job_id}/invoke", json={})
                    answer.raise_for_status()
                    with lock:
                        ids.append(answer.json()["execution_id"])

        started = time.monotonic()
        threads = [threading.Thread(target=invoke_some, args=(EXECUTIONS // CLIENTS,))
                   for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        invoked = time.monotonic() - started
        # Claims go oldest first: wait for the last one invoked, then check them all once
        # (a listing on every poll would cost the server more than the jobs do).
        last = max(ids)
        wait_finished(client, last, timeout=300, poll=0.05)
        elapsed = time.monotonic() - started
        while True:
            done = client.get("/api/v1/executions", params={
                "job_id": job_id, "status": "succeeded", "limit": 500}).json()["items"]
            if len(done) >= EXECUTIONS:
                break
            time.sleep(0.05)
        elapsed = max(elapsed, time.monotonic() - started - 0.05)
    print(f"throughput: {EXECUTIONS} trivial executions (API -> run -> succeeded) with "
          f"{CLIENTS} clients and the default pool ({max(2, os.cpu_count() or 2)} workers, "
          f"{os.cpu_count()} cores): {EXECUTIONS / elapsed:.1f} executions/s "
          f"(all invoked after {invoked:.2f} s, all succeeded after {elapsed:.2f} s; "
          "target >= 40/s)")


if __name__ == "__main__":
    main()
