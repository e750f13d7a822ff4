"""Killing a job's whole process tree.

The child leads its own session and process group; descendants that left the
group (``setsid``) are found through /proc by parent links while the tree is
still connected, so a job that spawns helpers or ignores SIGTERM still dies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessTable:
    """Parent and owner of every process, as /proc showed them at one moment."""

    parents: dict[int, int]
    owners: dict[int, int]

    @classmethod
    def read(cls) -> ProcessTable:
        parents: dict[int, int] = {}
        owners: dict[int, int] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                owners[int(entry.name)] = entry.stat().st_uid
                stat_line = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            # The command name may contain spaces and parentheses: split after the last ')'.
            fields = stat_line.rsplit(")", 1)[-1].split()
            if len(fields) > 1:
                parents[int(entry.name)] = int(fields[1])
        return cls(parents, owners)

    def descendants(self, pid: int) -> set[int]:
        children: dict[int, list[int]] = {}
        for child, parent in self.parents.items():
            children.setdefault(parent, []).append(child)
        found: set[int] = set()
        stack = [pid]
        while stack:
            for child in children.get(stack.pop(), []):
                if child not in found:
                    found.add(child)
                    stack.append(child)
        return found

    def owned_by(self, uid: int) -> set[int]:
        return {pid for pid, owner in self.owners.items() if owner == uid}


def descendants(pid: int) -> set[int]:
    """The process tree below ``pid`` now (a kill must not act on an old snapshot)."""
    return ProcessTable.read().descendants(pid)


def _children_files_work() -> bool:
    return os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


_HAS_CHILDREN_FILES = _children_files_work()


def tree_below(pid: int) -> set[int]:
    """The processes below ``pid`` by the kernel's children lists (CONFIG_PROC_CHILDREN):
    a read per process of the tree, not of the host. The disk check's read of every
    process on the host (PostgreSQL's backends, the other jobs' boxes: hundreds) twice a
    second was 13 % of a worker's Python time with 60 sleeping jobs (bench/scale_out.py).
    A process ending meanwhile is missed, as it would be by a table read a moment
    earlier; a process that left the tree (its parent died) is the PID namespace's."""
    if not _HAS_CHILDREN_FILES:
        return process_table().descendants(pid)
    found: set[int] = set()
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children", "rb") as listing:
                    children = [int(child) for child in listing.read().split()]
            except (OSError, ValueError):
                continue
            for child in children:
                if child not in found and child != pid:
                    found.add(child)
                    stack.append(child)
    return found


_table_lock = threading.Lock()
_table: tuple[float, ProcessTable] | None = None


def process_table(max_age: float = 0.5) -> ProcessTable:
    """A snapshot of /proc no older than ``max_age``, shared by every caller.

    Each running attempt's periodic check needs the processes of its job; reading
    /proc costs ~85 µs a process, so a host with a thousand processes and sixteen
    attempts would spend more than a core on it without sharing one read.
    """
    global _table
    with _table_lock:
        if _table is None or time.monotonic() - _table[0] >= max_age:
            _table = (time.monotonic(), ProcessTable.read())
        return _table[1]


def _signal(pids: set[int], pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_tree(pid: int, grace_seconds: float) -> None:
    """SIGTERM the group and every descendant, then SIGKILL whatever is left after the grace."""
    known = descendants(pid)
    _signal(known, pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if not _group_alive(pid) and not any(_exists(p) for p in known):
            return
        time.sleep(0.02)
    known |= descendants(pid)
    _signal(known, pid, signal.SIGKILL)


def kill_group_now(pid: int) -> None:
    """Remove what a finished job left running in its group (background helpers).

    Only the group: scanning /proc costs ~10 ms, too much for every attempt's end.
    A helper that left the group with setsid is the sandbox's job (PID namespace).
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still "exists" for kill(0); it is dead for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
