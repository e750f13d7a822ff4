"""What the client raises: the server's answer as it is, or why there was none."""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base of everything the client raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unreachable(ClientError):
    """No answer from the server (refused, timed out, name unknown)."""


class ApiError(ClientError):
    """A non-2xx answer: ``status``, the server's ``code`` and ``message``, extra fields."""

    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details or {}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
