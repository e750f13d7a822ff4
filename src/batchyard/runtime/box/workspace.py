"""An attempt's fresh folders: the extracted code, the output folder, a temp folder."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
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
        return remove_tree(self.root)


def remove_tree(path: Path) -> bool:
    """Remove ``path`` and all under it, never raising; True when nothing of it is left.

    A job decides the shape of its folders: in a tree nested deeper than Python's recursion
    limit, ``shutil.rmtree`` (recursive per level in 3.11) raises RecursionError, which
    ``ignore_errors`` does not cover; rm(1) walks without recursing. Neither crosses into a
    file system mounted inside (a job's FUSE mount at the rlimits level): that one stays.
    """
    try:
        shutil.rmtree(path, ignore_errors=True)
    except Exception:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=600, check=False)
    return not os.path.lexists(path)


def lock_work_root(work_root: Path) -> tuple[int, bool]:
    """Join the processes using ``work_root``, for this process's life: a shared ``flock``
    on ``<work_root>.lock`` (closing the returned fd leaves). True: no other process uses
    it; the lock is exclusive then until ``share_work_root``, so that what is in the folder
    is this process's previous lives' alone while it sweeps (a process starting meanwhile
    waits for its shared lock)."""
    fd = os.open(work_root.with_name(work_root.name + ".lock"),
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd, False
    return fd, True


def share_work_root(fd: int) -> None:
    """After the sweep: others may join (the exclusive lock becomes a shared one)."""
    fcntl.flock(fd, fcntl.LOCK_SH)


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


def _walk(top: str) -> Iterator[tuple[str, list[str]]]:
    """``os.walk(top)``'s folders and their file names, in sorted pre-order, without
    recursion: 3.11's os.walk recurses per level, and a job's output nested deeper than the
    recursion limit raised RecursionError. A symbolic link to a folder is neither a file
    nor descended into, as os.walk's ``followlinks=False``."""
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError:
            continue
        folders, files = [], []
        for entry in entries:
            try:
                is_folder = entry.is_dir()
            except OSError:
                is_folder = False
            if not is_folder:
                files.append(entry.name)
            elif not entry.is_symlink():
                folders.append(entry.name)
        yield folder, sorted(files)
        stack.extend(os.path.join(folder, name) for name in sorted(folders, reverse=True))


def collect_outputs(output: Path, max_files: int, max_bytes: int) -> CollectedOutputs:
    """Keep regular files only, within the caps: never follow a symbolic link the job made,
    never read a hard link."""
    files: list[OutputFile] = []
    skipped: list[str] = []
    total = 0
    for dirpath, filenames in _walk(str(output)):
        for filename in filenames:
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
