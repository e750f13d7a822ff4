"""Profiles: where the CLI finds the server and the API key.

``$XDG_CONFIG_HOME/batchyard/config.toml`` (mode 0600) holds named profiles and the
default one; ``BATCHYARD_URL`` and ``BATCHYARD_API_KEY`` override whatever is stored.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from batchyard.cli.exits import NOT_FOUND, fail

DEFAULT_PROFILE = "default"


@dataclass(frozen=True)
class Profile:
    name: str
    url: str
    key: str


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "batchyard" / "config.toml"


def read_config() -> dict[str, object]:
    path = config_path()
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        fail(2, f"{path}: {exc}")


def _profiles(config: dict[str, object]) -> dict[str, dict[str, str]]:
    raw = config.get("profiles")
    if not isinstance(raw, dict):
        return {}
    return {str(name): {k: str(v) for k, v in body.items()} for name, body in raw.items()
            if isinstance(body, dict)}


def save_profile(name: str, url: str, key: str, make_default: bool) -> Path:
    config = read_config()
    profiles = _profiles(config)
    profiles[name] = {"url": url.rstrip("/"), "key": key}
    default = name if make_default or not config.get("default") else str(config["default"])
    lines = [f"default = {_quote(default)}", ""]
    for profile, body in sorted(profiles.items()):
        lines.append(f"[profiles.{_quote(profile)}]")
        lines.extend(f"{k} = {_quote(v)}" for k, v in sorted(body.items()))
        lines.append("")
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(".tmp")
    # Created 0600 before the key is written: never readable by others, even briefly.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines))
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)
    return path


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def profile_names() -> tuple[str | None, list[str]]:
    config = read_config()
    default = config.get("default")
    return (str(default) if default else None), sorted(_profiles(config))


def resolve(name: str | None = None) -> Profile:
    """The profile to use: ``name``, else ``BATCHYARD_PROFILE``, else the default; the
    environment's URL and key win over the stored ones."""
    config = read_config()
    wanted = name or os.environ.get("BATCHYARD_PROFILE") or str(config.get("default") or "")
    stored = _profiles(config).get(wanted or DEFAULT_PROFILE, {})
    if name and not stored:
        fail(NOT_FOUND, f"no profile named {name!r} in {config_path()}; "
                        f"run: batchyard login --profile {name} --url URL")
    url = os.environ.get("BATCHYARD_URL") or stored.get("url")
    key = os.environ.get("BATCHYARD_API_KEY") or stored.get("key")
    if not url or not key:
        fail(2, "not logged in: run `batchyard login --url URL` (or set BATCHYARD_URL and "
                "BATCHYARD_API_KEY)")
    return Profile(wanted or DEFAULT_PROFILE, url.rstrip("/"), key)


def maybe_resolve(name: str | None = None) -> Profile | None:
    """The profile when one is configured, else None (pack works offline)."""
    from batchyard.cli.exits import Exit

    try:
        return resolve(name)
    except Exit:
        return None
