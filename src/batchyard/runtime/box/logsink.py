"""Buffer an attempt's log records and write them in batches while it runs.

Secret values are masked before anything is stored; the per-execution cap is
enforced here, with one notice stating the truncation. Pipes keep being drained
after the cap so that a chatty job never blocks on a full pipe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from batchyard.domain.attempts import LogBatch, LogRecord

MASK = "***"
LogWriter = Callable[[list[LogRecord], int, int, bool], bool]


def mask(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def mask_data(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return mask(value, secrets)
    if isinstance(value, dict):
        return {mask(str(k), secrets): mask_data(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_data(v, secrets) for v in value]
    return value


class LogSink:
    """Buffers records; its owner (the output pump) calls ``flush`` on a steady tick."""

    def __init__(self, writer: LogWriter, clock: Callable[[], datetime], *,
                 secrets: tuple[str, ...],
                 first_seq: int, used_bytes: int, truncated: bool, cap_bytes: int) -> None:
        # Longest first, so a secret containing another is masked whole.
        self._secrets = tuple(sorted(secrets, key=len, reverse=True))
        self._writer = writer
        self._clock = clock
        self._seq = first_seq
        self._bytes = used_bytes
        self._truncated = truncated
        self._cap = cap_bytes
        self._pending: list[LogRecord] = []
        self._lock = threading.Lock()
        self.fenced = False

    def add(self, stream: str, message: str, level: str | None = None, data: Any = None,
            at: datetime | None = None) -> None:
        message = mask(message, self._secrets)
        if data is not None:
            data = mask_data(data, self._secrets)
        size = len(message.encode("utf-8", "replace")) + (len(str(data)) if data else 0)
        with self._lock:
            if self._truncated:
                return
            if self._bytes + size > self._cap:
                self._truncated = True
                record = LogRecord(self._clock(), "log", (
                    f"Log truncated: this execution reached its log cap of {self._cap} bytes; "
                    "further output was discarded (the job kept running)."), "warn")
            else:
                self._bytes += size
                record = LogRecord(at or self._clock(), stream, message, level, data)
            self._pending.append(record)

    def _take(self) -> LogBatch:
        with self._lock:
            batch, self._pending = self._pending, []
            first = self._seq
            self._seq += len(batch)
            return LogBatch(tuple(batch), first, self._bytes, self._truncated)

    def flush(self) -> None:
        batch = self._take()
        if batch.records and not self._writer(list(batch.records), batch.first_seq,
                                              batch.used_bytes, batch.truncated):
            self.fenced = True

    def close(self) -> LogBatch:
        """Hand back what is not stored yet.

        The caller stores that batch together with the attempt's end: one
        transaction instead of two for every short job.
        """
        return self._take()
