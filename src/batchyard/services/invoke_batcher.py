"""Group commit for API invocations: one transaction admits every invocation waiting.

On SQLite every admission takes the database's single write lock. Eight clients
invoking at once would queue for it one transaction at a time, each paying its own
BEGIN, account lock, usage read and COMMIT, while the thread holding the lock
competes for the GIL with the others. Here the invocations that arrive while one
transaction runs wait together and go into the next: ``admit_many`` decides them in
arrival order against the same counters, so every decision is the one one-by-one
admission would have made, for a fraction of the statements. A batch that fails
as a whole is retried one invocation at a time, so one bad request (an unknown
job) never fails its neighbours.

SQLite has one writer, so one thread admits every account's invocations together.
On PostgreSQL accounts are locked row by row: there, several threads each take one
account's waiting invocations, never an account another thread is admitting, so an
account whose row is held for a while (the scheduler admitting a large batch of its
fires) delays only its own invocations, and each account's stay in arrival order.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass

from batchyard.domain.admission import Admission
from batchyard.services.context import Platform
from batchyard.services.invoke import Invocation, Recorded, admit_many

log = logging.getLogger(__name__)

Decision = tuple[Recorded, Admission]


@dataclass(frozen=True)
class _Pending:
    account_id: str
    invocation: Invocation
    future: Future[Decision]


class InvocationBatcher:
    def __init__(self, platform: Platform, max_batch: int = 64,
                 threads: int | None = None) -> None:
        self._platform = platform
        self._max_batch = max_batch
        # One lane for SQLite's single writer; per-account lanes otherwise.
        self._per_account = not platform.db.is_sqlite
        count = threads if threads is not None else (8 if self._per_account else 1)
        self._pending: list[_Pending] = []
        self._busy: set[str] = set()  # accounts a thread is admitting now
        self._wake = threading.Condition()
        self._stopping = False
        self._threads = [threading.Thread(target=self._run, name=f"invocations-{n}",
                                          daemon=True) for n in range(count)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Admit what is still waiting, then stop: an accepted request is never dropped."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join()

    def submit(self, account_id: str, invocation: Invocation) -> Future[Decision]:
        """The decision arrives on the future once its transaction has committed."""
        pending = _Pending(account_id, invocation, Future())
        with self._wake:
            running = self._threads[0].is_alive() and not self._stopping
            if running:
                self._pending.append(pending)
                self._wake.notify()
        if not running:  # not started (a test) or shutting down: admit on this thread
            pending.future.set_running_or_notify_cancel()
            self._admit([pending])
        return pending.future

    def admit_together(self, requests: list[tuple[str, Invocation]]) -> list[Future[Decision]]:
        """Admit (account id, invocation) pairs as one batch on this thread."""
        batch = [_Pending(account_id, invocation, Future()) for account_id, invocation in requests]
        for pending in batch:
            pending.future.set_running_or_notify_cancel()
        self._admit(batch)
        return [pending.future for pending in batch]

    def _take(self) -> list[_Pending]:
        """The next batch (called holding the condition): all accounts, or one account not
        being admitted by another thread."""
        if not self._per_account:
            taken = self._pending[:self._max_batch]
            del self._pending[:self._max_batch]
            return taken
        account = next((pending.account_id for pending in self._pending
                        if pending.account_id not in self._busy), None)
        if account is None:
            return []
        taken, kept = [], []
        for pending in self._pending:
            if pending.account_id == account and len(taken) < self._max_batch:
                taken.append(pending)
            else:
                kept.append(pending)
        self._pending = kept
        self._busy.add(account)
        return taken

    def _run(self) -> None:
        while True:
            with self._wake:
                taken = self._take()
                while not taken and not (self._stopping and not self._pending):
                    self._wake.wait()
                    taken = self._take()
                if not taken:
                    return
            try:
                self._admit_taken(taken)
            finally:
                with self._wake:
                    self._busy.difference_update({pending.account_id for pending in taken})
                    if self._pending:
                        self._wake.notify_all()  # an account that was busy may be free now

    def _admit_taken(self, taken: list[_Pending]) -> None:
        # A request whose client went away (its future cancelled) is not admitted; the
        # others' futures are marked running so that they can no longer be cancelled.
        batch = [pending for pending in taken if pending.future.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            self._admit(batch)
        except BaseException as exc:  # never leave a caller waiting for ever
            log.exception("admitting %d invocation(s) failed", len(batch))
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)

    def _admit(self, batch: list[_Pending]) -> None:
        platform = self._platform
        by_account: dict[str, list[_Pending]] = {}
        for pending in batch:
            by_account.setdefault(pending.account_id, []).append(pending)
        decided: list[tuple[_Pending, Decision]] = []
        try:
            now = platform.clock.now()
            with platform.db.write() as session:
                # Accounts in a fixed order: two servers' batches never lock them crosswise.
                for account_id in sorted(by_account):
                    group = by_account[account_id]
                    decisions = admit_many(platform, session, account_id,
                                           [pending.invocation for pending in group], now)
                    decided.extend(zip(group, decisions, strict=True))
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            for pending in batch:
                self._admit([pending])
            return
        # Committed: workers are woken before anyone is answered.
        if any(admission.admitted for _, (_, admission) in decided):
            platform.on_queued()
        for pending, decision in decided:
            pending.future.set_result(decision)
