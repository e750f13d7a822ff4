"""The log sink masks secrets, keeps order and sequence, and states truncation once."""

from __future__ import annotations

from datetime import UTC, datetime

from batchyard.domain.attempts import LogRecord
from batchyard.runtime.box.logsink import LogSink, mask, mask_data

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Recorder:
    """A writer that keeps what it was given, the way the database would."""

    def __init__(self, accept: bool = True) -> None:
        self.records: list[tuple[int, LogRecord]] = []
        self.accept = accept

    def __call__(self, batch: list[LogRecord], first: int, used: int, truncated: bool) -> bool:
        self.records.extend((first + index, record) for index, record in enumerate(batch))
        return self.accept


def make_sink(writer: Recorder, **overrides: object) -> LogSink:
    options: dict[str, object] = {"secrets": (), "first_seq": 0, "used_bytes": 0,
                                  "truncated": False, "cap_bytes": 10_000}
    options.update(overrides)
    return LogSink(writer, lambda: NOW, **options)  # type: ignore[arg-type]


def test_secret_values_are_masked_in_messages_and_data() -> None:
    writer = Recorder()
    sink = make_sink(writer, secrets=("hunter2", "s3cr3t-longer"))
    sink.add("stdout", "token=hunter2 and s3cr3t-longer")
    sink.add("log", "x", "info", {"k": "hunter2", "nested": ["a s3cr3t-longer b"]})
    batch = sink.close()
    assert [r.message for r in batch.records] == ["token=*** and ***", "x"]
    assert batch.records[1].data == {"k": "***", "nested": ["a *** b"]}


def test_longer_secret_containing_a_shorter_one_is_masked_whole() -> None:
    writer = Recorder()
    sink = make_sink(writer, secrets=("abc", "abcdef"))
    sink.add("stdout", "abcdef abc")
    # Shorter first would leave "***def": part of the longer secret in clear.
    assert [r.message for r in sink.close().records] == ["*** ***"]
    assert mask("abc", ("abc",)) == "***"
    assert mask_data({"abc": 1}, ("abc",)) == {"***": 1}


def test_sequence_numbers_continue_from_the_previous_attempt() -> None:
    writer = Recorder()
    sink = make_sink(writer, first_seq=7)
    sink.add("stdout", "one")
    sink.flush()
    sink.add("stdout", "two")
    batch = sink.close()
    assert [seq for seq, _ in writer.records] == [7]
    assert batch.first_seq == 8 and [r.message for r in batch.records] == ["two"]


def test_cap_truncates_with_one_notice_and_drops_the_rest() -> None:
    writer = Recorder()
    sink = make_sink(writer, cap_bytes=100)
    for index in range(50):
        sink.add("stdout", f"line {index:02d} " + "x" * 10)
    batch = sink.close()
    messages = [r.message for r in batch.records]
    assert messages[:5] == [f"line {i:02d} " + "x" * 10 for i in range(5)]
    assert len(messages) == 6
    assert messages[-1].startswith("Log truncated")
    assert batch.truncated is True
    assert batch.used_bytes <= 100


def test_an_execution_already_truncated_stores_nothing_more() -> None:
    writer = Recorder()
    sink = make_sink(writer, truncated=True)
    sink.add("stdout", "late line")
    assert sink.close().records == ()


def test_a_fenced_writer_marks_the_sink_fenced() -> None:
    writer = Recorder(accept=False)
    sink = make_sink(writer)
    sink.add("stdout", "x")
    sink.flush()
    assert sink.fenced is True
    sink.close()
