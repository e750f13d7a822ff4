"""Where the job-side runtime lives, for the supervisor that starts job code.

Everything under ``jobpath/`` runs *inside* the sandbox with only the standard
library: the bootstrap, the ``batchyard.sdk`` job SDK and the vendor-compatible
``helper`` module. The server never imports those files; it only needs their
location, to put on the child's command line.
"""

from __future__ import annotations

from pathlib import Path

JOBPATH: Path = Path(__file__).resolve().parent / "jobpath"
BOOTSTRAP: Path = JOBPATH / "_batchyard_boot.py"
