"""The vendor's ``MXException`` module, so ``from MXException import ...`` keeps working.

The vendor's local kit keeps ``helper.py`` and ``MXException.py`` beside its runner,
outside the ``src/`` folder that is packed, and both are importable from job code
there. The classes are ``batchyard.sdk``'s own (``helper`` exposes the same ones).
"""

from __future__ import annotations

from batchyard.sdk import (
    MXException,
    MXInvalidDataException,
    MXTooManyParametersError,
    MXTooManyRequestsError,
    MXUnauthorizedDBAccess,
)

__all__ = [
    "MXException",
    "MXInvalidDataException",
    "MXTooManyParametersError",
    "MXTooManyRequestsError",
    "MXUnauthorizedDBAccess",
]
