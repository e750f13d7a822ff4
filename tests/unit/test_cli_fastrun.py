"""``batchyard run``'s own parser (fastrun.py) stays the twin of typer's command."""

from __future__ import annotations

import typer

from batchyard.cli import fastrun
from batchyard.cli.main import app


def test_the_fast_parser_knows_exactly_typers_run_options() -> None:
    group = typer.main.get_command(app)
    command = group.commands["run"]  # type: ignore[attr-defined]
    flags = {flag for param in command.params for flag in (*param.opts, *param.secondary_opts)
             if flag.startswith("--") and flag != "--help"}
    assert flags == set(fastrun.OPTIONS)
    names = {param.name for param in command.params if param.name != "help"}
    assert names == {str(options["dest"]) for options in fastrun.OPTIONS.values()}


def test_anything_but_a_plain_run_is_left_to_typer() -> None:
    for argv in ([], ["jobs"], ["run", "--help"], ["run", "-h"], ["--profile", "x", "run"],
                 ["run", "--unknown"], ["run", "extra-argument"], ["run", "--timeout", "ten"],
                 ["run", "--timeout"]):
        assert fastrun.run_if_plain(argv) is None, argv
