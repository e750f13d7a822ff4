"""The worker port in-process: straight to the queue's SQL, as the embedded mode always did."""

from __future__ import annotations

from batchyard.domain.attempts import AttemptResult, ClaimedAttempt, LogBatch
from batchyard.services import queue
from batchyard.services.context import Platform


class LocalPort:
    def __init__(self, platform: Platform, labels: tuple[str, ...] = ()) -> None:
        self.platform = platform
        self.labels = labels

    def claim(self, worker: str, lease_seconds: float) -> ClaimedAttempt | None:
        return queue.claim_next_execution(self.platform, worker, lease_seconds, self.labels)

    def renew(self, attempts: list[ClaimedAttempt],
              lease_seconds: float) -> list[tuple[bool, bool] | None]:
        return list(queue.renew_leases(self.platform, attempts, lease_seconds))

    def append_logs(self, attempt: ClaimedAttempt, batch: LogBatch) -> bool:
        return queue.append_logs(self.platform, attempt, list(batch.records), batch.first_seq,
                                 batch.used_bytes, batch.truncated)

    def finish(self, attempt: ClaimedAttempt, result: AttemptResult) -> bool:
        return queue.finish_attempt(self.platform, attempt, result) is not None
