"""An attempt's fresh folders: the extracted code, the output folder, a temp folder."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from batchyard.domain import codezip
from batchyard.domain.attempts import OutputFile


@dataclass(frozen=True)
class Workspace:
    root: Path
    code: Path
    output: Path
    tmp: Path

    def remove(self) -> bool:
        """Remove the folders; True when nothing of them is left."""
        shutil.rmtree(self.root, ignore_errors=True)
        return not os.path.lexists(self.root)


class SetupTimedOut(Exception):
    """Extracting the code took longer than the setup timeout allows."""


def create_workspace(base: Path, execution_id: str, attempt: int, code: bytes,
                     deadline: float | None = None) -> Workspace:
    """Extract the code (validated again: the stored zip is customer data) into a new folder.

    ``deadline`` (``time.monotonic()``) bounds the extraction; past it ``SetupTimedOut``
    is raised and the folder is removed.
    """
    workspace = new_workspace(base, f"{execution_id}-{attempt}")
    try:
        extract_code(workspace, code, deadline)
    except BaseException:
        workspace.remove()
        raise
    return workspace


def new_workspace(base: Path, prefix: str) -> Workspace:
    """Empty code, output and tmp folders in ``base/<prefix>-<random>``."""
    root = base / f"{prefix}-{secrets.token_hex(4)}"
    workspace = Workspace(root, root / "code", root / "output", root / "tmp")
    for folder in (workspace.code, workspace.output, workspace.tmp):
        folder.mkdir(parents=True, mode=0o700)
    return workspace


def extract_code(workspace: Workspace, code: bytes, deadline: float | None = None) -> None:
    """Extract the code into the workspace's (empty) code folder; see create_workspace."""
    _extract(code, workspace.code, deadline)


def _extract(code: bytes, into: Path, deadline: float | None) -> None:
    manifest = codezip.inspect_code_zip(code, len(code))
    made: set[Path] = {into}
    for entry, content in codezip.read_members(code, manifest):
        if deadline is not None and time.monotonic() > deadline:
            raise SetupTimedOut(f"{entry.target} and the files after it were not extracted "
                                "in time")
        target = into / entry.target
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)


@dataclass(frozen=True)
class CollectedOutputs:
    files: tuple[OutputFile, ...]
    skipped: tuple[str, ...]


def collect_outputs(output: Path, max_files: int, max_bytes: int) -> CollectedOutputs:
    """Keep regular files only, within the caps: never follow a symbolic link the job made,
    never read a hard link."""
    files: list[OutputFile] = []
    skipped: list[str] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(output, followlinks=False):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            name = path.relative_to(output).as_posix()
            try:
                info = path.lstat()
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode):
                skipped.append(f"{name} (not a regular file)")
                continue
            # A hard link may be to a file the job cannot read (the server's database, where
            # fs.protected_hardlinks is 0): this process would read it as root.
            if info.st_nlink != 1:
                skipped.append(f"{name} (a hard link)")
                continue
            if len(files) >= max_files:
                skipped.append(f"{name} (more than {max_files} files)")
                continue
            if total + info.st_size > max_bytes:
                skipped.append(f"{name} (over the {max_bytes} byte output cap)")
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as handle:
                content = handle.read(max_bytes - total + 1)
            if total + len(content) > max_bytes:
                skipped.append(f"{name} (over the {max_bytes} byte output cap)")
                continue
            total += len(content)
            files.append(OutputFile(name, content, hashlib.sha256(content).hexdigest()))
    return CollectedOutputs(tuple(files), tuple(skipped))
