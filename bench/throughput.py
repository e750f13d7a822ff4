"""End-to-end throughput of trivial jobs: API invoke → run → succeeded, default pool.

Target (issue 2): >= 40 executions/s on this 2-core machine. Eight client threads
invoke `def main(): pass`; the clock stops when the last execution has succeeded.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _harness import (
    admin_client,
    invoke_concurrently,
    published_job,
    running_server,
    wait_all_succeeded,
)

EXECUTIONS = 400
CLIENTS = 8


def main() -> None:
    with running_server() as server:
        client = admin_client(server)
        job_id = published_job(client, "trivial", "def main():\n    pass\n")
        started = time.monotonic()
        ids = invoke_concurrently(server.url, client.headers, job_id, EXECUTIONS, CLIENTS)
        invoked = time.monotonic() - started
        wait_all_succeeded(client, job_id, ids)
        elapsed = time.monotonic() - started
    print(f"throughput: {EXECUTIONS} trivial executions (API -> run -> succeeded) with "
          f"{CLIENTS} clients and the default pool ({max(2, os.cpu_count() or 2)} workers, "
          f"{os.cpu_count()} cores): {EXECUTIONS / elapsed:.1f} executions/s "
          f"(all invoked after {invoked:.2f} s, all succeeded after {elapsed:.2f} s; "
          "target >= 40/s)")


if __name__ == "__main__":
    main()
