"""Node ids of processes sharing a data folder (src/batchyard/nodelock.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchyard.nodelock import DataFolderBusy, take_node_slot


def test_on_sqlite_a_second_process_on_a_data_folder_is_refused(tmp_path: Path) -> None:
    first = take_node_slot(tmp_path, "node-abc", shared_store=False)
    assert first.node_id == "node-abc"
    with pytest.raises(DataFolderBusy, match="already serving the data folder"):
        take_node_slot(tmp_path, "node-abc", shared_store=False)
    first.release()
    again = take_node_slot(tmp_path, "node-abc", shared_store=False)
    assert again.node_id == "node-abc"
    again.release()


def test_on_postgresql_each_process_has_its_own_node_id_and_a_restart_takes_its_own_back(
        tmp_path: Path) -> None:
    first = take_node_slot(tmp_path, "node-abc", shared_store=True)
    second = take_node_slot(tmp_path, "node-abc", shared_store=True)
    third = take_node_slot(tmp_path, "node-abc", shared_store=True)
    assert [first.node_id, second.node_id, third.node_id] == [
        "node-abc", "node-abc-1", "node-abc-2"]
    # Owner prefixes are "<node>:": no node's prefix is another's.
    assert not f"{second.node_id}:x".startswith(f"{first.node_id}:")
    second.release()  # that process died; its restart gets its slot, so its attempts, back
    restarted = take_node_slot(tmp_path, "node-abc", shared_store=True)
    assert restarted.node_id == "node-abc-1"
    for slot in (first, third, restarted):
        slot.release()
