"""The processes below a job's pid by the kernel's children lists, as the disk check reads
them, are those the whole host's table shows below it: children of every thread, and
grandchildren whose parent has threads of its own."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from batchyard.runtime.box.processes import ProcessTable, tree_below

# A parent that starts a thread, which spawns a child (listed under that thread's task),
# and a child of its own main thread that has a child of its own.
TREE = """
import subprocess, sys, threading, time
kids = []
spawned = threading.Event()
def spawn():  # the thread stays: its child is listed under its task, not the main one
    kids.append(subprocess.Popen(["sleep", "30"]))
    spawned.set()
    time.sleep(30)
threading.Thread(target=spawn, daemon=True).start()
spawned.wait()
kids.append(subprocess.Popen(["sh", "-c", "sleep 30 & wait"]))
print("ready", flush=True)
time.sleep(30)
"""


def test_the_tree_by_children_lists_is_the_tree_by_the_host_table() -> None:
    root = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True)
    try:
        assert root.stdout is not None and root.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 5
        while True:  # until sh has started its sleep
            expected = ProcessTable.read().descendants(root.pid)
            if len(expected) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert len(expected) == 3, expected  # sleep, sh and sh's sleep
        assert tree_below(root.pid) == expected
        assert root.pid not in tree_below(root.pid)
    finally:
        for pid in ProcessTable.read().descendants(root.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        root.kill()
        root.wait()
        assert root.stdout is not None
        root.stdout.close()


def test_a_process_gone_has_no_tree() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert tree_below(gone.pid) == set()
