"""A worker-only process needs a shared store or a control plane to talk to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_a_worker_only_process_on_sqlite_is_refused_with_the_way_out(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "batchyard.cli.main", "worker",
                           "--data-dir", str(tmp_path)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}, timeout=60, check=False)
    assert done.returncode == 2
    assert "BATCHYARD_DATABASE_URL" in done.stderr and "--server" in done.stderr
