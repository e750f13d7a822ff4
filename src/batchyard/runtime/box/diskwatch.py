"""How much disk an attempt's writable folders hold, checked while it runs.

The file-size rlimit bounds one file; nothing else stops a job from writing
thousands of them until the host's disk is full and every other attempt, and the
server's own database, fail with it. The supervisor measures the attempt's folders
every second and kills it past the operator's limit. The walk never follows
links and stops counting at a bound on entries, so a job cannot make the check
itself expensive: too many entries is a violation of its own. Files a job deleted
but still holds open take disk the walk cannot see, so they are found through the
open descriptors of its processes; a folder the walk may not read (a job can
``chmod 000`` what it owns) cannot be measured and is a violation too.
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
    unreadable: str | None = None  # a folder the walk was refused

    @property
    def entries_exceeded(self) -> bool:
        return self.entries > MAX_ENTRIES


def disk_usage(folders: Iterable[Path], pids: Iterable[int] = ()) -> DiskUsage:
    """Bytes allocated (blocks, so sparse files count what they take) under ``folders``,
    plus deleted files under them that the processes ``pids`` still hold open."""
    roots = [str(folder) for folder in folders]
    total, entries = 0, 0
    linked: set[tuple[int, int]] = set()  # a file with several links takes its blocks once
    stack = list(roots)
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
                    except FileNotFoundError:
                        continue  # removed meanwhile
                    except OSError:
                        return DiskUsage(total, entries, unreadable=entry.path)
                    if info.st_nlink > 1 and not entry.is_dir(follow_symlinks=False):
                        if (info.st_dev, info.st_ino) in linked:
                            continue
                        linked.add((info.st_dev, info.st_ino))
                    total += info.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except FileNotFoundError:
            continue
        except OSError:
            return DiskUsage(total, entries, unreadable=folder)
    return DiskUsage(total + _deleted_open_bytes(roots, pids), entries)


def _deleted_open_bytes(roots: list[str], pids: Iterable[int]) -> int:
    """Blocks of files under ``roots`` that were deleted while ``pids`` keep them open."""
    seen: set[tuple[int, int]] = set()
    total = 0
    prefixes = tuple(root.rstrip("/") + "/" for root in roots)
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            descriptors = os.listdir(fd_dir)
        except OSError:
            continue  # the process ended meanwhile
        for descriptor in descriptors:
            path = f"{fd_dir}/{descriptor}"
            try:
                if not os.readlink(path).startswith(prefixes):
                    continue
                info = os.stat(path)
            except OSError:
                continue
            if info.st_nlink != 0:  # still in a folder: the walk counted it
                continue
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def describe_violation(usage: DiskUsage, limit_bytes: int) -> str | None:
    """The reason to stop an attempt, or None while it stays within its limit."""
    if usage.unreadable is not None:
        return (f"disk_limit_exceeded: the attempt made {usage.unreadable} unreadable, so its "
                "disk use cannot be measured")
    if usage.entries_exceeded:
        return (f"disk_limit_exceeded: the attempt's folders hold more than {MAX_ENTRIES:,} "
                "files and folders")
    if limit_bytes and usage.bytes > limit_bytes:
        return (f"disk_limit_exceeded: the attempt's folders hold {usage.bytes / 2**20:.0f} MiB,"
                f" over the limit of {limit_bytes / 2**20:.0f} MiB")
    return None
