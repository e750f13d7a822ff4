"""A typed client of the batchyard HTTP API (``../shared/API.md``), used by the CLI.

It imports nothing of the server: ``pip install batchyard`` users can script the
platform with it (``Client(url, key).jobs()``). Every non-2xx answer raises an
``ApiError`` carrying the server's own ``code`` and ``message``; a server that cannot
be reached raises ``Unreachable``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batchyard.client.errors import ApiError, ClientError, Unreachable
from batchyard.client.types import (
    Artifact,
    CodeVersion,
    Execution,
    Job,
    JobItem,
    LogLine,
    Me,
    Variable,
)

if TYPE_CHECKING:
    from batchyard.client.client import Client, LogEvent


def __getattr__(name: str) -> Any:
    # httpx is imported with the client itself, not with its errors and types: a command
    # that only maps errors (``batchyard run``) never pays for it.
    if name in ("Client", "LogEvent"):
        from batchyard.client import client

        return getattr(client, name)
    raise AttributeError(f"module 'batchyard.client' has no attribute {name!r}")


__all__ = [
    "ApiError",
    "Artifact",
    "Client",
    "ClientError",
    "CodeVersion",
    "Execution",
    "Job",
    "JobItem",
    "LogEvent",
    "LogLine",
    "Me",
    "Unreachable",
    "Variable",
]
