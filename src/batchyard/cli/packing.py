"""``batchyard pack``: the project's code folder as the zip the server accepts.

The zip is validated by the server's own code (``domain/codezip``: size against the
plan, ``main.py`` present and parsing, ``main``'s signature, requirements lines), and
built reproducibly (sorted names, fixed times and modes) so that its SHA-256 changes
only when a file does: deploy compares that hash with the server's code version.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from batchyard.cli.exits import LIMIT, USAGE, fail
from batchyard.cli.project import CONFIG, SECRETS, Project

IGNORE_FILE = ".batchyardignore"
# Never part of a package: environments, caches, version control, local outputs.
SKIPPED_FOLDERS = {".venv", "venv", "__pycache__", ".git", "output", ".batchyard",
                   "deliverables", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                   "batch-virtualenv", ".hg", ".svn", ".idea", ".vscode"}
# The kit's own files: local configuration and answers, never code.
SKIPPED_FILES = {CONFIG, SECRETS, IGNORE_FILE, "event.json", "query.json", ".DS_Store",
                 ".gitignore"}
SKIPPED_SUFFIXES = (".pyc", ".pyo")
DEFAULT_CODE_LIMIT = 4 * 1024 * 1024
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Package:
    data: bytes
    sha256: str
    files: tuple[tuple[str, int], ...]  # (name, size) of each file, in the zip's order
    left_out: tuple[str, ...]  # what the walk skipped on purpose (links, special files)


def _patterns(project: Project) -> list[str]:
    patterns: list[str] = []
    for folder in {project.root, project.code_dir}:
        path = folder / IGNORE_FILE
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    patterns.append(line)
    return patterns


def _ignored(relative: str, is_dir: bool, patterns: list[str]) -> bool:
    name = relative.rsplit("/", 1)[-1]
    for pattern in patterns:
        if pattern.endswith("/"):
            if not is_dir:
                continue
            pattern = pattern.rstrip("/")
        anchored = pattern.startswith("/")
        pattern = pattern.lstrip("/")
        if fnmatch.fnmatchcase(relative, pattern) or \
                (not anchored and "/" not in pattern and fnmatch.fnmatchcase(name, pattern)):
            return True
    return False


def collect(project: Project) -> tuple[list[tuple[str, Path]], list[str]]:
    """The files to pack, as (name in the zip, path), sorted; and what was left out."""
    root = project.code_dir
    if not root.is_dir():
        fail(USAGE, f"{root}: the code folder does not exist")
    patterns = _patterns(project)
    chosen: list[tuple[str, Path]] = []
    left_out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        relative_dir = here.relative_to(root).as_posix()
        prefix = "" if relative_dir == "." else relative_dir + "/"
        kept = []
        for name in sorted(dirnames):
            relative = prefix + name
            if name in SKIPPED_FOLDERS or _ignored(relative, True, patterns):
                continue
            if (here / name).is_symlink():
                left_out.append(f"{relative}/ (a link)")
                continue
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            relative = prefix + name
            path = here / name
            if name in SKIPPED_FILES or name.endswith(SKIPPED_SUFFIXES) or \
                    _ignored(relative, False, patterns):
                continue
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                left_out.append(f"{relative} (a link)")
            elif not stat.S_ISREG(info.st_mode):
                left_out.append(f"{relative} (not a regular file)")
            else:
                chosen.append((relative, path))
    return sorted(chosen), left_out


def build(project: Project, limit: int | None = None) -> Package:
    """The validated zip; refuses (exit 2, or 3 over the size limit) naming file and line."""
    limit = limit or DEFAULT_CODE_LIMIT
    chosen, left_out = collect(project)
    total = 0
    for _name, path in chosen:
        total += path.stat().st_size
    # An oversize folder is refused before it is read into memory: deflate rarely wins
    # more than 10:1 on source code.
    if total > 10 * limit:
        fail(LIMIT, f"{project.code_dir}: {total} bytes of files, far over the plan's "
                    f"{limit} byte code limit; leave large files out with {IGNORE_FILE}")
    buffer = io.BytesIO()
    files: list[tuple[str, int]] = []
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for name, path in chosen:
            content = path.read_bytes()
            info = zipfile.ZipInfo(name, _FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, content)
            files.append((name, len(content)))
    data = buffer.getvalue()
    validate(project, data, limit)
    return Package(data, hashlib.sha256(data).hexdigest(), tuple(files), tuple(left_out))


def validate(project: Project, data: bytes, limit: int) -> None:
    """The server's own checks (domain/codezip), with the project's file names."""
    from batchyard.domain import codezip
    from batchyard.errors import CodeTooLarge, InvalidCode

    try:
        codezip.inspect_code_zip(data, limit)
    except CodeTooLarge as exc:
        fail(LIMIT, f"{project.code_dir}: {exc.message}")
    except InvalidCode as exc:
        where = project.code_dir
        text = exc.message
        # "main.py line 3: ..." becomes "<folder>/main.py:3: ...", the form editors follow.
        for file_name in ("main.py", "requirements.txt"):
            head = f"{file_name} line "
            if text.startswith(head):
                number, _, rest = text[len(head):].partition(":")
                fail(USAGE, f"{where / file_name}:{number}:{rest}")
        fail(USAGE, f"{where}: {text}")
