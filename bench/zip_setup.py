"""Unpacking a code zip and setting up an attempt's folder, for 10, 1,000 and 2,000 files.

Target (issue 9): linear in the number of files, 2,000 files in under 1 s. Printed: the
unpack alone (validate + decompress every entry, in memory), the old way of unpacking
(``read_member`` per entry, each re-opening the archive: quadratic), and the whole
workspace setup (folders and files written) on a disk folder and, where there is one,
on a tmpfs: creating files is the disk's cost, and on a loaded shared disk it dominates.
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

from batchyard.domain import codezip
from batchyard.runtime.box.workspace import create_workspace

SIZES = (10, 1000, 2000)
ROUNDS = 3


def package(files: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("main.py", "def main():\n    pass\n")
        for number in range(files - 1):
            archive.writestr(f"pkg/m{number // 100}/f{number}.py", f"X = {number}\n" * 5)
    return buffer.getvalue()


def setup_seconds(code: bytes, base: Path) -> float:
    started = time.perf_counter()
    workspace = create_workspace(base, "exe_bench", 1, code)
    took = time.perf_counter() - started
    workspace.remove()
    return took


def unpack_seconds(code: bytes) -> float:
    started = time.perf_counter()
    manifest = codezip.inspect_code_zip(code, len(code))
    for _ in codezip.read_members(code, manifest):
        pass
    return time.perf_counter() - started


def per_entry_seconds(code: bytes) -> float:
    started = time.perf_counter()
    manifest = codezip.inspect_code_zip(code, len(code))
    for entry in manifest.entries:
        codezip.read_member(code, manifest, entry, entry.size)
    return time.perf_counter() - started


def main() -> None:
    folders = [("disk", Path(tempfile.gettempdir()))]
    if Path("/dev/shm").is_dir():
        folders.append(("tmpfs", Path("/dev/shm")))
    for files in SIZES:
        code = package(files)
        unpack = statistics.median(unpack_seconds(code) for _ in range(ROUNDS))
        figures = [f"unpack {unpack:.3f} s ({unpack / files * 1e6:.0f} us/file)"]
        if files <= 1000:  # quadratic: 2,000 files take minutes
            figures.append(f"old per-entry unpack {per_entry_seconds(code):.3f} s")
        for label, where in folders:
            with tempfile.TemporaryDirectory(prefix="batchyard-zip-bench-", dir=where) as tmp:
                setup = statistics.median(setup_seconds(code, Path(tmp))
                                          for _ in range(ROUNDS))
            figures.append(f"workspace setup on {label} {setup:.3f} s")
        print(f"zip setup, {files:>4} files ({len(code) // 1024} KiB): " + "; ".join(figures)
              + ("  (target: < 1 s)" if files == 2000 else ""))


if __name__ == "__main__":
    main()
