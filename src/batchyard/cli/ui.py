"""Terminal output: log lines with levels and colours, tables, bars, and ``--json``."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

_LEVEL_STYLE = {"debug": "dim", "info": "cyan", "warn": "yellow", "error": "red",
                "fatal": "bold red"}
_STATUS_STYLE = {"succeeded": "green", "failed": "red", "timed_out": "red",
                 "cancelled": "yellow", "blocked": "yellow", "missed": "yellow",
                 "running": "cyan", "queued": "dim", "published": "green",
                 "draft": "dim", "unpublished": "yellow"}


@functools.cache
def _console(stderr: bool = False) -> Any:
    # One console per stream: a chatty job prints thousands of lines.
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
    sys.stdout.flush()


def say(message: str, style: str | None = None) -> None:
    _console().print(message, style=style, markup=False)


def err(message: str) -> None:
    _console(stderr=True).print(message, style="red", markup=False)


def status_text(status: str) -> Any:
    from rich.text import Text

    return Text(status, style=_STATUS_STYLE.get(status, ""))


def log_line(item: dict[str, Any]) -> None:
    """One log record: time, stream or level, message and data, coloured by level."""
    from rich.text import Text

    at = str(item.get("at") or "")
    clock = at[11:23] if len(at) >= 23 else at
    stream = item.get("stream")
    text = Text(f"{clock} ", style="dim")
    if stream == "log":
        level = str(item.get("level") or "info")
        message = str(item.get("message", ""))
        style = "dim" if message.startswith("batchyard:") else _LEVEL_STYLE.get(level, "")
        text.append(f"{level.upper():5} ", style=_LEVEL_STYLE.get(level, ""))
        text.append(message, style=style if style == "dim" else None)
        data = item.get("data")
        if data not in (None, {}, []):
            text.append(" " + json.dumps(data, default=str), style="dim")
    else:
        text.append(f"{stream!s:5} ", style="red" if stream == "stderr" else "dim")
        text.append(str(item.get("message", "")), style="red" if stream == "stderr" else None)
    _console().print(text)


def table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    from rich.table import Table

    grid = Table(*columns, title=title, show_lines=False, header_style="bold")
    for row in rows:
        grid.add_row(*[cell if not isinstance(cell, str | int | float) or cell is None
                       else str(cell) for cell in row])
    _console().print(grid)


def bar(label: str, used: float, limit: float, unit: str = "") -> None:
    from rich.text import Text

    width = 30
    share = 0.0 if not limit else min(1.0, used / limit)
    filled = round(share * width)
    style = "red" if share >= 1 else "yellow" if share >= 0.8 else "green"
    text = Text(f"{label:24} ")
    text.append("█" * filled, style=style)
    text.append("░" * (width - filled), style="dim")
    text.append(f" {used:g}/{limit:g}{unit}")
    _console().print(text)
