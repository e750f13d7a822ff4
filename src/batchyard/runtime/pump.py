"""One thread reads all of an attempt's output: stdout, stderr and the SDK channel.

A thread per stream (and one more to flush logs) cost each attempt several thread
starts and GIL hand-offs; one selector loop does the same work, splits lines with
a bound on their length, and calls ``tick`` at a steady interval to flush logs.
"""

from __future__ import annotations

import os
import selectors
import threading
import time
from collections.abc import Callable

LineHandler = Callable[[str, bytes], None]


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
                            self._on_line(name, bytes(buffer))
                        selector.unregister(key.fd)
                        continue
                    buffer += data
                    self._split(name, buffer, limit)
                if time.monotonic() >= next_tick:
                    self._tick()
                    next_tick = time.monotonic() + self._interval
        finally:
            selector.close()

    def _split(self, name: str, buffer: bytearray, limit: int) -> None:
        while True:
            end = buffer.find(b"\n", 0, limit + 1)
            if end < 0:
                if len(buffer) < limit:
                    return
                # An over-long line is cut into pieces of at most `limit` bytes.
                self._on_line(name, bytes(buffer[:limit]))
                del buffer[:limit]
                continue
            self._on_line(name, bytes(buffer[:end]))
            del buffer[:end + 1]
