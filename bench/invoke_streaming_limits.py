"""The invoke endpoint with the streaming body limits (issue 9) against the build before
them: runs of both builds interleaved, medians of requests/s compared.

Target: the two medians within 10%. The build before is the source tree of a commit
(``BATCHYARD_BENCH_BASELINE``, default the last commit before the limits), unpacked with
``git archive`` into a temporary folder and put first on the server's PYTHONPATH; the
same interpreter and packages serve both.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _harness import running_server
from invoke_endpoint import CLIENTS, PER_CLIENT, measure

BASELINE = os.environ.get("BATCHYARD_BENCH_BASELINE", "60ef0fa")
ROUNDS = 5
REPOSITORY = Path(__file__).resolve().parent.parent


def unpack_baseline(into: Path) -> Path | None:
    archive = into / "baseline.tar"
    try:
        with open(archive, "wb") as out:
            subprocess.run(["git", "-C", str(REPOSITORY), "archive", BASELINE, "src"],
                           stdout=out, stderr=subprocess.PIPE, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="batchyard-baseline-") as tmp:
        baseline_src = unpack_baseline(Path(tmp))
        if baseline_src is None:
            print(f"invoke with streaming limits: skipped (no git history with {BASELINE})")
            return
        runs: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(ROUNDS):
            for build, env in (("before", (("PYTHONPATH", str(baseline_src)),)),
                               ("after", ())):
                with running_server(*env, workers=0) as server:
                    runs[build].append(measure(server).requests_per_second)
    before, after = (statistics.median(runs[build]) for build in ("before", "after"))
    print(f"invoke endpoint with streaming limits, {CLIENTS} clients x {PER_CLIENT}, "
          f"{ROUNDS} interleaved runs each: median {after:.0f} requests/s vs {before:.0f} "
          f"before ({(after / before - 1) * 100:+.1f}%; target within 10%); "
          f"runs after {[round(v) for v in runs['after']]}, "
          f"before {[round(v) for v in runs['before']]}")


if __name__ == "__main__":
    main()
