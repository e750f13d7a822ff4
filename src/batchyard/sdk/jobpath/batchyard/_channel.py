"""The structured channel from job code to its supervisor: JSON lines on one fd.

A socket (or a pipe, for one-way use) inherited as a file descriptor, not a
stream object, so that the bootstrap can check whether it is open at all: a
developer running the code locally has no supervisor, and the SDK then falls
back to stderr. Writes and request/reply pairs are serialised by locks because
job code may log from several threads.

The supervisor reads lines of at most ``line_limit`` bytes (the context says how many):
a longer request is refused here, before anything is sent, and a longer one-way record
(a log line) is sent shortened rather than lost.
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
# The supervisor's CHANNEL_LINE_LIMIT, for a context that does not state it.
LINE_LIMIT = 1024 * 1024
# Room kept for a shortened record's other fields.
_SHORTENED_ROOM = 4096


class ChannelClosed(OSError):
    """The supervisor's end of the channel is gone."""


class RecordTooLarge(ValueError):
    """A record longer, as one line of JSON, than the supervisor reads."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"it is {size} bytes as JSON, and the platform's channel takes "
                         f"at most {limit} bytes")
        self.size = size
        self.limit = limit


class Channel:
    """One JSON object per line, written to (and for requests read from) ``fd``."""

    def __init__(self, fd: int, line_limit: int = LINE_LIMIT) -> None:
        self.fd = fd
        self.line_limit = line_limit
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

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """``record`` as one line of JSON, newline included; RecordTooLarge past the limit."""
        import json  # lazily: json pulls in re and enum (~8 ms per job start)

        # ensure_ascii=False: non-ASCII text costs its UTF-8 bytes, not 6 bytes a character.
        # surrogatepass: a lone surrogate (a file name read with surrogateescape) travels
        # as it did when escaped; json.loads in the supervisor reads it back the same way.
        line = json.dumps(record, default=str, ensure_ascii=False).encode(
            "utf-8", "surrogatepass")
        if len(line) > self.line_limit:
            raise RecordTooLarge(len(line), self.line_limit)
        return line + b"\n"

    def send(self, record: Mapping[str, Any]) -> bool:
        """Write one record; False once the supervisor stopped listening.

        A record over the limit goes with its message cut and its data dropped; False
        when even that is too long (the caller then falls back to stderr).
        """
        if self._broken:
            return False
        try:
            line = self.encode(record)
        except RecordTooLarge:
            try:
                line = self.encode(_shortened(record, self.line_limit))
            except RecordTooLarge:
                return False
        return self._write(line)

    def send_line(self, line: bytes) -> bool:
        """Write one record already encoded (one JSON line within the limit)."""
        return not self._broken and self._write(line)

    def _write(self, line: bytes) -> bool:
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
        """Send ``record`` and return the supervisor's one-line JSON reply.

        RecordTooLarge, before anything is sent, for a request over the limit: the
        supervisor would only refuse it.
        """
        import json  # lazily: json pulls in re and enum (~8 ms per job start)

        line = self.encode(record)
        with self._request_lock:
            if self._broken or not self._write(line):
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


def _shortened(record: Mapping[str, Any], limit: int) -> dict[str, Any]:
    """``record`` with its message cut to fit ``limit`` bytes and its data dropped."""
    # At most 6 bytes a character (a control character is written \uXXXX).
    keep = max(0, (limit - _SHORTENED_ROOM) // 6)
    shortened = dict(record)
    shortened["message"] = (str(record.get("message", ""))[:keep]
                            + f" [cut: the record was larger than the platform's channel "
                              f"takes ({limit} bytes)]")
    for bulky in ("data", "value"):
        if bulky in shortened:
            shortened[bulky] = None
    return shortened
