"""Exit codes of every command (documented in the README), and the one place that maps
the client's errors to them."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

OK = 0
JOB_FAILED = 1
USAGE = 2
LIMIT = 3
NOT_FOUND = 4
UNREACHABLE = 5


class Exit(Exception):
    """Leave with ``code`` after printing ``message`` (on stderr) when there is one."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def fail(code: int, message: str) -> NoReturn:
    raise Exit(code, message)


def code_for_status(status: int) -> int:
    if status in (401, 403, 404):
        return NOT_FOUND
    if status in (413, 429):
        return LIMIT
    if status >= 500:
        return UNREACHABLE
    return USAGE


@contextmanager
def mapped_errors(echo: Callable[[str], None] | None = None) -> Iterator[None]:
    """The server's error code and message as they are, with the documented exit code."""
    from batchyard.client.errors import ApiError, Unreachable

    def say(text: str) -> None:
        (echo or (lambda t: print(t, file=sys.stderr)))(text)

    try:
        yield
    except ApiError as exc:
        say(f"error: {exc.code}: {exc.message} (HTTP {exc.status})")
        raise Exit(code_for_status(exc.status)) from None
    except Unreachable as exc:
        say(f"error: {exc.message}")
        raise Exit(UNREACHABLE) from None
