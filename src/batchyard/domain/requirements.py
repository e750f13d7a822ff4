"""A job's ``requirements.txt``: what we accept, and its normal form (the cache key).

Only named requirements from the server's package index are accepted: a name, extras,
version specifiers, environment markers and ``--hash`` pins. Refused, each with the
line number and why:

* option lines (``--index-url``, ``-e``, ``-r``, ``--find-links``…): they would send the
  installer to another index or into other files, and ``-e`` builds from source;
* direct references (``pkg @ https://…``, ``git+…``, bare URLs): they bypass the index,
  and archives from them are built from source by running their code on the server;
* local paths (``./pkg``, ``/opt/x.whl``, ``file:``): they name files of the server;
* ``${VAR}``: the installer would expand it from the server's environment.

The installer itself (uv, binary wheels only) is the judge of everything else, such as
a version that does not exist; this module does no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from batchyard.errors import InvalidCode

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_EXTRAS = re.compile(r"\[([^\]]*)\]")
# Version specifiers, optionally in parentheses (PEP 508): operators, versions, wildcards.
_SPECIFIER = re.compile(r"\(?\s*(?:(?:===|==|!=|~=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+\s*,?\s*)*\)?")
_HASH = re.compile(r"--hash[=\s]\s*([A-Za-z0-9]+:[A-Fa-f0-9]+)")
# A comment starts at a '#' at the line's start or after whitespace (pip's rule).
_COMMENT = re.compile(r"(^|\s)#.*$")
_SEPARATOR = re.compile(r"[-_.]+")
_LOCAL_SUFFIXES = (".whl", ".tar.gz", ".tgz", ".zip", ".tar.bz2", ".tar")


@dataclass(frozen=True)
class Requirement:
    """One accepted requirement, in normal form."""

    line: int
    name: str  # PEP 503 normalised: lower case, runs of -_. as one '-'
    extras: tuple[str, ...]
    specifier: str  # whitespace removed, e.g. ">=1.0,<2"
    marker: str  # whitespace collapsed, "" when none
    hashes: tuple[str, ...]

    def render(self) -> str:
        text = self.name
        if self.extras:
            text += f"[{','.join(self.extras)}]"
        text += self.specifier
        if self.marker:
            text += f" ; {self.marker}"
        for pin in self.hashes:
            text += f" --hash={pin}"
        return text


def parse_requirements(text: str) -> tuple[Requirement, ...]:
    """Every requirement of the file; raise ``InvalidCode`` naming the first bad line."""
    found: list[Requirement] = []
    for number, line in _logical_lines(text):
        content = _COMMENT.sub("", line).strip()
        if content:
            found.append(_parse_line(number, content))
    return tuple(found)


def normalise_requirements(text: str) -> str:
    """The file without comments, blank lines or spacing, names in normal form, sorted and
    de-duplicated: two files that ask for the same packages share one environment."""
    lines = sorted({requirement.render() for requirement in parse_requirements(text)})
    return "".join(f"{line}\n" for line in lines)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Physical lines joined where one ends in a backslash, each with its first line's number."""
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        start, prefix = pending if pending is not None else (number, "")
        if line.endswith("\\"):
            pending = (start, prefix + line[:-1])
            continue
        pending = None
        joined.append((start, prefix + line))
    if pending is not None:
        joined.append(pending)
    return joined


def _refuse(number: int, why: str) -> InvalidCode:
    return InvalidCode(f"requirements.txt line {number}: {why}", line=number)


def _parse_line(number: int, content: str) -> Requirement:
    lowered = content.lower()
    if content.startswith("-"):
        option = content.split()[0].split("=")[0]
        raise _refuse(number, f"option lines such as {option!r} are not allowed; list package "
                      "names with versions only (packages come from the server's index).")
    if "://" in content or lowered.startswith(("git+", "hg+", "svn+", "bzr+", "file:")):
        raise _refuse(number, "URLs are not allowed; name the package and its version "
                      "(e.g. requests==2.32.3), it is installed from the server's index.")
    if content.startswith((".", "/", "~", "\\")):
        raise _refuse(number, "local paths are not allowed; name the package and its version, "
                      "it is installed from the server's index.")
    if "$" in content:
        raise _refuse(number, "environment variables (${...}) are not allowed.")
    requirement, hashes = _split_hashes(number, content)
    spec, _, marker = requirement.partition(";")
    name_match = _NAME.match(spec.strip())
    if name_match is None:
        raise _refuse(number, f"{content!r} is not a package name.")
    if name_match.group(0).lower().endswith(_LOCAL_SUFFIXES):
        raise _refuse(number, "archive files are not allowed; name the package and its "
                      "version, it is installed from the server's index.")
    rest = spec.strip()[name_match.end():].strip()
    extras: tuple[str, ...] = ()
    extras_match = _EXTRAS.match(rest)
    if extras_match is not None:
        extras = _parse_extras(number, extras_match.group(1))
        rest = rest[extras_match.end():].strip()
    if rest.startswith("@"):
        raise _refuse(number, "direct references (name @ URL or path) are not allowed; name "
                      "the version instead, it is installed from the server's index.")
    if "/" in rest or "\\" in rest:
        raise _refuse(number, "local paths are not allowed; name the package and its version.")
    if _SPECIFIER.fullmatch(rest) is None:
        raise _refuse(number, f"{rest!r} is not a version specifier (e.g. ==1.2.3, >=1.0,<2).")
    if ";" in marker:
        raise _refuse(number, "more than one ';' (environment marker) on one line.")
    return Requirement(
        line=number, name=_SEPARATOR.sub("-", name_match.group(0)).lower(), extras=extras,
        specifier=re.sub(r"\s+", "", rest), marker=" ".join(marker.split()), hashes=hashes)


def _split_hashes(number: int, content: str) -> tuple[str, tuple[str, ...]]:
    """``--hash`` pins (allowed: they only make the install stricter); no other option."""
    hashes = tuple(sorted(match.lower() for match in _HASH.findall(content)))
    rest = _HASH.sub(" ", content)
    option = re.search(r"(?:^|\s)(-{1,2}[A-Za-z][\w-]*)", rest)
    if option is not None:
        raise _refuse(number, f"the option {option.group(1)!r} is not allowed after a "
                      "requirement (only --hash=...).")
    return rest.strip(), hashes


def _parse_extras(number: int, inside: str) -> tuple[str, ...]:
    extras = [item.strip() for item in inside.split(",") if item.strip()]
    for extra in extras:
        if _NAME.fullmatch(extra) is None:
            raise _refuse(number, f"{extra!r} is not a valid extra name.")
    return tuple(sorted({_SEPARATOR.sub("-", extra).lower() for extra in extras}))
