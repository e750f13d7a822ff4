"""Attempt start (supervisor.run called → the job's main() entered) with requirements.txt.

Three series, p50 over 50 runs each, under the sandbox the server would pick:
  - no requirements;
  - a cached environment (``six==1.16.0``, installed once before), same main.py;
  - the first run of those requirements: the environment is removed before each run, so
    uv installs it again (its own download cache warm; one cold figure printed first).
Target (issue: job dependencies): cached-env start < 20 ms more than without requirements.
Needs the package index (PyPI) reachable.
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
from batchyard.domain.requirements import normalise_requirements
from batchyard.runtime.box.envcache import EnvCache
from batchyard.runtime.box.sandbox import JobLimits, Sandbox, SandboxUnavailable, detect_sandbox
from batchyard.runtime.box.supervisor import RuntimeLimits, Supervisor

RUNS = 50
WARMUP = 3
REQUIREMENTS = "six==1.16.0\n"
MAIN = "import time\ndef main():\n    print('ENTER', repr(time.time()))\n"


def claimed(number: int, requirements: str | None) -> ClaimedAttempt:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", MAIN)
        if requirements:
            archive.writestr("requirements.txt", requirements)
    return ClaimedAttempt(
        execution_id=f"exe_bench{number}", account_id="acc", job_id="job", job_name="bench",
        number=1, worker="bench/0", revision=1, code=buffer.getvalue(), main_parameters=0,
        requirements=requirements, variables={}, secret_values=(), deadline_seconds=60,
        timeout_seconds=60, params={}, source="api", database_access=False, log_seq=0,
        log_bytes=0, log_truncated=False)


def start_ms(supervisor: Supervisor, number: int, requirements: str | None) -> float:
    lines: list[LogRecord] = []

    def writer(batch: list[LogRecord], first: int, used: int, truncated: bool) -> bool:
        lines.extend(batch)
        return True

    before = time.time()
    result = supervisor.run(claimed(number, requirements), writer)
    assert result.logs is not None
    lines.extend(result.logs.records)
    entered = [float(r.message.split()[1]) for r in lines if r.message.startswith("ENTER")]
    if not entered:
        raise RuntimeError(f"the job did not start: {result.error}")
    return (entered[0] - before) * 1000


def pick_sandbox(python: str, work_root: Path, data_dir: Path) -> Sandbox:
    limits = JobLimits()
    if shutil.which("bwrap") is not None:
        try:
            return detect_sandbox("bubblewrap", python, limits, work_root, data_dir,
                                  2_000_000_000)
        except SandboxUnavailable as exc:
            print(f"bubblewrap unavailable ({exc.message}); measuring the rlimits level")
    return detect_sandbox("none", python, limits, work_root, data_dir, 2_000_000_000)


def line(name: str, values: list[float], base: float | None = None) -> str:
    p50 = statistics.median(values)
    extra = f"  (+{p50 - base:.1f} ms over no requirements)" if base is not None else ""
    return (f"  {name:28s} p50 {p50:7.1f} ms, p99 {percentile(values, 0.99):7.1f} ms, "
            f"{len(values)} runs{extra}")


def main() -> None:
    python = job_python(None)
    with tempfile.TemporaryDirectory(prefix="batchyard-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        work_root = data_dir / "work"
        work_root.mkdir(parents=True, mode=0o700)
        sandbox = pick_sandbox(python, work_root, data_dir)
        cache = EnvCache(data_dir / "envs", python, data_dir / "uv-cache", 1024 ** 3, 600)
        runtime = RuntimeLimits(kill_grace_seconds=0.5, log_cap_bytes=1024 * 1024,
                                log_line_max_bytes=4096, artifact_cap_bytes=1024,
                                artifact_max_files=1)
        supervisor = Supervisor(python, work_root, runtime, sandbox, environments=cache)
        env_path = cache.root / cache.key_for(normalise_requirements(REQUIREMENTS))

        cold = start_ms(supervisor, 0, REQUIREMENTS)  # empty uv cache: downloads the wheel
        first: list[float] = []
        for number in range(RUNS):
            shutil.rmtree(env_path)
            first.append(start_ms(supervisor, number, REQUIREMENTS))
        plain: list[float] = []
        cached: list[float] = []
        for number in range(RUNS + WARMUP):
            # Interleaved, so that machine noise hits both alike.
            without = start_ms(supervisor, number, None)
            with_env = start_ms(supervisor, number, REQUIREMENTS)
            if number >= WARMUP:
                plain.append(without)
                cached.append(with_env)
    base = statistics.median(plain)
    print(f"attempt start (supervisor.run -> main() entered), {python}, "
          f"isolation: {sandbox.description.split(' (')[0]}, requirements: {REQUIREMENTS!r}")
    print(f"  {'first run, cold uv cache':28s} {cold:7.1f} ms (1 run: resolves and downloads)")
    print(line("first run, warm uv cache", first, base))
    print(line("cached environment", cached, base))
    print(line("no requirements", plain))
    print(f"cached-environment overhead p50: {statistics.median(cached) - base:.1f} ms "
          "(target < 20 ms)")


if __name__ == "__main__":
    main()
