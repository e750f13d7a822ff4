"""Path and query parameters bounded where they are declared: a number the database
cannot hold, a time that is not a time, a page larger than every list allows are
refused (422) or not found (404), never passed on to fail as a 500."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import BeforeValidator

# Every stored counter (versions, log sequence numbers, audit ids) fits in 32 bits.
MAX_NUMBER = 2**31 - 1
MAX_PAGE = 500


def _iso_time(value: object) -> object:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 time such as 2026-01-31T12:00:00Z")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be an ISO 8601 time such as 2026-01-31T12:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# Lax pydantic reads "0.5" as seconds after 1970; a query's time must be written as one.
IsoTime = Annotated[datetime, BeforeValidator(_iso_time)]

