"""The vendor's ``helper`` module, so existing job projects run unchanged.

``from helper import LS`` then ``LS.log.info(...)``, ``LS.settings.KEY``,
``LS.db.execute_DB_query(...)`` and ``LS.email.send_email_notification(...)``:
a thin alias of ``batchyard.sdk``, which holds all the behaviour.
"""

from __future__ import annotations

from batchyard.sdk import (
    Db,
    Email,
    Log,
    MXException,
    MXInvalidDataException,
    MXTooManyParametersError,
    MXTooManyRequestsError,
    MXUnauthorizedDBAccess,
    Settings,
    db,
    email,
    log,
    settings,
)

__all__ = [
    "LS",
    "MXException",
    "MXInvalidDataException",
    "MXTooManyParametersError",
    "MXTooManyRequestsError",
    "MXUnauthorizedDBAccess",
]


class _LS:
    """The vendor's entry object: one attribute per SDK service."""

    log: Log = log
    settings: Settings = settings
    db: Db = db
    email: Email = email


LS = _LS()
