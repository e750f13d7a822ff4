"""The disk an attempt's folders may hold: measured while it runs, enforced by a kill."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchyard.runtime.box import diskwatch
from batchyard.runtime.box.diskwatch import DiskUsage, describe_violation, disk_usage

MIB = 1024 * 1024


def test_usage_counts_allocated_blocks_in_nested_folders_without_following_links(
        tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "data").write_bytes(os.urandom(3 * MIB))
    (tmp_path / "small").write_bytes(b"x")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "big").write_bytes(os.urandom(5 * MIB))
    (tmp_path / "link").symlink_to(outside)
    usage = disk_usage([tmp_path])
    assert 3 * MIB <= usage.bytes < 3 * MIB + 64 * 1024
    assert usage.entries == 5  # a, b, data, small, link


def test_a_sparse_file_counts_what_it_takes_not_its_length(tmp_path: Path) -> None:
    with open(tmp_path / "sparse", "wb") as handle:
        handle.truncate(1024 * MIB)
    assert disk_usage([tmp_path]).bytes < MIB


def test_the_walk_stops_at_its_entry_bound(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diskwatch, "MAX_ENTRIES", 50)
    for n in range(80):
        (tmp_path / str(n)).touch()
    usage = disk_usage([tmp_path])
    assert usage.entries == 51 and usage.entries_exceeded
    assert describe_violation(usage, 0) is not None


def test_violation_names_the_limit_only_past_it() -> None:
    assert describe_violation(DiskUsage(2 * MIB, 3), 2 * MIB) is None
    assert describe_violation(DiskUsage(3 * MIB, 3), 0) is None  # no limit configured
    message = describe_violation(DiskUsage(3 * MIB, 3), 2 * MIB)
    assert message == ("disk_limit_exceeded: the attempt's folders hold 3 MiB, over the "
                       "limit of 2 MiB")


def test_a_deleted_file_still_held_open_counts_for_the_process_holding_it(
        tmp_path: Path) -> None:
    held = open(tmp_path / "scratch", "wb")  # noqa: SIM115
    try:
        held.write(os.urandom(3 * MIB))
        held.flush()
        os.unlink(tmp_path / "scratch")
        assert disk_usage([tmp_path]).bytes < MIB  # invisible to the walk alone
        assert disk_usage([tmp_path], [os.getpid()]).bytes >= 3 * MIB
        # Only files under the watched folders count, not whatever else the process holds.
        assert disk_usage([tmp_path / "elsewhere"], [os.getpid()]).bytes == 0
    finally:
        held.close()


def test_a_folder_the_walk_is_refused_is_a_violation(tmp_path: Path) -> None:
    # Root reads any folder whatever its mode; a file where a folder should be is refused
    # the same way (an OSError other than "not found") and must not be skipped silently.
    (tmp_path / "code").write_text("not a folder")
    usage = disk_usage([tmp_path / "code"])
    message = describe_violation(usage, 10 * MIB)
    assert usage.unreadable == str(tmp_path / "code")
    assert message is not None and message.startswith("disk_limit_exceeded:")


def test_a_file_with_several_links_counts_once(tmp_path: Path) -> None:
    (tmp_path / "data").write_bytes(os.urandom(2 * MIB))
    for n in range(4):
        os.link(tmp_path / "data", tmp_path / f"link{n}")
    assert 2 * MIB <= disk_usage([tmp_path]).bytes < 2 * MIB + 64 * 1024


def test_an_open_file_whose_name_says_deleted_but_is_not_counts_once(tmp_path: Path) -> None:
    path = tmp_path / "x (deleted)"
    with open(path, "wb") as held:
        held.write(os.urandom(2 * MIB))
        held.flush()
        assert disk_usage([tmp_path], [os.getpid()]).bytes < 2 * MIB + 64 * 1024
