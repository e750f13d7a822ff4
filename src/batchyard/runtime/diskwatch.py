"""How much disk an attempt's writable folders hold, checked while it runs.

The file-size rlimit bounds one file; nothing else stops a job from writing
thousands of them until the host's disk is full and every other attempt, and the
server's own database, fail with it. The supervisor measures the attempt's folders
every second and kills it past the operator's limit. The walk never follows
links and stops counting at a bound on entries, so a job cannot make the check
itself expensive: too many entries is a violation of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MAX_ENTRIES = 100_000


@dataclass(frozen=True)
class DiskUsage:
    bytes: int
    entries: int

    @property
    def entries_exceeded(self) -> bool:
        return self.entries > MAX_ENTRIES


def disk_usage(folders: Iterable[Path]) -> DiskUsage:
    """Bytes allocated (blocks, so sparse files count what they take) under ``folders``."""
    total, entries = 0, 0
    stack = [str(folder) for folder in folders]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                for entry in listing:
                    entries += 1
                    if entries > MAX_ENTRIES:
                        return DiskUsage(total, entries)
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # removed meanwhile, or unreadable: nothing to count
                    total += info.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return DiskUsage(total, entries)


def describe_violation(usage: DiskUsage, limit_bytes: int) -> str | None:
    """The reason to stop an attempt, or None while it stays within its limit."""
    if usage.entries_exceeded:
        return (f"disk_limit_exceeded: the attempt's folders hold more than {MAX_ENTRIES:,} "
                "files and folders")
    if limit_bytes and usage.bytes > limit_bytes:
        return (f"disk_limit_exceeded: the attempt's folders hold {usage.bytes / 2**20:.0f} MiB,"
                f" over the limit of {limit_bytes / 2**20:.0f} MiB")
    return None
