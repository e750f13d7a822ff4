"""This process's identity among the processes that share a data folder.

A node id names the owner of the attempts a process runs (``<node>:<boot>/<n>``); at
start a process takes back the attempts its own previous life left running
(``queue.sweep_lost(owner_prefix=...)``). Two live processes must therefore never share
an id, or the second would kill the first's live attempts as its own dead ones.

- On SQLite, one process serves a data folder (SQLite is the one-machine store): a
  second one is refused with a clear message.
- On PostgreSQL, several processes per host are normal: each takes the first free slot
  (``node.<n>.lock``) and is ``<id>`` for slot 0, ``<id>-<n>`` after, so a restarted
  process takes its slot, and so its previous life's attempts, back.

The locks are ``flock``s: the kernel drops them when the process dies, however it dies.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from batchyard.errors import BatchyardError

MAX_SLOTS = 64


class DataFolderBusy(BatchyardError):
    """Another batchyard process already serves this data folder."""

    code = "data_folder_busy"


@dataclass
class NodeSlot:
    node_id: str
    slot: int
    _fd: int

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def take_node_slot(data_dir: Path, base_id: str, *, shared_store: bool) -> NodeSlot:
    """Lock this process's slot of ``data_dir``; DataFolderBusy when there is none."""
    slots = MAX_SLOTS if shared_store else 1
    for slot in range(slots):
        fd = _try_lock(data_dir / f"node.{slot}.lock")
        if fd is not None:
            return NodeSlot(base_id if slot == 0 else f"{base_id}-{slot}", slot, fd)
    if not shared_store:
        raise DataFolderBusy(
            f"Another batchyard process is already serving the data folder {data_dir}. "
            "With the SQLite store one process serves a data folder: stop the other one, "
            "or give this one its own --data-dir (to run several processes on one store, "
            "use PostgreSQL: BATCHYARD_DATABASE_URL).")
    raise DataFolderBusy(f"All {MAX_SLOTS} process slots of the data folder {data_dir} are "
                         "taken; give further processes a data folder of their own.")
