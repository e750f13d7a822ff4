"""What an attempt's processes used: CPU time and peak memory.

Peak memory is always the largest resident size of any single process of the attempt
(not the sum of the tree); CPU time is user + system of the whole tree.

- rlimits launcher (and unconfined): ``wait4`` of the spawned child, which is the job's
  interpreter: its own usage plus that of every descendant it reaped. Exact; a process
  that escaped the tree (``setsid`` + double fork) is not counted. ``ru_maxrss`` keeps
  the high-water mark of the memory the child was forked from (the server's, through
  exec): when it is not above the server's own peak, the sampled peak (below) is used.
- bubblewrap: ``wait4`` of bwrap sees nothing of the job (bwrap returns as soon as its
  PID-namespace init reports the job's exit, and nobody it waits for reaps that init),
  so the tree under bwrap is sampled from /proc (at both levels, for the peak): CPU
  time is the sum over live processes of their own and their reaped children's time
  (each second of CPU is in exactly one of them), peak memory the largest ``VmHWM``
  seen. Both figures only grow while a process lives, so what a sample misses is the
  tail after the last one: samples are ``SAMPLE_SECONDS`` apart for the first
  ``DENSE_SECONDS``, then each gap is ``SAMPLE_GROWTH`` times the last, up to
  ``MAX_SAMPLE_SECONDS``: the last sample is at most a quarter of the run time (never
  more than 0.5 s, never less than 50 ms) before the end.
- the job's own report: as it ends, the job's boot sends its ``getrusage`` of itself and
  of the children it reaped (a ``usage`` record on the channel). Each figure is the
  larger of the measured one and the reported one (``with_report``): both can only be
  short of the truth (a sample misses the tail, the report misses what still ran after
  it), so the larger is the nearer, and a job that under-reports changes nothing. A job
  that ends normally is so measured to its last millisecond; one that is killed or
  crashes has the samples. The samples used to be 50 ms apart for the first 1.5 s of
  every attempt, for the short jobs' sake: that was ~10 ms of the worker's CPU for each
  attempt that ran a few seconds (/proc reads are system time), a third of a busy
  worker's CPU.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 0.05
DENSE_SECONDS = 0.2
SAMPLE_GROWTH = 1.25
MAX_SAMPLE_SECONDS = 0.5
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ResourceUsage:
    cpu_seconds: float
    peak_memory_bytes: int


def wait_with_usage(process: subprocess.Popen[bytes]) -> tuple[int, ResourceUsage | None]:
    """Block until the child ends (no polling) and return its exit status and usage.

    The child is reaped here with ``wait4`` rather than by ``Popen.wait`` (which discards
    the usage), so ``returncode`` is set by hand; should the child already have been
    reaped elsewhere, its status is taken from the ``Popen`` and the usage is unknown.
    """
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except ChildProcessError:
        return process.wait(), None
    process.returncode = os.waitstatus_to_exitcode(status)
    # Linux reports ru_maxrss in KiB.
    return process.returncode, ResourceUsage(
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_memory_bytes=int(usage.ru_maxrss) * 1024)


class _SampleTicker:
    """The one thread that takes every running attempt's samples, each at its own time.

    Each attempt's sampler had a thread of its own, started and joined for every attempt,
    that woke ~14 times in a 2 s run. Sampling is most of what watching a running job
    costs the worker (bench/scale_out.py's fleet, one worker, `time.sleep(2)` jobs: 14.9
    and 14.4 ms of its CPU per execution, 10.4 and 11.2 with sampling left out). On one
    thread for all, a sample cost 162 µs of CPU instead of 220 (measured in that fleet over
    3,000 samples), and no thread is started per attempt. It wakes once for all samples
    due together, and not at all while no attempt runs. A sample of a huge tree delays
    the others' (never a deadline: those are timers of their own).
    """

    def __init__(self) -> None:
        self._due: list[tuple[float, int, TreeSampler]] = []
        self._order = itertools.count()  # ties never compare two samplers
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, sampler: TreeSampler, at: float) -> None:
        with self._changed:
            heapq.heappush(self._due, (at, next(self._order), sampler))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="usage-samples",
                                                daemon=True)
                self._thread.start()
            elif self._due[0][2] is sampler:  # due before what the thread waits for
                self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                while not self._due or self._due[0][0] > now:
                    self._changed.wait(self._due[0][0] - now if self._due else None)
                    now = time.monotonic()
                due = []
                while self._due and self._due[0][0] <= now:
                    due.append(heapq.heappop(self._due)[2])
            for sampler in due:
                try:
                    at = sampler.take_sample()
                except Exception:  # this thread samples every attempt: it must live on
                    log.exception("sampling the processes of an attempt failed")
                    continue
                if at is not None:
                    self.add(sampler, at)


_TICKER = _SampleTicker()


class TreeSampler:
    """Samples a process tree's CPU time and peak memory from /proc until stopped (on the
    shared sampling thread)."""

    def __init__(self, root: int, interval: float = SAMPLE_SECONDS,
                 dense_seconds: float = DENSE_SECONDS, growth: float = SAMPLE_GROWTH,
                 max_interval: float = MAX_SAMPLE_SECONDS) -> None:
        self._root = root
        self._interval = interval
        self._dense_seconds = dense_seconds
        self._dense_until = 0.0
        self._growth = growth
        self._max_interval = max_interval
        self.samples = 0
        self.gap = interval  # the current gap between two samples
        # Held while a sample is taken: stop waits for one in progress.
        self._lock = threading.Lock()
        self._stopped = False
        self._cpu_ticks = 0
        self._peak_kib = 0

    def start(self) -> TreeSampler:
        now = time.monotonic()
        self._dense_until = now + self._dense_seconds
        _TICKER.add(self, now)  # the first sample at once
        return self

    def stop(self) -> ResourceUsage:
        with self._lock:
            self._stopped = True
            return ResourceUsage(cpu_seconds=self._cpu_ticks / _TICKS,
                                 peak_memory_bytes=self._peak_kib * 1024)

    def take_sample(self) -> float | None:
        """Sample now: when the next sample is due (monotonic), None once stopped."""
        with self._lock:
            if self._stopped:
                return None
            self._sample()
            if time.monotonic() >= self._dense_until:
                self._interval = min(self._interval * self._growth, self._max_interval)
            self.samples, self.gap = self.samples + 1, self._interval
            return time.monotonic() + self._interval

    def _sample(self) -> None:
        # Raw reads, not pathlib: a sample of a three-process tree cost ~270 µs through
        # Path.read_text and is taken many times a second for every running attempt.
        ticks = 0
        stack = [self._root]
        seen: set[int] = set()
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            base = f"/proc/{pid}/"
            with contextlib.suppress(OSError, ValueError, IndexError):
                # utime, stime, cutime, cstime: fields 14-17, after the command in ()
                fields = _read(base + "stat").rsplit(b")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
                status = _read(base + "status")
                at = status.find(b"VmHWM:")
                if at >= 0:
                    kib = int(status[at + 6:status.index(b"kB", at)])
                    self._peak_kib = max(self._peak_kib, kib)
                for task in os.listdir(base + "task"):
                    with contextlib.suppress(OSError, ValueError):
                        stack.extend(int(c) for c in
                                     _read(f"{base}task/{task}/children").split())
        # A sample taken while the tree is ending sees less (a process gone between two
        # reads): keep the largest.
        self._cpu_ticks = max(self._cpu_ticks, ticks)


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 8192)
    finally:
        os.close(fd)


# A report beyond these is not a figure of this attempt: it is ignored.
_MAX_REPORTED_CPU_SECONDS = 10_000_000.0
_MAX_REPORTED_PEAK_BYTES = 1 << 50


def reported_usage(record: dict[str, object]) -> ResourceUsage | None:
    """The job's ``usage`` record as figures; None when it is not two sane numbers."""
    cpu, peak = record.get("cpu_seconds"), record.get("peak_memory_bytes")
    if isinstance(cpu, bool) or isinstance(peak, bool) or not isinstance(cpu, int | float) \
            or not isinstance(peak, int):
        return None
    if not 0 <= cpu <= _MAX_REPORTED_CPU_SECONDS or not 0 <= peak <= _MAX_REPORTED_PEAK_BYTES:
        return None  # NaN fails both comparisons
    return ResourceUsage(float(cpu), peak)


