"""``login`` (the vendor's ``configure``) and ``whoami``."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Annotated

import typer

from batchyard.cli import ui
from batchyard.cli.common import JsonOption, chosen, client, handled
from batchyard.cli.exits import USAGE, fail


@handled
def login(url: Annotated[str, typer.Option(help="The server's address.")],
          key_file: Annotated[Path | None, typer.Option(
              help="Read the API key from this file instead of asking.")] = None,
          profile: Annotated[str | None, typer.Option(
              help="Profile name (default: 'default').")] = None,
          make_default: Annotated[bool, typer.Option(
              "--default/--no-default", help="Make it the default profile.")] = True,
          json_out: JsonOption = False) -> None:
    """Store a server URL and API key as a profile (config.toml, mode 0600); checks them."""
    from batchyard.cli.profiles import save_profile
    from batchyard.client import Client

    if key_file is not None:
        key = key_file.read_text().strip()
    elif sys.stdin.isatty():
        key = getpass.getpass("API key (not shown): ").strip()
    else:
        key = sys.stdin.readline().strip()
    if not key:
        fail(USAGE, "no API key given")
    with Client(url, key) as checking:
        me = checking.me()
    name = profile or chosen.profile or "default"
    path = save_profile(name, url, key, make_default)
    if json_out:
        ui.emit_json({"profile": name, "config": str(path), **me})
    else:
        ui.say(f"Logged in to {url} as {me['user']['email']} ({me['user']['role']}) of "
               f"{me['account']['name']}; profile {name!r} saved in {path}")


@handled
def whoami(json_out: JsonOption = False) -> None:
    """Who the current profile's key acts as, and on which server."""
    from batchyard.cli.profiles import resolve

    profile = resolve(chosen.profile)
    with client() as api:
        me = api.me()
    if json_out:
        ui.emit_json({"profile": profile.name, "url": profile.url, **me})
        return
    ui.say(f"{me['user']['email']} ({me['user']['role']}) of account {me['account']['name']} "
           f"at {profile.url} (profile {profile.name})")
