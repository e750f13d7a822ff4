"""The output pump over real pipes: lines split at their bound, each piece saying what it is."""

from __future__ import annotations

import os
import time

from batchyard.runtime.box.pump import OutputPump, Part

LIMIT = 8


def pumped(data: bytes, fail_on: bytes | None = None) -> list[tuple[bytes, Part]]:
    read, write = os.pipe()
    seen: list[tuple[bytes, Part]] = []

    def on_line(name: str, line: bytes, part: Part) -> None:
        if line == fail_on:
            raise RuntimeError("a handler bug")
        seen.append((line, part))

    pump = OutputPump([(read, "channel", LIMIT)], on_line, lambda: None, 0.05)
    pump.start()
    try:
        os.write(write, data)
    finally:
        os.close(write)
    pump.finish(timeout=5)
    os.close(read)
    return seen


def test_lines_within_the_bound_are_whole_even_at_exactly_the_bound() -> None:
    assert pumped(b"short\n" + b"x" * LIMIT + b"\n\nend") == [
        (b"short", Part.WHOLE), (b"x" * LIMIT, Part.WHOLE), (b"", Part.WHOLE),
        (b"end", Part.WHOLE)]


def test_an_over_long_line_is_one_first_piece_then_more_pieces() -> None:
    assert pumped(b"a" * (LIMIT * 2 + 3) + b"\nnext\n") == [
        (b"a" * LIMIT, Part.FIRST), (b"a" * LIMIT, Part.MORE), (b"aaa", Part.MORE),
        (b"next", Part.WHOLE)]


def test_a_line_cut_just_at_its_end_has_no_empty_tail_and_the_next_starts_afresh() -> None:
    assert pumped(b"b" * LIMIT * 2 + b"\n" + b"c" * (LIMIT + 1) + b"\n") == [
        (b"b" * LIMIT, Part.FIRST), (b"b" * LIMIT, Part.MORE),
        (b"c" * LIMIT, Part.FIRST), (b"c", Part.MORE)]


def test_the_rest_of_a_cut_line_at_end_of_file_is_a_later_piece() -> None:
    assert pumped(b"d" * (LIMIT + 2)) == [(b"d" * LIMIT, Part.FIRST), (b"dd", Part.MORE)]


def test_a_handler_that_raises_does_not_stop_the_pump() -> None:
    assert pumped(b"one\nbad\ntwo\n", fail_on=b"bad") == [(b"one", Part.WHOLE),
                                                          (b"two", Part.WHOLE)]


def test_a_tick_that_raises_does_not_stop_the_pump() -> None:
    read, write = os.pipe()
    seen: list[bytes] = []
    ticks: list[None] = []

    def tick() -> None:
        ticks.append(None)
        raise RuntimeError("a failed log flush")

    pump = OutputPump([(read, "stdout", 1024)], lambda _n, line, _p: seen.append(line), tick,
                      0.01)
    pump.start()
    try:
        os.write(write, b"before\n")
        time.sleep(0.1)  # several ticks fail meanwhile
        os.write(write, b"after\n")
    finally:
        os.close(write)
    pump.finish(timeout=5)
    os.close(read)
    assert len(ticks) >= 2
    assert seen == [b"before", b"after"]
