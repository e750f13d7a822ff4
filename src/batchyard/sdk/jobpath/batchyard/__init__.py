"""The job-side ``batchyard`` package, as job code sees it inside the sandbox.

It deliberately shares its name with the server's package: job code writes
``from batchyard.sdk import log`` in both the platform and the local kit, while
nothing of the server (its configuration, models, secrets) is importable here.
Only the standard library may be imported in this package.
"""

from __future__ import annotations

from batchyard import sdk

__all__ = ["sdk"]
