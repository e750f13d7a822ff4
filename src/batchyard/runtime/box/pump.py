"""One thread reads all of an attempt's output: stdout, stderr and the SDK channel.

A thread per stream (and one more to flush logs) cost each attempt several thread
starts and GIL hand-offs; one selector loop does the same work, splits lines with
a bound on their length, and calls ``tick`` at a steady interval to flush logs.

A line longer than its source's bound is cut into pieces of at most that many bytes;
each piece says which it is (``Part``), so that a reader of records can refuse the
line once and skip the rest, while a reader of logs keeps every piece.
"""

from __future__ import annotations

import enum
import logging
import os
import selectors
import threading
import time
from collections.abc import Callable


class Part(enum.Enum):
    WHOLE = "whole"  # a line (its newline removed) within the bound
    FIRST = "first"  # the first piece of an over-long line, exactly the bound's length
    MORE = "more"  # a later piece of that line; the last one may be shorter


LineHandler = Callable[[str, bytes, Part], None]
log = logging.getLogger(__name__)


class OutputPump:
    def __init__(self, sources: list[tuple[int, str, int]], on_line: LineHandler,
                 tick: Callable[[], None], tick_interval: float) -> None:
        """``sources`` are (file descriptor, name, longest line) triples."""
        self._sources = sources
        self._on_line = on_line
        self._tick = tick
        self._interval = tick_interval
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="output-pump", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self, timeout: float) -> None:
        """Wait for end of file on every source; then stop reading, whatever is left open.

        A grandchild that escaped the kill may keep a pipe open for ever: the
        attempt must still end.
        """
        self._thread.join(timeout)
        self._stopping = True
        self._thread.join()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        buffers: dict[int, bytearray] = {}
        # Sources in the middle of an over-long line: its next piece is Part.MORE.
        cutting: set[int] = set()
        for fd, name, limit in self._sources:
            selector.register(fd, selectors.EVENT_READ, (name, limit))
            buffers[fd] = bytearray()
        next_tick = time.monotonic() + self._interval
        try:
            while selector.get_map() and not self._stopping:
                wait = max(0.0, min(next_tick - time.monotonic(), 0.25))
                for key, _ in selector.select(wait):
                    name, limit = key.data
                    try:
                        data = os.read(key.fd, 65536)
                    except OSError:
                        data = b""
                    buffer = buffers[key.fd]
                    if not data:
                        if buffer:
                            self._deliver(name, bytes(buffer),
                                          Part.MORE if key.fd in cutting else Part.WHOLE)
                        selector.unregister(key.fd)
                        continue
                    buffer += data
                    self._split(name, buffer, limit, key.fd, cutting)
                if time.monotonic() >= next_tick:
                    try:
                        self._tick()
                    except Exception:  # a failed flush or disk check must not stop draining
                        log.exception("the periodic log flush and checks failed")
                    next_tick = time.monotonic() + self._interval
        finally:
            selector.close()

    def _split(self, name: str, buffer: bytearray, limit: int, fd: int,
               cutting: set[int]) -> None:
        while True:
            end = buffer.find(b"\n", 0, limit + 1)
            if end < 0:
                # A line of exactly `limit` bytes is whole if its newline comes next.
                if len(buffer) <= limit:
                    return
                part = Part.MORE if fd in cutting else Part.FIRST
                cutting.add(fd)
                self._deliver(name, bytes(buffer[:limit]), part)
                del buffer[:limit]
                continue
            part = Part.WHOLE
            if fd in cutting:
                part = Part.MORE
                cutting.discard(fd)
            if end or part is Part.WHOLE:  # not the empty tail of a line cut at its end
                self._deliver(name, bytes(buffer[:end]), part)
            del buffer[:end + 1]

    def _deliver(self, name: str, line: bytes, part: Part) -> None:
        try:
            self._on_line(name, line, part)
        except Exception:  # this thread alone drains the job's pipes: it must live on
            log.exception("a line of %s could not be handled", name)
