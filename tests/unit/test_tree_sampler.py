"""The /proc sampler of an attempt's tree: dense while a job is young, sparse after, and
the job's own report at its end, joined with the samples.

Every running attempt has a sampler; a fixed 50 ms gap cost ~5 ms of the worker's CPU per
second of each (runtime/box/resources.py), so jobs are sampled less and less often, while
the gap before the end stays a bounded part of the run.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from batchyard.runtime.box.resources import (
    ResourceUsage,
    TreeSampler,
    reported_usage,
    with_report,
)

BURN = "import time\nwhile time.process_time() < {seconds}: pass\n"


def test_the_gap_is_dense_first_then_grows_to_its_bound_and_the_tree_is_counted() -> None:
    child = subprocess.Popen([sys.executable, "-c", BURN.format(seconds=1.2)])
    sampler = TreeSampler(child.pid, interval=0.01, dense_seconds=0.2, growth=1.5,
                          max_interval=0.1).start()
    time.sleep(0.15)
    dense = sampler.samples
    assert sampler.gap == 0.01 and dense >= 5, dense
    child.wait()
    usage = sampler.stop()
    # Dense for 0.2 s (~20 samples), then gaps of 0.015, 0.0225 ... up to 0.1 s: a run of
    # about 1.2 s takes far fewer samples than its 120 at a fixed 10 ms gap.
    assert sampler.gap == 0.1
    assert sampler.samples < 60, sampler.samples
    # The last sample was at most one gap (0.1 s) before the end: that much CPU may be missed.
    assert 1.2 - 0.1 - 0.02 <= usage.cpu_seconds <= 1.3, usage.cpu_seconds
    assert usage.peak_memory_bytes > 1024 * 1024


@pytest.mark.parametrize("record", [
    {"cpu_seconds": 1.5},
    {"cpu_seconds": "1", "peak_memory_bytes": 10},
    {"cpu_seconds": True, "peak_memory_bytes": 10},
    {"cpu_seconds": 1.0, "peak_memory_bytes": 1.5},
    {"cpu_seconds": float("nan"), "peak_memory_bytes": 10},
    {"cpu_seconds": -1.0, "peak_memory_bytes": 10},
    {"cpu_seconds": 1.0, "peak_memory_bytes": 1 << 60},
])
def test_a_usage_report_that_is_not_two_sane_numbers_is_ignored(
        record: dict[str, object]) -> None:
    assert reported_usage({"type": "usage", **record}) is None


def test_the_larger_of_each_figure_is_kept_and_a_report_alone_is_no_figure() -> None:
    report = reported_usage({"type": "usage", "cpu_seconds": 2, "peak_memory_bytes": 10})
    assert report == ResourceUsage(2.0, 10)
    assert with_report(ResourceUsage(1.5, 50), report) == ResourceUsage(2.0, 50)
    assert with_report(ResourceUsage(3.0, 5), report) == ResourceUsage(3.0, 10)
    assert with_report(None, report) is None
    assert with_report(ResourceUsage(1.0, 1), None) == ResourceUsage(1.0, 1)


def test_many_samplers_share_one_thread_and_a_stopped_one_takes_no_more_samples() -> None:
    child = subprocess.Popen([sys.executable, "-c", BURN.format(seconds=0.6)])
    try:
        before = threading.active_count()
        samplers = [TreeSampler(child.pid, interval=0.01, dense_seconds=1.0).start()
                    for _ in range(20)]
        # At most the shared thread's own start (it may be running already).
        assert threading.active_count() <= before + 1
        time.sleep(0.2)
        assert all(sampler.samples >= 3 for sampler in samplers), \
            [sampler.samples for sampler in samplers]
        first, rest = samplers[0], samplers[1:]
        first.stop()
        stopped_at = first.samples
        time.sleep(0.1)
        assert first.samples == stopped_at
        assert all(sampler.samples >= 5 for sampler in rest)
        child.wait()
        # Each saw the tree's CPU (the burn), taken on the shared thread.
        assert all(sampler.stop().cpu_seconds > 0.1 for sampler in rest)
    finally:
        child.kill()
        child.wait()
