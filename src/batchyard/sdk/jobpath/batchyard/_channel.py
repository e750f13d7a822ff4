"""The structured channel from job code to its supervisor: JSON lines on one fd.

A socket (or a pipe, for one-way use) inherited as a file descriptor, not a
stream object, so that the bootstrap can check whether it is open at all: a
developer running the code locally has no supervisor, and the SDK then falls
back to stderr. Writes and request/reply pairs are serialised by locks because
job code may log from several threads.
"""

from __future__ import annotations

import _thread  # not threading: it imports functools and collections (~3 ms a start)
import errno
import os

# Not `from typing import TYPE_CHECKING`: importing typing costs every job ~4 ms.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

_READ_CHUNK = 65536


class ChannelClosed(OSError):
    """The supervisor's end of the channel is gone."""


class Channel:
    """One JSON object per line, written to (and for requests read from) ``fd``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._write_lock = _thread.allocate_lock()
        self._request_lock = _thread.allocate_lock()
        self._pending = b""
        self._broken = False

    @classmethod
    def open(cls, fd: int) -> Channel | None:
        """The channel on ``fd``, or None when no such descriptor was inherited."""
        try:
            os.fstat(fd)
        except OSError as exc:
            if exc.errno == errno.EBADF:
                return None
            raise
        # Grandchildren (a shell, a browser the job starts) must not hold the
        # supervisor's socket open after this process exits.
        os.set_inheritable(fd, False)
        return cls(fd)

    def send(self, record: Mapping[str, Any]) -> bool:
        """Write one record; False once the supervisor stopped listening."""
        import json  # lazily: json pulls in re and enum (~8 ms per job start)

        if self._broken:
            return False
        line = (json.dumps(record, default=str) + "\n").encode("utf-8")
        with self._write_lock:
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError:
                self._broken = True
                return False
        return True

    def request(self, record: Mapping[str, Any]) -> Any:
        """Send ``record`` and return the supervisor's one-line JSON reply."""
        import json  # lazily: json pulls in re and enum (~8 ms per job start)

        with self._request_lock:
            if not self.send(record):
                raise ChannelClosed(errno.EPIPE, "the platform channel is closed")
            return json.loads(self._read_line())

    def _read_line(self) -> bytes:
        while b"\n" not in self._pending:
            chunk = os.read(self.fd, _READ_CHUNK)
            if not chunk:
                self._broken = True
                raise ChannelClosed(errno.EPIPE, "the platform closed the channel")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line