def with_report(measured: ResourceUsage | None,
                reported: ResourceUsage | None) -> ResourceUsage | None:
    """The larger of each figure (see the module's notes); a report alone is no figure."""
    if measured is None or reported is None:
        return measured
    return ResourceUsage(max(measured.cpu_seconds, reported.cpu_seconds),
                         max(measured.peak_memory_bytes, reported.peak_memory_bytes))


class UsageMeter:
    """One attempt's figures: ``wait4`` where it sees the job, the /proc samples elsewhere."""

    def __init__(self, waited_sees_job: bool) -> None:
        self._waited_sees_job = waited_sees_job
        # What a forked child's ru_maxrss starts from (see the module's notes).
        self._inherited_kib = _own_peak_kib()
        self._sampler: TreeSampler | None = None

    def watch(self, pid: int) -> None:
        self._sampler = TreeSampler(pid).start()

    def finish(self, waited: ResourceUsage | None) -> ResourceUsage | None:
        sampled = self._sampler.stop() if self._sampler is not None else None
        if not self._waited_sees_job or waited is None:
            return sampled
        peak = waited.peak_memory_bytes
        if peak <= self._inherited_kib * 1024 and sampled is not None:
            peak = sampled.peak_memory_bytes
        return ResourceUsage(cpu_seconds=waited.cpu_seconds, peak_memory_bytes=peak)


def _own_peak_kib() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0
