"""Idle server resident memory (API + worker pool + sweeper, nothing queued).

Target (issue 2): < 120 MB; issue 14: < 80 MiB with the warm pools empty (just after
start: no key is hot), and the warm pool's own processes reported once a key is hot
(after 20 executions of one job: a pool of up to 4 interpreters, each a bwrap and its
interpreter under bubblewrap).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import httpx
from _harness import admin_client, published_job, running_server, wait_finished


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def warm_processes(work_dir: str) -> list[int]:
    """The warm pool's processes: their environment puts their output in a warm folder."""
    marker = f"OUTPUT_DIR={work_dir}/warm-".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def main() -> None:
    with running_server() as server:
        time.sleep(3)
        fresh = rss_mib(server.process.pid)
        operator = httpx.Client(base_url=server.url,
                                headers={"Authorization": f"Bearer {server.operator}"})
        work_dir = operator.get("/api/v1/health").json()["sandbox"]["work_dir"]
        empty = len(warm_processes(work_dir))
        client = admin_client(server)
        job_id = published_job(client, "warmup", "def main():\n    print('hi')\n")
        for _ in range(20):
            execution = client.post(f"/api/v1/jobs/{job_id}/invoke", json={}).json()
            wait_finished(client, execution["execution_id"])
        time.sleep(3)
        warmed = rss_mib(server.process.pid)
        view = operator.get("/api/v1/health").json()["warm_starts"]
        boxes = warm_processes(work_dir)
        box_mib = sum(rss_mib(pid) for pid in boxes)
    print(f"idle resident memory: {fresh:.1f} MiB after start (warm pools empty: {empty} "
          f"processes; target < 80 MiB), {warmed:.1f} MiB idle after 20 executions "
          f"(target < 120 MB)")
    if view is not None:
        print(f"warm pool after 20 executions: {view['ready']} ready interpreters, "
              f"{len(boxes)} processes, {box_mib:.1f} MiB resident together "
              f"({view['warm_starts']} warm and {view['cold_starts']} cold starts)")


if __name__ == "__main__":
    main()
