"""The warm pool's books (runtime/box/warm.py): sizing by demand, one taker per process,
retiring, limits. Its processes here are plain records; the real boxes, spawned by the
supervisor inside the sandbox, are tests/integration/test_warm_starts.py's."""

from __future__ import annotations

from dataclasses import dataclass

from batchyard.runtime.box.warm import BURST_SECONDS, RETRY_SECONDS, WarmKey, WarmPool

PLAIN = WarmKey()
WITH_SIX = WarmKey("six==1.16.0")


@dataclass
class Box:
    number: int
    key: WarmKey
    alive: bool = True
    discarded: bool = False


class Books:
    """What the pool asked for: every box it spawned, in order; a clock the test moves."""

    def __init__(self) -> None:
        self.boxes: list[Box] = []
        self.now = 1000.0
        self.fail = False

    def spawn(self, key: WarmKey) -> Box:
        if self.fail:
            raise OSError("no uid left")
        box = Box(len(self.boxes), key)
        self.boxes.append(box)
        return box

    def discard(self, box: Box) -> None:
        assert not box.discarded, "discarded twice"
        box.discarded = True

    def pool(self, size: int = 4, per_key: int = 4, max_bytes: int = 0,
             measure_bytes: int = 0) -> WarmPool[Box]:
        return WarmPool(self.spawn, self.discard, lambda box: box.alive, size, per_key,
                        idle_seconds=60, max_bytes=max_bytes, max_age_seconds=600,
                        measure=(lambda box: measure_bytes) if measure_bytes else None,
                        clock=lambda: self.now, background=False)


def fill(pool: WarmPool[Box]) -> None:
    while pool.refill_once():
        pass


def test_nothing_is_spawned_for_a_key_never_seen() -> None:
    books = Books()
    pool = books.pool()
    fill(pool)
    assert books.boxes == [] and pool.ready_count() == 0


def test_a_first_start_is_cold_and_makes_its_key_hot() -> None:
    books = Books()
    pool = books.pool()
    assert pool.take(PLAIN) is None
    fill(pool)
    assert pool.ready_count(PLAIN) == 1
    box = pool.take(PLAIN)
    assert box is books.boxes[0]
    assert pool.stats().hits == 1 and pool.stats().misses == 1


def test_a_taken_process_is_never_handed_out_again() -> None:
    books = Books()
    pool = books.pool()
    taken: list[Box] = []
    pool.take(PLAIN)
    for _ in range(20):
        fill(pool)
        box = pool.take(PLAIN)
        assert box is not None
        taken.append(box)
    assert len({id(box) for box in taken}) == 20
    # The pool's remaining boxes are all new ones.
    fill(pool)
    assert all(box not in taken for box in books.boxes[-pool.ready_count():])


def test_demand_sets_the_count_within_the_per_key_and_total_limits() -> None:
    books = Books()
    pool = books.pool(size=5, per_key=3)
    for _ in range(10):
        pool.take(PLAIN)
    pool.take(WITH_SIX)
    pool.take(WITH_SIX)
    fill(pool)
    assert pool.ready_count(PLAIN) == 3  # per key
    assert pool.ready_count(WITH_SIX) == 2  # what is left of the five
    assert pool.ready_count() == 5


def test_the_memory_bound_lowers_the_count_once_a_box_is_measured() -> None:
    books = Books()
    pool = books.pool(size=8, max_bytes=100 * 1024 ** 2, measure_bytes=40 * 1024 ** 2)
    for _ in range(10):
        pool.take(PLAIN)
    fill(pool)
    # Before a measure: 16 MiB assumed, 100 // 16 = 6 (under the size of 8 and per key 4).
    assert pool.ready_count() == 4
    books.now += 2  # old enough to be measured: 40 MiB each, so 2 fit
    fill(pool)
    assert pool.stats().bytes_per_process == 40 * 1024 ** 2
    assert pool.ready_count() == 2
    assert sum(box.discarded for box in books.boxes) == 2


def test_a_key_gone_cold_is_emptied_and_forgotten() -> None:
    books = Books()
    pool = books.pool()
    pool.take(PLAIN)
    fill(pool)
    assert pool.ready_count(PLAIN) == 1
    books.now += BURST_SECONDS + 61  # past idle_seconds
    fill(pool)
    assert pool.ready_count() == 0
    assert books.boxes[0].discarded
    assert pool.stats().retired == 1


def test_a_box_that_died_waiting_is_discarded_not_handed_out() -> None:
    books = Books()
    pool = books.pool(per_key=1)
    pool.take(PLAIN)
    fill(pool)
    books.boxes[0].alive = False
    assert pool.take(PLAIN) is None
    assert books.boxes[0].discarded


def test_a_failed_spawn_waits_before_it_is_tried_again() -> None:
    books = Books()
    pool = books.pool()
    books.fail = True
    pool.take(PLAIN)
    assert pool.refill_once() is False
    books.fail = False
    assert pool.refill_once() is False  # within RETRY_SECONDS
    books.now += RETRY_SECONDS
    assert pool.refill_once() is True
    assert pool.stats().spawn_failures == 1


def test_close_discards_every_ready_box_and_later_takes_start_cold() -> None:
    books = Books()
    pool = books.pool()
    for _ in range(4):
        pool.take(PLAIN)
    fill(pool)
    pool.close()
    assert all(box.discarded for box in books.boxes)
    spawned = len(books.boxes)
    assert pool.take(PLAIN) is None
    assert pool.refill_once() is False
    assert len(books.boxes) == spawned and pool.ready_count() == 0


def test_a_box_that_dies_as_it_starts_backs_off_instead_of_respawning_at_once() -> None:
    books = Books()
    pool = books.pool(per_key=1)
    pool.take(PLAIN)
    assert pool.refill_once() is True
    books.boxes[0].alive = False  # its boot could not start
    assert pool.refill_once() is False  # retired, counted as a failure, not respawned
    assert len(books.boxes) == 1 and books.boxes[0].discarded
    assert pool.stats().spawn_failures == 1
    books.now += RETRY_SECONDS
    assert pool.refill_once() is True


def test_recent_starts_kept_per_key_are_bounded() -> None:
    books = Books()
    pool = books.pool(per_key=3)
    for _ in range(10_000):
        pool.take(PLAIN)
    fill(pool)
    assert pool.ready_count(PLAIN) == 3


def test_a_busy_key_never_starves_a_new_one() -> None:
    books = Books()
    pool = books.pool(size=4, per_key=4)
    for _ in range(50):
        pool.take(PLAIN)
    fill(pool)
    assert pool.ready_count(PLAIN) == 4
    pool.take(WITH_SIX)  # a new key: the pool is full of the busy one's boxes
    fill(pool)
    assert pool.ready_count(WITH_SIX) == 1
    assert pool.ready_count(PLAIN) == 3
