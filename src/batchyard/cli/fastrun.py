"""``batchyard run`` without building the typer command tree.

Typer (0.29) builds a pydantic TypeAdapter for every parameter on each invocation: 0.2 to
0.5 s on this machine, more than the whole budget from ``batchyard run`` to the job's
``main()`` (bench/devkit_run.py). A plain ``batchyard run ...`` is therefore parsed here
with argparse and handed to the same ``kit.run``; anything else (``--help``, a global
option, an argument argparse does not know) goes to typer as usual, which also words the
usage errors. tests/unit/test_cli_fastrun.py keeps these options equal to typer's.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

# Option name -> (argparse keyword arguments); the same flags as kit.run's parameters.
OPTIONS: dict[str, dict[str, object]] = {
    "--event": {"dest": "event", "default": None},
    "--var": {"dest": "var", "action": "append", "default": None},
    "--timeout": {"dest": "timeout", "type": float, "default": None},
    "--sandbox": {"dest": "sandbox", "action": "store_true", "default": False},
    "--no-sandbox": {"dest": "sandbox", "action": "store_false"},
    "--db": {"dest": "db", "action": "append", "default": None},
    "--json": {"dest": "json_out", "action": "store_true", "default": False},
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchyard run", add_help=False,
                                     exit_on_error=False, allow_abbrev=False)
    for flag, options in OPTIONS.items():
        parser.add_argument(flag, **options)  # type: ignore[arg-type]
    return parser


def run_if_plain(argv: Sequence[str]) -> int | None:
    """The exit status of a plain ``run`` command line, or None to let typer handle it."""
    if not argv or argv[0] != "run" or any(a in ("-h", "--help") for a in argv):
        return None
    try:
        parsed, unknown = _parser().parse_known_args(list(argv[1:]))
    except (argparse.ArgumentError, SystemExit):
        return None
    if unknown:
        return None
    from typer import Exit

    from batchyard.cli import kit

    try:
        kit.run(**vars(parsed))
    except Exit as exc:
        return int(exc.exit_code)
    return 0
