"""Warm starts: job interpreters spawned before their attempt, each used for one attempt.

A warm process is exactly what the cold path would spawn for an attempt of its key
(runtime/box/supervisor.py builds both with the same code): its own empty code, output
and tmp folders, its own uid, the same sandbox command line, limits and environment,
the boot run up to the point where it reads its context. An attempt that takes one
extracts its code into the folders and sends the context; ``main()`` runs at once. It
is never given a second attempt: a taken process leaves the pool for good, and what is
left of it after its attempt goes with the attempt's folders.

This module only keeps the books: which key is in demand, how many processes to hold,
spawning and retiring them on a thread of its own, never on an attempt's path. The
spawning and the killing are the supervisor's (``spawn`` and ``discard``).

Sizing: a key is *hot* while an attempt of it started in the last ``idle_seconds``; a
hot key is given as many processes as its attempts in the last ``BURST_SECONDS`` (at
least one, at most ``per_key``), all keys together at most ``size`` processes and
``max_bytes`` of measured resident memory: first one for each hot key (hotter keys
first), then the rest by demand. A key gone cold is emptied.
A process older than ``max_age_seconds`` is replaced, so that a long-idle box does not
keep a stale view (an environment cache that evicted its environment waits for it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger("batchyard.warm")

BURST_SECONDS = 10.0
# After a take, the refill waits this long: a box spawned at once would compete for the
# CPU with the attempt that just took one, in the milliseconds its main() starts.
SETTLE_SECONDS = 0.03
# A spawn that failed is not tried again for this long (the cold path serves meanwhile).
RETRY_SECONDS = 5.0
# A box found dead this soon after its spawn counts as a failed spawn.
BORN_DEAD_SECONDS = 5.0
# What one warm process is assumed to hold before one was measured (a bare boot under
# bubblewrap: ~12-16 MiB resident).
ASSUMED_BYTES = 16 * 1024 ** 2
T = TypeVar("T")


@dataclass(frozen=True)
class WarmKey:
    """What a warm process was built for: an attempt of another key cannot use it."""

    # The job's normalised requirements ("" without requirements.txt): the environment
    # bound into the box and put on its path.
    requirements: str = ""


@dataclass
class _Held(Generic[T]):
    process: T
    born: float


@dataclass
class _KeyBooks(Generic[T]):
    # The latest starts of this key's attempts (warm or cold), newest last: no more are
    # needed than a key may hold boxes (its target is how many fall in the burst window).
    starts: deque[float]
    ready: deque[_Held[T]] = field(default_factory=deque)
    failed_at: float = -1e18

    def note(self, at: float) -> None:
        self.starts.append(at)


@dataclass(frozen=True)
class WarmStats:
    ready: int
    keys: int
    hits: int
    misses: int
    spawned: int
    spawn_failures: int
    retired: int
    bytes_per_process: int


class WarmPool(Generic[T]):
    def __init__(self, spawn: Callable[[WarmKey], T], discard: Callable[[T], None],
                 alive: Callable[[T], bool], size: int, per_key: int = 4,
                 idle_seconds: float = 300.0, max_bytes: int = 0,
                 max_age_seconds: float = 600.0,
                 measure: Callable[[T], int] | None = None,
                 pid: Callable[[T], int] = lambda process: 0,
                 clock: Callable[[], float] = time.monotonic,
                 background: bool = True) -> None:
        self._spawn, self._discard, self._alive = spawn, discard, alive
        self.size, self.per_key = size, per_key
        self.idle_seconds, self.max_bytes = idle_seconds, max_bytes
        self.max_age_seconds = max_age_seconds
        self._measure = measure
        self._pid = pid
        self._clock = clock
        # False: no refill thread; refill_once does its work (the pool's unit tests).
        self._background = background
        self._lock = threading.Lock()
        self._books: dict[WarmKey, _KeyBooks[T]] = {}
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._bytes_per_process = 0
        self._last_take = 0.0
        self._hits = self._misses = self._spawned = self._failures = self._retired = 0

    # --- the attempt's side ------------------------------------------------------------
    def take(self, key: WarmKey) -> T | None:
        """A ready process of ``key`` (it leaves the pool for good), or None: start cold.
        Either way the start counts towards the key's demand, and the refill is woken."""
        found: T | None = None
        dead: list[T] = []
        with self._lock:
            if self._closed:
                return None
            books = self._key_books(key)
            books.note(self._clock())
            self._last_take = time.monotonic()
            while books.ready and found is None:
                held = books.ready.popleft()
                if self._alive(held.process):
                    found = held.process
                else:
                    dead.append(held.process)
            if found is not None:
                self._hits += 1
            else:
                self._misses += 1
            self._start_thread()
        self._wake.set()
        for process in dead:  # off the lock; a box that died waiting (killed, OOM)
            self._discard_quietly(process)
        return found

    def _key_books(self, key: WarmKey) -> _KeyBooks[T]:
        books = self._books.get(key)
        if books is None:
            books = self._books[key] = _KeyBooks(deque(maxlen=max(1, self.per_key)))
        return books

    def _discard_quietly(self, process: T) -> None:
        """Discard one box; a failure is logged, never stops the others' discards."""
        try:
            self._discard(process)
        except Exception:
            log.exception("warm pool: could not discard a warm interpreter")

    def note_start(self, key: WarmKey) -> None:
        """Count a start of ``key`` without taking a process (a test's warm-up)."""
        with self._lock:
            if self._closed:
                return
            self._key_books(key).note(self._clock())
            self._start_thread()
        self._wake.set()

    def ready_count(self, key: WarmKey | None = None) -> int:
        with self._lock:
            if key is not None:
                books = self._books.get(key)
                return len(books.ready) if books else 0
            return sum(len(books.ready) for books in self._books.values())

    def ready_pids(self) -> list[int]:
        """Host pids of the ready processes."""
        with self._lock:
            return [self._pid(h.process) for b in self._books.values() for h in b.ready]

    def stats(self) -> WarmStats:
        with self._lock:
            return WarmStats(sum(len(b.ready) for b in self._books.values()),
                             sum(1 for b in self._books.values() if b.ready), self._hits,
                             self._misses, self._spawned, self._failures, self._retired,
                             self._bytes_per_process)

    def close(self) -> None:
        """Retire every ready process and stop refilling; later takes start cold."""
        with self._lock:
            self._closed = True
            thread = self._thread
            held = [h.process for books in self._books.values() for h in books.ready]
            self._books.clear()
        self._wake.set()
        if thread is not None and thread.is_alive():
            thread.join(timeout=30)
        for process in held:
            self._discard_quietly(process)

    # --- the refill thread ---------------------------------------------------------------
    def _start_thread(self) -> None:
        if self._thread is None and self.size > 0 and self._background:
            thread = threading.Thread(target=self._refill_loop, name="warm-refill",
                                      daemon=True)
            try:
                thread.start()
            except RuntimeError:  # no thread to be had now: this start is cold, the next tries
                log.warning("warm pool: could not start its refill thread", exc_info=True)
                return
            self._thread = thread

    def _refill_loop(self) -> None:
        while True:
            self._wake.clear()
            with self._lock:
                if self._closed:
                    return
                settle = self._last_take + SETTLE_SECONDS - time.monotonic()
            if settle > 0:
                time.sleep(settle)
            try:
                spawned_one = self.refill_once()
            except BaseException:
                # The loop must outlive any one failure: cold starts go on, and under
                # bubblewrap every box it spawned dies with it (--die-with-parent follows
                # the spawning thread), attempts running in them included.
                log.exception("warm pool: refill step failed")
                spawned_one = False
            if not spawned_one:
                self._wake.wait(timeout=1.0)

    def _targets(self, now: float) -> dict[WarmKey, int]:
        """How many processes each key should hold now (under the lock)."""
        wanted: list[tuple[int, WarmKey]] = []
        for key, books in self._books.items():
            if not books.starts or books.starts[-1] < now - self.idle_seconds:
                continue  # gone cold
            burst = sum(1 for at in books.starts if at >= now - BURST_SECONDS)
            wanted.append((min(self.per_key, max(1, burst)), key))
        budget = self.size
        if self.max_bytes:
            per = self._bytes_per_process or ASSUMED_BYTES
            budget = min(budget, self.max_bytes // per)
        # One box for every hot key first (a busy key never starves a new one), hotter
        # keys first; then the rest of the budget by demand.
        order = sorted(wanted, key=lambda item: -item[0])
        targets: dict[WarmKey, int] = {}
        for _want, key in order:
            targets[key] = 1 if budget > 0 else 0
            budget -= targets[key]
        for want, key in order:
            more = min(want - targets[key], budget) if targets[key] else 0
            targets[key] += more
            budget -= more
        return targets

    def refill_once(self) -> bool:
        """One step of the refill thread: retire what is not wanted, then spawn one
        process where one is missing. Returns whether it spawned (the thread then looks
        again at once)."""
        now = self._clock()
        retire: list[T] = []
        spawn_for: WarmKey | None = None
        settled: T | None = None
        with self._lock:
            if self._measure is not None and not self._bytes_per_process:
                # One measure of a box that had time to reach its context read.
                settled = next((h.process for b in self._books.values() for h in b.ready
                                if now - h.born >= 1.0), None)
        if settled is not None and self._measure is not None:
            measured = self._measure(settled)
            with self._lock:
                # Only a box still ready now: one taken meanwhile holds a job's memory too.
                still_ready = any(h.process is settled for b in self._books.values()
                                  for h in b.ready)
                if still_ready and measured > 0:
                    self._bytes_per_process = measured
        with self._lock:
            targets = self._targets(now)
            for key, books in list(self._books.items()):
                target = targets.get(key, 0)
                kept: deque[_Held[T]] = deque()
                for held in books.ready:
                    alive = self._alive(held.process)
                    if not alive and now - held.born < BORN_DEAD_SECONDS:
                        # It died as it started (a limit its boot cannot start under):
                        # back off as from a failed spawn, never respawn in a tight loop.
                        books.failed_at = now
                        self._failures += 1
                    if len(kept) >= target or now - held.born > self.max_age_seconds \
                            or not alive:
                        retire.append(held.process)
                    else:
                        kept.append(held)
                books.ready = kept
                if key not in targets and not books.ready:
                    del self._books[key]
                elif spawn_for is None and len(kept) < target \
                        and now - books.failed_at >= RETRY_SECONDS:
                    spawn_for = key
            self._retired += len(retire)
        for process in retire:
            self._discard_quietly(process)
        if spawn_for is None:
            return False
        try:
            process = self._spawn(spawn_for)
        except Exception as exc:
            with self._lock:
                self._failures += 1
                failed = self._books.get(spawn_for)
                if failed is not None:
                    failed.failed_at = self._clock()
            log.warning("warm pool: could not spawn a warm interpreter (attempts start "
                        "cold meanwhile): %s", exc, exc_info=not isinstance(exc, OSError))
            return False
        with self._lock:
            refilled = self._books.get(spawn_for)
            if self._closed or refilled is None:
                orphan = True
            else:
                orphan = False
                refilled.ready.append(_Held(process, self._clock()))
                self._spawned += 1
        if orphan:
            self._discard_quietly(process)
        return True
