"""The worker pool: claim an execution, run its attempt, report, repeat.

Each worker thread is a driver around one step (``work_once``). Work queued in
this process (or elsewhere, with a notice on PostgreSQL) wakes a worker at once; a
poll timer is the floor under the wake-ups. A worker claims again at once only while
its last claim saw more due: claims that find nothing cost a transaction each.
One heartbeat thread renews every running attempt's lease and carries cancels.
The pool reaches the control plane only through its worker port (in-process SQL or
HTTP); the sweeper of lost attempts is the control plane's (``Sweeper``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from batchyard.domain.attempts import (
    AttemptResult,
    ClaimedAttempt,
    LogBatch,
    LogRecord,
    WorkerPort,
    WorkerPortClosed,
)
from batchyard.domain.executions import AttemptOutcome
from batchyard.errors import internal_error_message, new_reference
from batchyard.runtime.box.logsink import LogWriter
from batchyard.runtime.box.supervisor import Supervisor
from batchyard.services import queue
from batchyard.services.context import Platform

log = logging.getLogger("batchyard.worker")


@dataclass(frozen=True)
class PoolTiming:
    poll_interval: float
    lease_seconds: float
    heartbeat_seconds: float
    sweep_interval: float
    # The port's claim waits for work (a remote long-poll): keep one claim outstanding
    # whenever a slot is idle, so work is taken the moment it is queued.
    hold_claim: bool = False


def finish_with_retries(port: WorkerPort, attempt: ClaimedAttempt, result: AttemptResult,
                        give_up_after: float, first_delay: float = 0.2) -> bool:
    """Record the attempt's end, trying again while the store fails (a restart, a lock).

    The write is fenced by (attempt number, owner) like the first try, so trying again
    never records an end twice; without it, one failed write left the attempt to expire
    and be swept ``interrupted``, and a run that had succeeded ran again. After
    ``give_up_after`` seconds (the lease: a sweeper may have taken it by then) it stops.
    Returns whether the end was written by this worker.
    """
    give_up_at = time.monotonic() + give_up_after
    delay = first_delay
    while True:
        try:
            return port.finish(attempt, result)
        except WorkerPortClosed:
            # Refused for good (a revoked token): no later try would be taken.
            log.error("the end of attempt %s/%d was refused: this worker's token is no "
                      "longer valid; the sweeper will take it", attempt.execution_id,
                      attempt.number)
            return False
        except Exception:
            if time.monotonic() + delay > give_up_at:
                log.exception("could not record the end of attempt %s/%d; its lease will "
                              "expire and the sweeper will take it", attempt.execution_id,
                              attempt.number)
                return False
            log.warning("recording the end of attempt %s/%d failed; trying again in %.1f s",
                        attempt.execution_id, attempt.number, delay, exc_info=True)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class WorkerPool:
    def __init__(self, port: WorkerPort, supervisor: Supervisor, node: str, size: int,
                 timing: PoolTiming, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 on_closed: Callable[[], None] = lambda: None) -> None:
        self.port = port
        self.clock = clock
        self.supervisor = supervisor
        self.node = node
        self.size = size
        self.timing = timing
        self._wake = threading.Condition()
        self._signals = 0
        # Slots inside a claim now (the poll timer adds none while one is looking).
        self._claiming = 0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[tuple[str, int], ClaimedAttempt] = {}
        # When each running attempt's lease was last renewed (monotonic): a worker that
        # cannot renew kills its own attempt before the lease runs out and a sweeper takes it.
        self._renewed: dict[tuple[str, int], float] = {}
        self._running_lock = threading.Lock()
        # Set when the port refused this worker for good (a revoked token): its slots end.
        self.closed = threading.Event()
        self._on_closed = on_closed

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        for number in range(self.size):
            self._spawn(self._work_loop, f"worker-{number}", number)
        if self.size:
            self._spawn(self._heartbeat_loop, "heartbeat")
            self._spawn(self._poll_loop, "poll")

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming, kill running attempts (recorded as interrupted, retried if allowed)."""
        self._stopping.set()
        with self._running_lock:
            running = list(self._running.values())
        for attempt in running:
            self.supervisor.stop(attempt.execution_id, AttemptOutcome.INTERRUPTED,
                                 "the server was shut down while this attempt ran",
                                 attempt.number)
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def wake(self) -> None:
        with self._wake:
            self._signals += 1
            self._wake.notify()

    def close(self, why: str) -> None:
        """The port refused this worker for good: say so once, and tell the owner."""
        with self._running_lock:
            first = not self.closed.is_set()
            self.closed.set()
        if first:
            log.error("the control plane refused this worker (%s): its token was revoked "
                      "or is unknown; it stops claiming", why)
            self._on_closed()

    def cancel(self, execution_id: str) -> None:
        self.supervisor.stop(execution_id, AttemptOutcome.CANCELLED,
                             "cancelled by a user")

    # --- workers ---------------------------------------------------------------------
    def worker_id(self, number: int) -> str:
        return f"{self.node}/{number}"

    def _work_loop(self, number: int) -> None:
        while not self._stopping.is_set():
            try:
                again = self.work_once(self.worker_id(number))
            except WorkerPortClosed as exc:
                # Every later call would be refused too: say so once, end the slot.
                self.close(str(exc))
                return
            except Exception:
                log.exception("worker step failed")
                again = False
            if again:
                continue
            with self._wake:
                # Idle slots sleep until woken: by work queued here or elsewhere (a notice),
                # by a claim that saw more due, or by the poll timer. Every idle slot
                # polling was 64 claim queries a second, or 64 long-polls held open.
                if self._signals == 0 and not self._stopping.is_set():
                    self._wake.wait()
                self._signals = max(0, self._signals - 1)

    def _poll_loop(self) -> None:
        """The floor under the wake-ups: every poll interval one idle slot claims, unless
        one is claiming already (a remote long-poll is held for seconds) or is about to."""
        while not self._stopping.wait(self.timing.poll_interval):
            with self._wake:
                if self._claiming == 0 and self._signals == 0:
                    self._signals += 1
                    self._wake.notify()

    def work_once(self, worker: str) -> bool:
        """Claim and run one attempt. True: claim again at once (the claim saw more due);
        False: nothing was claimed, or nothing more was due then. Work queued since has
        left a wake-up signal (``wake``): the slot takes it before it sleeps."""
        with self._wake:
            self._claiming += 1
        asked = time.monotonic()
        try:
            attempt = self.port.claim(worker, self.timing.lease_seconds)
        finally:
            with self._wake:
                self._claiming -= 1
                # Slots of this pool still claiming: each will take one of what was due.
                others = self._claiming
        if attempt is None:
            # The long-poll ended empty: the next one starts at once, unless it ended
            # early (a control plane or proxy not holding it): then the poll timer's pace.
            if self.timing.hold_claim and others == 0 and \
                    time.monotonic() - asked >= self.timing.poll_interval:
                self.wake()
            return False
        # Another slot may take the next queued execution while this one runs, but only
        # if more was due than the slots claiming already take: a slot claiming in vain
        # after every start cost a transaction per execution. A long-polling port keeps
        # one claim waiting instead (the poll timer's 0.1 s gap added ~40 ms to its
        # invoke -> main() p50).
        more_due = attempt.due_seen == 0 or attempt.due_seen > 1 + others
        if more_due or (self.timing.hold_claim and others == 0):
            self.wake()
        key = (attempt.execution_id, attempt.number)
        with self._running_lock:
            self._running[key] = attempt
            self._renewed[key] = time.monotonic()
        try:
            try:
                result = self.supervisor.run(attempt, self.log_writer(attempt))
            except Exception:
                # A bug of ours must not leave the execution "running": record it, with a
                # reference for the tenant (its text may name host paths) and the detail here.
                reference = new_reference()
                log.exception("attempt %s/%d crashed in the supervisor (reference %s)",
                              attempt.execution_id, attempt.number, reference)
                result = AttemptResult(AttemptOutcome.FAILED, 0.0, None,
                                       internal_error_message(reference),
                                       self.clock())
            # Still in _running meanwhile: the heartbeat keeps the lease while it retries.
            finish_with_retries(self.port, attempt, result, self.timing.lease_seconds)
        finally:
            with self._running_lock:
                self._running.pop(key, None)
                self._renewed.pop(key, None)
        return more_due

    def log_writer(self, attempt: ClaimedAttempt) -> LogWriter:
        def write(records: list[LogRecord], first_seq: int, used: int, truncated: bool) -> bool:
            return self.port.append_logs(attempt, LogBatch(tuple(records), first_seq, used,
                                                           truncated))
        return write

    # --- heartbeat and sweeper -------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(self.timing.heartbeat_seconds):
            try:
                self.heartbeat_once()
            except Exception:
                # This thread keeps every running lease: it must outlive any one beat.
                log.exception("a lease heartbeat failed")

    def running_count(self) -> int:
        with self._running_lock:
            return len(self._running)

    def heartbeat_once(self) -> None:
        """Renew every running attempt's lease; stop those lost, cancelled or unrenewable."""
        with self._running_lock:
            running = list(self._running.items())
        if not running:
            return
        try:
            answers = self.port.renew([attempt for _, attempt in running],
                                      self.timing.lease_seconds)
        except WorkerPortClosed:
            answers = [None] * len(running)
        except Exception:
            log.warning("lease renewal of %d running attempts failed", len(running),
                        exc_info=True)
            answers = [None] * len(running)
        for (key, attempt), answer in zip(running, answers, strict=True):
            if answer is None:
                with self._running_lock:
                    renewed = self._renewed.get(key)
                # Fencing alone would refuse its late writes, but the child would run on
                # beside the attempt a sweeper starts elsewhere: it is killed by the time
                # the lease may be taken (one heartbeat before it ends).
                if renewed is not None and time.monotonic() - renewed >= \
                        self.timing.lease_seconds - self.timing.heartbeat_seconds:
                    self.supervisor.stop(attempt.execution_id, AttemptOutcome.INTERRUPTED,
                                         "this worker could not renew its lease on the "
                                         "execution (control plane unreachable)",
                                         attempt.number)
                continue
            ours, cancel = answer
            if not ours:
                self.supervisor.stop(attempt.execution_id, AttemptOutcome.INTERRUPTED,
                                     "this worker lost its lease on the execution",
                                     attempt.number)
                continue
            with self._running_lock:
                if key in self._renewed:
                    self._renewed[key] = time.monotonic()
            if cancel:
                self.supervisor.stop(attempt.execution_id, AttemptOutcome.CANCELLED,
                                     "cancelled by a user", attempt.number)


