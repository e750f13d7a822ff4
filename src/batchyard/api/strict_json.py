"""JSON inputs within the API's shape limits (API.md, conventions).

Every JSON body is parsed here: at most ``MAX_DEPTH`` levels deep, no ``NaN``,
``Infinity`` or numbers that overflow to them, no duplicate keys (which value
would win is a parser's whim), and a parse error says where, in words.
Depth is also what keeps a stored value serializable later: pydantic refuses to
serialize past a few hundred levels, and the standard parser recurses on the stack.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

MAX_DEPTH = 64
# Shown instead of what lies deeper than MAX_DEPTH in a value stored before the limit.
TOO_DEEP_MARKER = f"(not shown: nested deeper than {MAX_DEPTH} levels)"


class RequestRefused(HTTPException):
    """An input refused before any route code ran, with the API's error code.

    A FastAPI ``HTTPException`` because FastAPI turns any other exception raised while
    it reads a body into a bare 400.
    """

    def __init__(self, status: int, code: str, message: str, *,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.code = code
        self.message = message
        self.extra = extra


class _Refusal(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refusal(f"the key {key!r} appears twice in one object")
            seen.add(key)
    return value


def _constant(name: str) -> Any:
    raise _Refusal(f"{name} is not a JSON number")


def _float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _Refusal(f"the number {text[:40]} is too large")
    return number


def depth_of(value: Any, stop_at: int = MAX_DEPTH + 1) -> int:
    """Levels of arrays and objects in ``value`` (a scalar is 0), counted up to ``stop_at``;
    iterative, so a value too deep for the stack is measured too."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        if deepest >= stop_at:
            return deepest
        stack.extend((child, level) for child in children)
    return deepest


def parse_json(raw: bytes, what: str = "The request body") -> Any:
    """``raw`` as a JSON value within the shape limits, or ``RequestRefused`` (422)."""
    try:
        value = json.loads(raw, object_pairs_hook=_pairs, parse_constant=_constant,
                           parse_float=_float)
    except json.JSONDecodeError as exc:
        raise RequestRefused(422, "invalid_input", f"{what} is not valid JSON: {exc.msg} at "
                             f"line {exc.lineno}, column {exc.colno} (character {exc.pos}).",
                             field="body", line=exc.lineno, column=exc.colno) from None
    except RecursionError:
        raise _too_deep(what) from None
    except _Refusal as exc:
        raise RequestRefused(422, "invalid_input", f"{what} is refused: {exc.message}.",
                             field="body") from None
    except (ValueError, UnicodeDecodeError) as exc:  # int digits limit, bad encoding
        raise RequestRefused(422, "invalid_input", f"{what} is not valid JSON: {exc}.",
                             field="body") from None
    # Cheap bound first: a value cannot be deeper than it has brackets.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and depth_of(value) > MAX_DEPTH:
        raise _too_deep(what)
    return value


def _too_deep(what: str) -> RequestRefused:
    return RequestRefused(422, "invalid_input", f"{what} is nested deeper than the "
                          f"{MAX_DEPTH} levels allowed.", field="body", limit=MAX_DEPTH)


def shown(value: Any) -> Any:
    """``value`` safe to serialize: what lies deeper than MAX_DEPTH is replaced by a
    marker (values stored before the limit existed)."""
    if depth_of(value) <= MAX_DEPTH:
        return value
    return _cut(value, MAX_DEPTH)


def _cut(value: Any, levels: int) -> Any:
    # Iterative copy: the value may be deeper than the stack allows.
    if not isinstance(value, dict | list):
        return value
    root: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any, int]] = [(value, root, 1)]
    while stack:
        source, target, level = stack.pop()
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, child in items:
            if isinstance(child, dict | list):
                if level >= levels:
                    copy: Any = TOO_DEEP_MARKER
                else:
                    copy = {} if isinstance(child, dict) else []
                    stack.append((child, copy, level + 1))
            else:
                copy = child
            if isinstance(target, dict):
                target[key] = copy
            else:
                target.append(copy)
    return root


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    """A route whose declared JSON body is parsed by ``parse_json``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict
