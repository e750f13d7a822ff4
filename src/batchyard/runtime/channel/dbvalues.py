"""Database rows as JSON for the job, within the reply's row and byte caps.

Rows cross the channel as JSON, so every driver value becomes a JSON value:

- ``Decimal`` → ``int`` when it has no fractional digits (``SUM()`` of integers on
  MySQL, ``NUMERIC(10, 0)``), else ``float`` (arithmetic keeps working; digits past a
  float's ~16 are lost: cast to text in the SQL where every digit matters);
- ``datetime``, ``date``, ``time`` → ISO 8601 text (with the offset when it has one);
- ``timedelta`` (PostgreSQL ``interval``, MySQL ``TIME``) → seconds as a ``float``;
- ``bytes`` → base64 text; ``UUID``, network addresses and anything else → ``str``;
- arrays and JSON documents → lists and objects, converted the same way inside.

Two columns of the same name (``select a.id, b.id``) would collapse into one key;
the later ones are renamed ``id_2``, ``id_3`` instead, so no value is silently lost.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

Row = dict[str, Any]


class ReplyTooLarge(Exception):
    """The query's rows exceed what one reply may carry."""


def to_json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_json_value(item) for item in value]
    return str(value)


def _decimal(value: Decimal) -> int | float | str:
    if not value.is_finite():
        return float(value) if not value.is_snan() else "NaN"
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= 0:
        return int(value)
    return float(value)


def unique_columns(names: Iterable[str]) -> list[str]:
    """Column names as row keys, a repeated name suffixed ``_2``, ``_3``..."""
    seen: set[str] = set()
    result = []
    for name in names:
        candidate, number = name, 1
        while candidate in seen:
            number += 1
            candidate = f"{name}_{number}"
        seen.add(candidate)
        result.append(candidate)
    return result


class RowBudget:
    """Counts the rows and JSON bytes of one reply (every statement of a request).

    Checked row by row while the rows are fetched, so a query over the cap stops
    being read at the cap instead of being loaded whole into the server first.
    """

    def __init__(self, max_rows: int, max_bytes: int) -> None:
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.rows = 0
        self.bytes = 0

    def row(self, columns: Sequence[str], values: Sequence[Any]) -> Row:
        self.rows += 1
        if self.rows > self.max_rows:
            raise ReplyTooLarge(
                f"The query returned more than {self.max_rows} rows, the most one query may "
                "return; select fewer rows (LIMIT, a narrower WHERE) or read them in pages.")
        row = {column: to_json_value(value) for column, value in zip(columns, values,
                                                                     strict=True)}
        self.bytes += len(json.dumps(row, default=str))
        if self.bytes > self.max_bytes:
            raise ReplyTooLarge(
                f"The query's rows exceed {self.max_bytes} bytes as JSON, the most one query "
                "may return; select fewer columns or rows, or read them in pages.")
        return row
