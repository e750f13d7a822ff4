"""Attempt start (supervisor.run called → the job's main() entered), by isolation level.

p50 over 100 runs of each level, interleaved so that machine noise hits all alike.
Target (issue 4): bubblewrap adds < 15 ms to the start of an attempt.
"""

from __future__ import annotations

import io
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _harness import percentile

from batchyard.app import job_python
from batchyard.domain.attempts import ClaimedAttempt, LogRecord
from batchyard.runtime.box.sandbox import JobLimits, Sandbox, SandboxUnavailable
from batchyard.runtime.box.sandbox_setup import detect_sandbox
from batchyard.runtime.box.supervisor import RuntimeLimits, Supervisor

RUNS = 100
WARMUP = 5
MAIN = "import time\ndef main():\n    print('ENTER', repr(time.time()))\n"


def claimed(number: int) -> ClaimedAttempt:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", MAIN)
    return ClaimedAttempt(
        execution_id=f"exe_bench{number}", account_id="acc", job_id="job", job_name="bench",
        number=1, worker="bench/0", revision=1, code=buffer.getvalue(), main_parameters=0,
        requirements=None, variables={}, secret_values=(), deadline_seconds=30,
        timeout_seconds=30, params={}, source="api", database_access=False, log_seq=0,
        log_bytes=0, log_truncated=False)


def start_ms(supervisor: Supervisor, number: int) -> float:
    lines: list[LogRecord] = []

    def writer(batch: list[LogRecord], first: int, used: int, truncated: bool) -> bool:
        lines.extend(batch)
        return True

    before = time.time()
    result = supervisor.run(claimed(number), writer)
    assert result.logs is not None
    lines.extend(result.logs.records)
    entered = next(float(r.message.split()[1]) for r in lines if r.message.startswith("ENTER"))
    return (entered - before) * 1000


def main() -> None:
    python = job_python(None)
    with tempfile.TemporaryDirectory(prefix="batchyard-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir(mode=0o700)
        levels: dict[str, Sandbox] = {"unconfined": detect_sandbox(
            "off", python, JobLimits(), data_dir, 2_000_000_000)}
        limits = JobLimits()
        if shutil.which("bwrap") is None:
            print("bubblewrap: skipped (bwrap is not installed)")
        else:
            try:
                levels["bubblewrap"] = detect_sandbox("bubblewrap", python, limits, data_dir,
                                                      2_000_000_000)
            except SandboxUnavailable as exc:
                print(f"bubblewrap: skipped ({exc.message})")
        rlimits = detect_sandbox("rlimits", python, limits, data_dir, 2_000_000_000)
        if rlimits.runs_jobs:
            levels["rlimits"] = rlimits
        else:
            print(f"rlimits: skipped ({rlimits.report.problem})")
        runtime = RuntimeLimits(kill_grace_seconds=0.5, log_cap_bytes=1024 * 1024,
                                log_line_max_bytes=4096, artifact_cap_bytes=1024,
                                artifact_max_files=1)
        supervisors = {}
        for name, sandbox in levels.items():
            assert sandbox.placement is not None
            supervisors[name] = Supervisor(sandbox.placement.python,
                                           sandbox.placement.work_root, runtime, sandbox)
        figures: dict[str, list[float]] = {name: [] for name in supervisors}
        try:
            for number in range(RUNS + WARMUP):
                for name, supervisor in supervisors.items():
                    figure = start_ms(supervisor, number)
                    if number >= WARMUP:
                        figures[name].append(figure)
        finally:
            if rlimits.placement is not None and rlimits.placement.runtime_dir is not None:
                shutil.rmtree(rlimits.placement.runtime_dir, ignore_errors=True)
    base = statistics.median(figures["unconfined"])
    print(f"attempt start (supervisor.run -> main() entered), {RUNS} runs each:")
    for name, values in figures.items():
        p50 = statistics.median(values)
        print(f"  {name:10s} p50 {p50:6.1f} ms, p99 {percentile(values, 0.99):6.1f} ms"
              + (f"  (+{p50 - base:.1f} ms over unconfined)" if name != "unconfined" else "")
              + f"  [{supervisors[name].python}]")
        if name != "unconfined":
            print(f"             {levels[name].description}")
    if "bubblewrap" in figures:
        print(f"bubblewrap overhead p50: {statistics.median(figures['bubblewrap']) - base:.1f} ms"
              " (target < 15 ms)")


if __name__ == "__main__":
    main()
