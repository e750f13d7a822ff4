"""The rlimits level's runtime folder: what a job uid reaches by path, outside the data folder.

Without a mount namespace a job opens its folders, the SDK and its interpreter's standard
library by their host paths, as its own uid: every folder above them must let other users
pass (the ``x`` bit for others). A checkout or a data folder under a 0700 ``/root`` (or a
``mktemp -d``) does not, and the data folder must not: it holds the database, the secret
key and the operator token, and stays 0700. So the jobs' side lives in a folder of its own:

- ``<runtime>/`` 0711, root's: passable, not listable;
- ``sdk-<digest>/`` 0755: a copy of ``batchyard/sdk/jobpath`` made at start (never the
  checkout, whose parents may be closed), named after its content so that servers sharing
  the folder never swap it under each other's running jobs;
- ``work/`` 0711: the attempts' folders (each 0700, owned by its attempt's uid);
- ``envs/`` 0711: the requirements environments (``uv-cache/`` 0700 beside them, so uv can
  hard-link into them on one file system).

Its default is ``/var/lib/batchyard/runtime-<digest of the data folder's path>``: one per
data folder, on a path whose parents are open on any Debian host. The operator may choose
another with ``BATCHYARD_RUNTIME_DIR``; either way it is checked, never opened up by us
(the server does not chmod a parent it did not create).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

from batchyard.sdk import JOBPATH

DEFAULT_PARENT = Path("/var/lib/batchyard")
# Interpreters the job uids may be able to run where the configured one is out of their
# reach (a pyenv build under /root): the system's own, newest first.
_MINORS = range(20, 10, -1)
SYSTEM_PYTHONS = tuple(f"{folder}/python3.{minor}" for folder in ("/usr/bin", "/usr/local/bin")
                       for minor in _MINORS)
COMPILE_TIMEOUT_SECONDS = 60.0


class RuntimeFolderUnusable(Exception):
    """The runtime folder cannot be offered to the job uids; the message says why."""


def default_runtime_dir(data_dir: Path) -> Path:
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return DEFAULT_PARENT / f"runtime-{digest}"


def prepare_runtime_dir(path: Path, data_dir: Path) -> Path:
    """Create (or check) the runtime folder and its ``work`` and ``envs``; raise
    ``RuntimeFolderUnusable`` naming the folder that closes the way."""
    path = Path(os.path.abspath(path))
    data = data_dir.resolve()
    if path == data or data in path.parents or path in data.parents:
        raise RuntimeFolderUnusable(
            f"the runtime folder {path} and the data folder {data} must not contain each other "
            "(the data folder stays closed to the job uids)")
    existing = path
    while not existing.exists():
        existing = existing.parent
    for folder in [existing, *existing.parents]:
        _check_passable(folder, path)
    os.makedirs(path, mode=0o755, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise RuntimeFolderUnusable(f"{path} is not a folder owned by this server's uid")
    os.chmod(path, 0o711)
    for folder in [Path(os.path.realpath(path)), *Path(os.path.realpath(path)).parents]:
        _check_passable(folder, path)  # a symbolic link on the way leads elsewhere
    for name, mode in (("work", 0o711), ("envs", 0o711), ("uv-cache", 0o700)):
        sub = path / name
        sub.mkdir(mode=mode, exist_ok=True)
        if sub.is_symlink() or os.stat(sub).st_uid != os.geteuid():
            raise RuntimeFolderUnusable(f"{sub} is not a folder owned by this server's uid")
        os.chmod(sub, mode)
    return path


def _check_passable(folder: Path, target: Path) -> None:
    info = os.stat(folder)
    mode = stat.S_IMODE(info.st_mode)
    if not mode & stat.S_IXOTH:
        raise RuntimeFolderUnusable(
            f"{folder} (mode {mode:04o}) does not let other users pass, so the job uids "
            f"cannot reach {target}")
    # Someone else who may rename entries of a parent could swap the folder for another.
    if info.st_uid not in (0, os.geteuid()) or (mode & 0o022 and not mode & stat.S_ISVTX):
        raise RuntimeFolderUnusable(
            f"{folder} (mode {mode:04o}, uid {info.st_uid}) may be changed by other users, "
            f"who could then replace {target}")


def install_sdk(runtime_dir: Path) -> Path:
    """Copy the job-side SDK into the runtime folder (once per content); its path."""
    digest = hashlib.sha256()
    for relative in _sdk_files():
        digest.update(relative.encode() + b"\0" + (JOBPATH / relative).read_bytes() + b"\0")
    target = runtime_dir / f"sdk-{digest.hexdigest()[:16]}"
    if target.is_dir() and not target.is_symlink():
        return target
    staging = runtime_dir / f".sdk-tmp-{secrets.token_hex(4)}"
    try:
        for relative in _sdk_files():
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            shutil.copyfile(JOBPATH / relative, destination)
        _readable_by_all(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # not another server that made it first: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _sdk_files() -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(JOBPATH):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(dirpath, name), JOBPATH)


def compile_sdk(sdk: Path, python: str) -> None:
    """Byte-compile the copy with the job interpreter itself (its cache tag; jobs run
    with -B and could not write there anyway), so each start imports it fast."""
    subprocess.run([python, "-I", "-m", "compileall", "-q", str(sdk)], capture_output=True,
                   timeout=COMPILE_TIMEOUT_SECONDS, check=False)
    _readable_by_all(sdk)


def _readable_by_all(tree: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(tree):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)


def interpreter_candidates(preferred: str) -> list[str]:
    """The preferred interpreter first, then the system's (each real file once)."""
    seen: set[str] = set()
    found: list[str] = []
    for candidate in (preferred, *SYSTEM_PYTHONS):
        if candidate != preferred and not os.path.isfile(candidate):
            continue
        real = os.path.realpath(candidate)
        if real in seen:
            continue
        seen.add(real)
        found.append(candidate)
    return found
