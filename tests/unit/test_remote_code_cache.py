"""The remote worker's code cache: slots that evict at once never fail each other."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from batchyard.runtime.port_remote import CODE_CACHE_FILES, RemotePort


def test_slots_evicting_at_once_keep_the_newest_zips_and_raise_nothing(tmp_path: Path) -> None:
    port = RemotePort("http://127.0.0.1:9", "unused", tmp_path / "cache")
    try:
        for round_ in range(5):
            for number in range(CODE_CACHE_FILES + 200):
                zipped = tmp_path / "cache" / f"{round_:02d}{number:062d}.zip"
                zipped.write_bytes(b"z")
                os.utime(zipped, (number, number))
            start = threading.Barrier(8)

            def evict(_: int, start: threading.Barrier = start) -> None:
                start.wait()
                port._evict()

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(evict, range(8)))  # re-raises what a slot raised
            kept = sorted(int(p.stem[2:]) for p in (tmp_path / "cache").glob("*.zip"))
            assert kept == list(range(200, CODE_CACHE_FILES + 200))
            for leftover in (tmp_path / "cache").glob("*.zip"):
                leftover.unlink()
    finally:
        port.close()
