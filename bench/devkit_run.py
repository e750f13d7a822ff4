"""The developer kit's costs: `batchyard run` of a trivial job, from the command's start
to the job's main() entered (target < 400 ms), `batchyard --help`, and the requests a
`deploy` of an unchanged project makes (target: no writes, at most 3 reads).

Each command is a fresh process, as a developer types it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _harness import admin_client, running_server

RUNS = 15
MAIN = '''import time

from helper import LS


def main(event):
    with open(LS.settings.MARK, "w") as mark:
        mark.write(repr(time.time()))
'''
CONFIG = '''[job]
name = "{name}"

[schedule]
type = "none"

[variables]
MARK = "{mark}"
'''
COMMAND = [sys.executable, "-m", "batchyard.cli.main"]


def _project(root: Path, name: str) -> Path:
    project = root / name
    project.mkdir()
    (project / "main.py").write_text(MAIN)
    (project / "batchyard.toml").write_text(
        CONFIG.replace("{name}", name).replace("{mark}", str(root / f"{name}.mark")))
    return project


def _env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHYARD_")}
    env.update(XDG_CONFIG_HOME=str(root / "config"), XDG_CACHE_HOME=str(root / "cache"),
               **(extra or {}))
    return env


def bench_run(root: Path) -> None:
    project = _project(root, "bench-run")
    mark = root / "bench-run.mark"
    env = _env(root)
    waits = []
    for _ in range(RUNS):
        mark.unlink(missing_ok=True)
        started = time.time()
        done = subprocess.run([*COMMAND, "run"], cwd=project, env=env, capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(done.stdout.decode() + done.stderr.decode())
        waits.append(float(mark.read_text()) - started)
    print(f"batchyard run: start -> main() entered, {RUNS} runs: "
          f"p50 {statistics.median(waits) * 1000:.0f} ms, "
          f"min {min(waits) * 1000:.0f} ms, max {max(waits) * 1000:.0f} ms (target < 400 ms)")
    helps = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([*COMMAND, "--help"], env=env, capture_output=True, check=True)
        helps.append(time.perf_counter() - started)
    print(f"batchyard --help: p50 {statistics.median(helps) * 1000:.0f} ms")


def bench_deploy(root: Path) -> None:
    with running_server(workers=0) as server, admin_client(server) as admin:
        key = admin.headers["Authorization"].removeprefix("Bearer ")
        env = _env(root, {"BATCHYARD_URL": server.url, "BATCHYARD_API_KEY": key})
        project = _project(root, "bench-deploy")
        for label in ("first deploy --publish", "unchanged deploy --publish",
                      "unchanged deploy --publish"):
            started = time.perf_counter()
            done = subprocess.run([*COMMAND, "deploy", "--publish", "--json"], cwd=project,
                                  env=env, capture_output=True, check=True)
            seconds = time.perf_counter() - started
            report = json.loads(done.stdout)
            print(f"{label}: {report['requests']['reads']} reads, "
                  f"{report['requests']['writes']} writes, {seconds * 1000:.0f} ms "
                  "(target for unchanged: 0 writes, <= 3 reads)")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="batchyard-devkit-bench-") as tmp:
        root = Path(tmp)
        bench_run(root)
        bench_deploy(root)


if __name__ == "__main__":
    main()