class Sweeper:
    """The control plane's thread that ends attempts whose worker stopped renewing."""

    def __init__(self, platform: Platform, timing: PoolTiming) -> None:
        self.platform = platform
        self.timing = timing
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.wait(self.timing.sweep_interval):
            try:
                sweep_if_clock_agrees(self.platform, self.timing)
            except Exception:
                log.exception("sweep failed")


def max_clock_offset(timing: PoolTiming) -> float:
    """The clock offset from the database that a sweeper tolerates.

    Leases are written and compared with each process's own clock. A lease renewed every
    ``heartbeat`` and valid for ``lease`` seconds is never taken from a live worker while
    the two processes' clocks differ by less than lease - heartbeat; each process keeps
    within half of that of the database's clock, so any two keep within all of it.
    """
    return (timing.lease_seconds - timing.heartbeat_seconds) / 2


def sweep_if_clock_agrees(platform: Platform, timing: PoolTiming) -> int | None:
    """Sweep lost attempts, unless this process's clock is too far from the database's:
    a sweeper ahead would take live attempts. Then it alarms and leaves the sweep to the
    processes whose clocks agree (None)."""
    offset = queue.clock_offset_seconds(platform)
    if offset is not None and abs(offset) > max_clock_offset(timing):
        log.error("this process's clock is %.1f s %s the database's (at most %.1f s allowed "
                  "with a %g s lease): it does not sweep lost attempts until its clock is "
                  "synchronised (NTP)", abs(offset), "behind" if offset > 0 else "ahead of",
                  max_clock_offset(timing), timing.lease_seconds)
        return None
    return queue.sweep_lost(platform, timing.lease_seconds)
