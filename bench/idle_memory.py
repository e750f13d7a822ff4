"""Idle server resident memory (API + worker pool + sweeper, nothing queued).

Target (issue 2): < 120 MB.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _harness import admin_client, published_job, running_server, wait_finished


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    with running_server() as server:
        time.sleep(3)
        fresh = rss_mib(server.process.pid)
        client = admin_client(server)
        job_id = published_job(client, "warmup", "def main():\n    print('hi')\n")
        for _ in range(20):
            execution = client.post(f"/api/v1/jobs/{job_id}/invoke", json={}).json()
            wait_finished(client, execution["execution_id"])
        time.sleep(3)
        warmed = rss_mib(server.process.pid)
    print(f"idle resident memory: {fresh:.1f} MiB after start, {warmed:.1f} MiB idle after "
          "20 executions (target < 120 MB)")


if __name__ == "__main__":
    main()
