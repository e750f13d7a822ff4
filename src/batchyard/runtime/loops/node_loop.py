"""This node's heartbeat in the node registry (operator's health view: live nodes)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from batchyard.runtime.loops.driver import Driver

log = logging.getLogger("batchyard.nodes")


class NodeHeartbeat(Driver):
    """Calls ``beat`` every ``interval`` seconds (in-process: a row write; remote: a call)."""

    def __init__(self, beat: Callable[[], None], interval: float) -> None:
        super().__init__("node-heartbeat", log)
        self._beat = beat
        self._interval = interval

    def step(self) -> float:
        self._beat()
        return self._interval
