"""Vetting an uploaded job package: a zip archive held in memory as bytes.

``inspect_code_zip`` decides whether an upload is a job package we are willing
to extract, and returns a ``CodeManifest`` saying what to extract and where.
It never decompresses anything except ``main.py`` and ``requirements.txt``,
and those only through ``read_member``, which is bounded.

Decisions worth knowing:

* Every entry is vetted (names, types, encryption, sizes), even the ones we
  skip, so nothing dangerous sits in an archive we call valid.
* macOS junk (anything under ``__MACOSX/`` and any ``.DS_Store``) is skipped
  wherever it sits and is never extracted; it does not count as a top-level
  folder when looking for ``main.py``.
* ``main.py`` is looked for at the root, else in the single top-level folder
  (then ``prefix`` is that folder and its name is stripped from targets). A
  folder next to other real files is not "single": we would rather refuse
  than silently drop a person's files.
* ``main`` must be bound last at module top level by a plain ``def``;
  definitions nested in ``if``/``try`` blocks are not looked at.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import lzma
import re
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from batchyard.domain.requirements import parse_requirements
from batchyard.errors import CodeTooLarge, InvalidCode

MIB = 1024 * 1024
# Generous for hand-written code, and keeps ast.parse cheap.
MAIN_PY_MAX_BYTES = 1 * MIB
# Hash-pinned requirement files of large projects reach a few hundred KiB.
REQUIREMENTS_MAX_BYTES = 1 * MIB
# Small files compress absurdly well for innocent reasons (a few zeros).
BOMB_RATIO_MIN_ENTRY_BYTES = 1 * MIB
# A path component longer than this cannot be created on common file systems.
MAX_COMPONENT_BYTES = 255
# Far below PATH_MAX (4,096) once the workspace folder is prepended, so extraction never
# meets ENAMETOOLONG; no hand-written project comes near it.
MAX_PATH_BYTES = 1024

_LISTING_CAP = 10
_READ_CHUNK = 64 * 1024
_ENCRYPTED_FLAG = 0x1
_SUPPORTED_METHODS = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)
_DRIVE = re.compile(r"^[A-Za-z]:")
# What zipfile and the decompressors raise on damaged or crafted input.
_OPEN_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    OSError,
    ValueError,
    struct.error,
    # "zip file version 6.4": an entry needing a newer version, raised while listing.
    NotImplementedError,
)
_READ_ERRORS = (*_OPEN_ERRORS, RuntimeError, zlib.error, lzma.LZMAError)
_NOT_A_ZIP = (
    "The upload is not a zip file (or it is damaged). "
    "Upload a .zip archive with main.py at its root."
)
_NO_MAIN_FUNCTION = "main.py must define a function main(event) or main() at its top level."


@dataclass(frozen=True)
class ZipLimits:
    max_files: int = 2000
    max_uncompressed_bytes: int = 64 * 1024 * 1024
    # Per-entry compression ratio above which we call it a bomb (only for
    # entries larger than BOMB_RATIO_MIN_ENTRY_BYTES uncompressed).
    max_ratio: int = 200


DEFAULT_LIMITS = ZipLimits()


@dataclass(frozen=True)
class CodeEntry:
    name: str  # path inside the zip, as stored
    target: str  # normalised relative POSIX path to extract to, prefix stripped
    size: int  # declared uncompressed size


@dataclass(frozen=True)
class CodeManifest:
    entries: tuple[CodeEntry, ...]  # files only; directories and junk omitted
    prefix: str  # "" or "folder/" when main.py sits in the single top-level folder
    has_requirements: bool
    requirements: str | None  # text of requirements.txt, if present
    main_parameters: int  # 0: call main(); 1: call main(event)
    total_size: int  # sum of the declared sizes of entries


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]  # normalised path components
    is_dir: bool

    @property
    def path(self) -> str:
        return "/".join(self.parts)

    @property
    def is_junk(self) -> bool:
        return bool(self.parts) and (self.parts[0] == "__MACOSX" or self.parts[-1] == ".DS_Store")


def inspect_code_zip(
    data: bytes, max_size_bytes: int, limits: ZipLimits = DEFAULT_LIMITS
) -> CodeManifest:
    """Vet an uploaded zip and describe what to extract; raise on anything unsafe."""
    if len(data) > max_size_bytes:
        raise CodeTooLarge(
            _too_large_message(len(data), max_size_bytes), size=len(data), limit=max_size_bytes
        )
    with _open_zip(data) as archive:
        return _inspect(archive, limits)


def _inspect(archive: zipfile.ZipFile, limits: ZipLimits) -> CodeManifest:
    infos = archive.infolist()
    _check_bounds(infos, limits)
    members = [_vet(info) for info in infos]
    prefix = _find_prefix(members)
    entries = _select_entries(members, prefix)
    manifest = CodeManifest(
        entries=entries,
        prefix=prefix,
        has_requirements=False,
        requirements=None,
        main_parameters=0,
        total_size=sum(entry.size for entry in entries),
    )
    by_target = {entry.target: entry for entry in entries}
    main_source = _read_entry(archive, by_target["main.py"], MAIN_PY_MAX_BYTES)
    main_parameters = _main_parameters(_parse_main(main_source))
    requirements = None
    if "requirements.txt" in by_target:
        raw = _read_entry(archive, by_target["requirements.txt"], REQUIREMENTS_MAX_BYTES)
        try:
            requirements = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise InvalidCode(
                f"requirements.txt line {line}: not valid UTF-8 text; save it as UTF-8."
            ) from exc
        # Option lines, URLs and paths are refused here, at upload (domain/requirements.py).
        parse_requirements(requirements)
    return dataclasses.replace(
        manifest,
        has_requirements=requirements is not None,
        requirements=requirements,
        main_parameters=main_parameters,
    )


def read_member(data: bytes, manifest: CodeManifest, entry: CodeEntry, max_bytes: int) -> bytes:
    """Decompress one entry, never producing more than it declares or max_bytes."""
    if entry not in manifest.entries:
        raise ValueError(f"{entry.name!r} is not an entry of this manifest")
    with _open_zip(data) as archive:
        return _read_entry(archive, entry, max_bytes)


def read_members(data: bytes, manifest: CodeManifest) -> Iterator[tuple[CodeEntry, bytes]]:
    """Every entry of the manifest with its content, in one pass over one open archive.

    Opening the archive parses its whole central directory: doing it once per entry
    (``read_member`` in a loop) made extraction quadratic in the number of files.
    """
    with _open_zip(data) as archive:
        for entry in manifest.entries:
            yield entry, _read_entry(archive, entry, entry.size)


def _read_entry(archive: zipfile.ZipFile, entry: CodeEntry, max_bytes: int) -> bytes:
    if entry.size > max_bytes:
        raise InvalidCode(
            f"{entry.target} is {_human(entry.size)}; at most {_human(max_bytes)} "
            "is allowed for it.",
            entry=entry.name,
        )
    try:
        info = archive.getinfo(entry.name)
    except KeyError:
        raise ValueError(f"{entry.name!r} is not in this zip") from None
    if info.file_size != entry.size:
        raise ValueError(f"{entry.name!r} does not match this zip")
    chunks: list[bytes] = []
    total = 0
    try:
        with archive.open(info) as member:
            while chunk := member.read(min(_READ_CHUNK, entry.size - total + 1)):
                total += len(chunk)
                # zipfile stops at the declared size today; we do not rely on it.
                if total > entry.size:
                    raise InvalidCode(
                        f"Entry {entry.name!r} holds more data than its header "
                        f"declares ({entry.size} bytes); the zip is damaged "
                        "or crafted.",
                        entry=entry.name,
                    )
                chunks.append(chunk)
    except _READ_ERRORS as exc:
        raise InvalidCode(
            f"Entry {entry.name!r} could not be read: {exc}. "
            "The zip is damaged; create it again.",
            entry=entry.name,
        ) from exc
    # A stored entry whose declared size outgrows its data ends early without an error.
    if total != entry.size:
        raise InvalidCode(
            f"Entry {entry.name!r} holds less data than its header declares "
            f"({entry.size} bytes); the zip is damaged or crafted.",
            entry=entry.name,
        )
    return b"".join(chunks)


def _open_zip(data: bytes) -> zipfile.ZipFile:
    if not data:
        raise InvalidCode(_NOT_A_ZIP)
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except _OPEN_ERRORS as exc:
        raise InvalidCode(_NOT_A_ZIP) from exc


def _check_bounds(infos: list[zipfile.ZipInfo], limits: ZipLimits) -> None:
    if len(infos) > limits.max_files:
        raise InvalidCode(
            f"The zip holds {len(infos)} entries; at most {limits.max_files} are allowed.",
            entries=len(infos),
            limit=limits.max_files,
        )
    expanded = sum(info.file_size for info in infos)
    if expanded > limits.max_uncompressed_bytes:
        raise InvalidCode(
            f"The zip would expand to {_human(expanded)}, more than the "
            f"{_human(limits.max_uncompressed_bytes)} allowed; it is refused "
            "as a possible zip bomb.",
            size=expanded,
            limit=limits.max_uncompressed_bytes,
        )
    for info in infos:
        if (
            info.file_size > BOMB_RATIO_MIN_ENTRY_BYTES
            and info.file_size > limits.max_ratio * info.compress_size
        ):
            ratio = info.file_size // max(info.compress_size, 1)
            raise InvalidCode(
                f"Entry {info.filename!r} expands {ratio}:1 "
                f"({_human(info.compress_size)} to {_human(info.file_size)}), "
                f"more than the {limits.max_ratio}:1 allowed; it is refused as a "
                "possible zip bomb.",
                entry=info.filename,
            )


def _vet(info: zipfile.ZipInfo) -> _Member:
    name = info.orig_filename  # zipfile cuts .filename at a NUL byte

    def refuse(reason: str) -> InvalidCode:
        return InvalidCode(f"Entry {name!r} {reason}", entry=name)

    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        raise refuse("has a control character (such as NUL) in its name.")
    if info.flag_bits & _ENCRYPTED_FLAG:
        raise refuse("is encrypted; upload a zip without a password.")
    if info.compress_type not in _SUPPORTED_METHODS:
        raise refuse("uses an unsupported compression method; use deflate (the default).")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise refuse("is a symbolic link; links are not allowed, include the file.")
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise refuse("is a device, pipe or socket; only files and folders are allowed.")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise refuse("has an absolute path; paths must be relative to the zip's root.")
    raw_parts = posix.split("/")
    if ".." in raw_parts:
        raise refuse("has a '..' component; paths must stay inside the zip's root.")
    parts = tuple(part for part in raw_parts if part not in ("", "."))
    is_dir = posix.endswith("/") or stat.S_ISDIR(mode)
    if not parts and not is_dir:
        raise refuse("has no file name.")
    if any(len(part.encode()) > MAX_COMPONENT_BYTES for part in parts):
        raise refuse(f"has a path component longer than {MAX_COMPONENT_BYTES} bytes.")
    if len("/".join(parts).encode()) > MAX_PATH_BYTES:
        raise refuse(f"has a path longer than {MAX_PATH_BYTES} bytes.")
    return _Member(info=info, parts=parts, is_dir=is_dir)


def _find_prefix(members: list[_Member]) -> str:
    real = [m for m in members if m.parts and not m.is_junk]
    files = {m.path for m in real if not m.is_dir}
    if "main.py" in files:
        return ""
    tops = {m.parts[0] for m in real}
    if len(tops) == 1:
        (top,) = tops
        if f"{top}/main.py" in files:
            return f"{top}/"
    raise InvalidCode(_main_not_found_message(real, files))


def _main_not_found_message(real: list[_Member], files: set[str]) -> str:
    message = "main.py not found at the zip's root (or in its single top-level folder)"
    if not files:
        return f"{message}; the zip holds no files."
    tops = sorted({m.parts[0] + ("/" if len(m.parts) > 1 or m.is_dir else "") for m in real})
    message = f"{message}; found: {_listing(tops)}."
    nested = sorted((p for p in files if p.endswith("/main.py")), key=len)
    if nested:
        message += (
            f" There is one at {nested[0]}: zip the contents of the folder holding main.py instead."
        )
    return message


def _select_entries(members: list[_Member], prefix: str) -> tuple[CodeEntry, ...]:
    top = prefix.rstrip("/")
    entries: list[CodeEntry] = []
    owners: dict[str, str] = {}
    folders: set[str] = set()
    for member in members:
        if member.is_junk or not member.parts:
            continue
        if top and member.parts[0] != top:
            continue
        if top and len(member.parts) == 1:
            if member.is_dir:
                continue
            raise InvalidCode(
                f"Entry {member.info.orig_filename!r} is a file, but other entries "
                f"need {top!r} to be a folder.",
                entry=member.info.orig_filename,
            )
        parts = member.parts[1:] if top else member.parts
        target = "/".join(parts)
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if member.is_dir:
            folders.add(target)
            continue
        name = member.info.orig_filename
        if target in owners:
            raise InvalidCode(
                f"Entries {owners[target]!r} and {name!r} would both be extracted "
                f"to {target!r}; keep only one.",
                entry=name,
            )
        owners[target] = name
        entries.append(
            CodeEntry(name=member.info.filename, target=target, size=member.info.file_size)
        )
    clashes = sorted(folders & owners.keys())
    if clashes:
        name = owners[clashes[0]]
        raise InvalidCode(
            f"Entry {name!r} is a file, but other entries need {clashes[0]!r} to be a folder.",
            entry=name,
        )
    return tuple(entries)


def _parse_main(raw: bytes) -> ast.Module:
    try:
        source = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InvalidCode(
            f"main.py line {line}: not valid UTF-8 text; save the file as UTF-8.",
            line=line,
        ) from exc
    try:
        # The person's code may warn (invalid escapes); that is not our output.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(source, filename="main.py")
    except SyntaxError as exc:
        where = f"main.py line {exc.lineno}" if exc.lineno else "main.py"
        raise InvalidCode(f"{where}: {exc.msg}", line=exc.lineno) from exc
    except (ValueError, RecursionError, MemoryError) as exc:
        raise InvalidCode(f"main.py could not be parsed: {exc}") from exc


def _main_parameters(module: ast.Module) -> int:
    binding: ast.stmt | None = None
    for statement in module.body:
        if _binds_main(statement):
            binding = statement  # the last binding is the one Python keeps
    if binding is None:
        raise InvalidCode(_NO_MAIN_FUNCTION)
    where = f"main.py line {binding.lineno}"
    if isinstance(binding, ast.AsyncFunctionDef):
        raise InvalidCode(f"{where}: main must be a plain function (def main...), not async def.")
    if not isinstance(binding, ast.FunctionDef):
        kind = {ast.ClassDef: "a class", ast.Import: "an import", ast.ImportFrom: "an import"}.get(
            type(binding), "an assignment"
        )
        raise InvalidCode(f"{where}: main is bound by {kind}; {_NO_MAIN_FUNCTION}")
    return _check_signature(binding, where)


def _binds_main(statement: ast.stmt) -> bool:
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return statement.name == "main"
    if isinstance(statement, ast.Assign):
        return _names_main(statement.targets)
    if isinstance(statement, ast.AnnAssign) and statement.value is not None:
        return _names_main([statement.target])
    if isinstance(statement, ast.AugAssign):
        return _names_main([statement.target])
    if isinstance(statement, ast.Import | ast.ImportFrom):
        return any(
            (alias.asname or alias.name.split(".")[0]) == "main" for alias in statement.names
        )
    return False


def _names_main(targets: Iterable[ast.expr]) -> bool:
    return any(
        isinstance(node, ast.Name) and node.id == "main"
        for target in targets
        for node in ast.walk(target)
    )


def _check_signature(function: ast.FunctionDef, where: str) -> int:
    args = function.args
    positional = [*args.posonlyargs, *args.args]
    required = positional[: len(positional) - len(args.defaults)]
    if len(required) > 1:
        names = ", ".join(arg.arg for arg in required)
        qualifier = " without defaults" if len(positional) > len(required) else ""
        raise InvalidCode(
            f"{where}: main must take 0 or 1 positional parameter (event), "
            f"found {len(required)}{qualifier}: {names}"
        )
    required_keywords = [
        arg.arg
        for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True)
        if default is None
    ]
    if required_keywords:
        raise InvalidCode(
            f"{where}: main must not have required keyword-only parameters, "
            f"found: {', '.join(required_keywords)}; give them defaults."
        )
    return 1 if positional or args.vararg else 0


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTING_CAP])
    hidden = len(names) - _LISTING_CAP
    return f"{shown}, … ({hidden} more)" if hidden > 0 else shown


def _too_large_message(size: int, limit: int) -> str:
    shown_size, shown_limit = _human(size), _human(limit)
    if shown_size == shown_limit:
        shown_size, shown_limit = f"{size:,} bytes", f"{limit:,} bytes"
    return (
        f"The upload is {shown_size}, larger than the {shown_limit} your plan "
        "allows; remove files you do not need (data, virtual environments)."
    )


def _human(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"
