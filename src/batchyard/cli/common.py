"""What every command shares: the chosen profile, ``--json``, and errors → exit codes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from batchyard.cli.exits import Exit, mapped_errors

if TYPE_CHECKING:
    from batchyard.client import Client

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
F = TypeVar("F", bound=Callable[..., Any])


class _Chosen:
    profile: str | None = None


chosen = _Chosen()


def handled(function: F) -> F:
    """Run a command: the server's errors and our own refusals become exit codes, with the
    message on stderr and no traceback."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from batchyard.cli.ui import err

        try:
            with mapped_errors(err):
                return function(*args, **kwargs)
        except Exit as exc:
            if exc.message:
                err(f"error: {exc.message}" if not exc.message.startswith("error:")
                    else exc.message)
            raise typer.Exit(exc.code) from None
        except KeyboardInterrupt:
            # A local job dies with its supervisor (its liveness pipe closes): just say so.
            err("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def client(on_request: Callable[[str, str], None] | None = None) -> Client:
    from batchyard.cli.profiles import resolve
    from batchyard.client import Client

    profile = resolve(chosen.profile)
    return Client(profile.url, profile.key, on_request=on_request)
