"""The single exception root of batchyard.

Every error a user can cause carries a stable snake_case ``code`` and an HTTP
status, so the API maps all of them in one place. A class's docstring is its
default message.
"""

from __future__ import annotations

import secrets
from typing import Any


def new_reference() -> str:
    """An id that ties what a tenant is told about an internal error to the server log."""
    return "err_" + secrets.token_hex(6)


def internal_error_message(reference: str) -> str:
    """What a tenant sees of an error of ours: never its text, which may name host paths."""
    return (f"An internal error occurred (reference {reference}); the operator's log has "
            "the details.")


class BatchyardError(Exception):
    """Something went wrong."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str | None = None, **extra: Any) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.extra = extra
        super().__init__(self.message)


class InvalidInput(BatchyardError):
    """The request is not valid."""

    code = "invalid_input"
    status = 422


class InvalidCode(InvalidInput):
    """The uploaded code is not a valid job package."""

    code = "invalid_code"


class CodeTooLarge(BatchyardError):
    """The uploaded code is larger than the plan allows."""

    code = "code_too_large"
    status = 413


class NotAuthenticated(BatchyardError):
    """Missing or invalid credentials."""

    code = "not_authenticated"
    status = 401


class Forbidden(BatchyardError):
    """Your role does not allow this."""

    code = "forbidden"
    status = 403


class FeatureDisabled(Forbidden):
    """Batch jobs are not enabled for this account; ask the operator to enable them."""

    code = "feature_disabled"


class NotFound(BatchyardError):
    """Not found."""

    code = "not_found"
    status = 404


class Conflict(BatchyardError):
    """The resource is not in a state that allows this."""

    code = "conflict"
    status = 409


class NotPublishable(Conflict):
    """The job needs an uploaded code version and a schedule before it can be published."""

    code = "not_publishable"


class LimitExceeded(BatchyardError):
    """A plan limit was reached."""

    code = "limit_exceeded"
    status = 429


class Overloaded(BatchyardError):
    """The server is busy; try again shortly."""

    code = "overloaded"
    status = 503
