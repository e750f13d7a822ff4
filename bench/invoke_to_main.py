"""Invoke (HTTP 202) → the job's main() entered: p50/p99 over 200 sequential invocations.

Target (issue 2): p50 < 40 ms, embedded (SQLite, in-process workers), no requirements.
Also prints main() return → attempt recorded as ended, which shows that the child's
exit is detected by a blocking waitpid, not by polling with growing sleeps.
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _harness import admin_client, percentile, published_job, running_server, wait_finished

from batchyard.app import job_python

RUNS = 200
MAIN = '''import time
def main():
    print("ENTER", repr(time.time()))
    print("LEAVE", repr(time.time()))
'''


def main() -> None:
    with running_server() as server:
        isolation = httpx.get(f"{server.url}/api/v1/health").json()["isolation"]
        client = admin_client(server)
        job_id = published_job(client, "latency", MAIN)
        enter: list[float] = []
        exit_detect: list[float] = []
        for _ in range(RUNS + 5):
            before = time.time()
            answer = client.post(f"/api/v1/jobs/{job_id}/invoke", json={})
            answer.raise_for_status()
            execution = wait_finished(client, answer.json()["execution_id"])
            lines = client.get(f"/api/v1/executions/{execution['id']}/logs").json()["items"]
            stamps = {line["message"].split()[0]: float(line["message"].split()[1])
                      for line in lines if line["stream"] == "stdout"}
            ended = datetime.fromisoformat(execution["attempts"][0]["ended_at"]).timestamp()
            enter.append((stamps["ENTER"] - before) * 1000)
            exit_detect.append((ended - stamps["LEAVE"]) * 1000)
        enter, exit_detect = enter[5:], exit_detect[5:]  # the first runs warm caches
    print(f"job interpreter spawned: {job_python(None)} -I -S -B (real path, no shim, no site);"
          f" isolation: {isolation.split(' (')[0]}")
    print(f"invoke -> main() entered over {RUNS} sequential runs: "
          f"p50 {statistics.median(enter):.1f} ms, p99 {percentile(enter, 0.99):.1f} ms "
          f"(target p50 < 40 ms)")
    print(f"main() returned -> attempt recorded ended: p50 {statistics.median(exit_detect):.1f} ms,"
          f" p99 {percentile(exit_detect, 0.99):.1f} ms (blocking waitpid, no poll)")


if __name__ == "__main__":
    main()
