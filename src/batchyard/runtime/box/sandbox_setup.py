"""Deciding, once at start, how this host confines jobs (runtime/box/sandbox.py is how).

In order: ``BATCHYARD_SANDBOX=off`` runs jobs as the server's own uid (the operator's
explicit choice, and the only way to that); bubblewrap where it runs (``auto``,
``bubblewrap``); else the rlimits launcher, which needs root (a uid per attempt), a runtime
folder the job uids can reach (runtime/box/jobroot.py) and an interpreter they can run: the
configured one, else the system's ``python3.x`` (3.11 or newer). Each candidate is tried
by a probe that runs the real command as a job uid. Where nothing works the level is
*unavailable*: the server starts and serves, no job runs, and the operator's report says
why and what to change. ``bubblewrap`` alone refuses to start without bubblewrap.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from batchyard.runtime.box.jobroot import (
    DEFAULT_PARENT,
    RuntimeFolderUnusable,
    compile_sdk,
    default_runtime_dir,
    install_sdk,
    interpreter_candidates,
    prepare_runtime_dir,
)
from batchyard.runtime.box.sandbox import (
    PROBE_TIMEOUT_SECONDS,
    IsolationLevel,
    JobLimits,
    OperatorReport,
    Placement,
    Sandbox,
    SandboxUnavailable,
    UidPool,
    bind_ancestors,
)
from batchyard.sdk import JOBPATH

log = logging.getLogger("batchyard.sandbox")

# /etc entries a job needs (name service and DNS, TLS roots, the loader's cache, MIME
# types, Debian's alternatives links); not the rest: shadow, ssh keys, the configuration
# of services on this host. Each bind costs ~0.1 ms of every start, so no extras (TZ is
# set in the environment, glibc's gai.conf / host.conf defaults are fine).
ETC_ENTRIES = ("passwd", "group", "hosts", "resolv.conf", "nsswitch.conf", "services",
               "protocols", "ssl", "ld.so.cache", "mime.types", "alternatives")
# Memory-backed scratch for code that writes /tmp or /dev/shm by name (TMPDIR is on disk).
TMPFS_BYTES = 64 * 1024 * 1024
_BWRAP_NAMESPACES = ("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname",
                     "batchyard", "--die-with-parent", "--new-session")
# As root: the prelude needs SETUID/SETGID to switch, DAC_READ_SEARCH to enter the
# attempt's 0700 folder before it; the switch to a non-zero uid then clears all of them.
_ROOT_CAPS = ("--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
              "--cap-add", "CAP_DAC_READ_SEARCH")

# What to change, for each way the rlimits level can be out of reach.
_OR_BUBBLEWRAP = "or install bubblewrap where it can run (Debian package bubblewrap)"
_OR_OFF = ("or, only where each server already runs in a disposable container of its "
           "own, set BATCHYARD_SANDBOX=off (jobs then run as the server's uid)")
FIX_NOT_ROOT = (f"run the server as root, which gives each attempt a uid of its own; "
                f"{_OR_BUBBLEWRAP}; {_OR_OFF}")
FIX_RUNTIME_DIR = (f"set BATCHYARD_RUNTIME_DIR to a folder whose every parent other users "
                   f"may pass (mode o+x), outside the data folder, e.g. "
                   f"{DEFAULT_PARENT}/runtime; {_OR_BUBBLEWRAP}")
FIX_INTERPRETER = ("install Python 3.11 or newer where every user may run it, e.g. Debian's "
                   "package python3 (/usr/bin/python3.11 on Debian 12), or set "
                   "BATCHYARD_PYTHON to such an interpreter (not under a 0700 folder such "
                   f"as /root, where pyenv installs); {_OR_BUBBLEWRAP}")


def data_placement(python: str, data_dir: Path) -> Placement:
    """Bubblewrap (and off): the work root and environments in the data folder; bwrap,
    as root, binds them whatever the modes above."""
    work_root = data_dir / "work"
    work_root.mkdir(exist_ok=True, mode=0o700)
    return Placement(python, JOBPATH, work_root, data_dir / "envs", data_dir / "uv-cache")


def runtime_placement(python: str, data_dir: Path, runtime_dir: Path | None) -> Placement:
    """Bubblewrap: the attempts' folders, environments and a copy of the SDK in the runtime
    folder, outside the data folder, as at the rlimits level. Inside the sandbox a folder
    keeps its host path, which a job's traceback shows its tenant: never the data folder's.
    Where the runtime folder cannot be made, the data folder (bwrap, as root, binds
    whatever the modes above)."""
    try:
        folder = prepare_runtime_dir(runtime_dir or default_runtime_dir(data_dir), data_dir)
        sdk = install_sdk(folder)
    except (RuntimeFolderUnusable, OSError) as exc:
        log.warning("bubblewrap: jobs' folders stay in the data folder (%s)", exc)
        return data_placement(python, data_dir)
    compile_sdk(sdk, python)
    return Placement(python, sdk, folder / "work", folder / "envs", folder / "uv-cache",
                     folder)


def detect_sandbox(mode: str, python: str, limits: JobLimits, data_dir: Path, uid_base: int,
                   runtime_dir: Path | None = None) -> Sandbox:
    """The level for ``BATCHYARD_SANDBOX=mode``; ``python`` is the preferred interpreter."""
    if mode == "off":
        log.warning("BATCHYARD_SANDBOX=off: jobs run unconfined, as the server's own uid")
        return Sandbox.unconfined(data_placement(python, data_dir))
    as_root = os.geteuid() == 0
    uids = UidPool(uid_base) if as_root else None
    if mode in ("none", "rlimits"):
        reason = f"BATCHYARD_SANDBOX={mode}"
    else:
        reason = "bwrap is not installed (Debian package bubblewrap)"
        bwrap = shutil.which("bwrap")
        if bwrap is not None:
            sandbox, failure = _try_bubblewrap(bwrap, python, limits, data_dir, uids,
                                               runtime_dir)
            if sandbox is not None:
                return sandbox
            reason = f"bwrap cannot run here: {failure}"  # the operator's, see _rlimits
        if mode == "bubblewrap":
            raise SandboxUnavailable(f"BATCHYARD_SANDBOX=bubblewrap, but {reason}")
        log.warning("jobs run without namespaces: %s", reason)
    if uids is None:
        return Sandbox.unavailable(
            f"{reason}; without namespaces each attempt needs a uid of its own, and only a "
            "server running as root can switch to one", FIX_NOT_ROOT,
            data_placement(python, data_dir))
    return _rlimits(reason, python, limits, data_dir, uids, runtime_dir)


def _try_bubblewrap(bwrap: str, python: str, limits: JobLimits, data_dir: Path,
                    uids: UidPool | None, runtime_dir: Path | None
                    ) -> tuple[Sandbox | None, str]:
    placement = runtime_placement(python, data_dir, runtime_dir)
    try:
        read_only = [*_interpreter_prefixes(python), str(placement.jobpath)]
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"the interpreter {python} does not run: {exc}"
    who = (f"uid {uids.base}+n per attempt" if uids is not None
           else "the server's uid in a user namespace of its own (not root: no switch)")
    sandbox = Sandbox(
        IsolationLevel.BUBBLEWRAP,
        f"bubblewrap (PID/mount/IPC/UTS namespaces, read-only system, only the "
        f"attempt's folders writable, {who}; limits: {limits.describe()})",
        limits, _bwrap_base(bwrap, read_only, uids is not None), uids,
        [Path(path) for path in read_only], placement)
    failure = sandbox.probe(python, placement.work_root)
    return (sandbox, "") if failure is None else (None, failure)


def _rlimits(reason: str, python: str, limits: JobLimits, data_dir: Path, uids: UidPool,
             runtime_dir: Path | None) -> Sandbox:
    # Never opened to the job uids (an older version made it 0711): database, keys, tokens.
    os.chmod(data_dir, 0o700)
    folder = runtime_dir or default_runtime_dir(data_dir)
    try:
        folder = prepare_runtime_dir(folder, data_dir)
        sdk = install_sdk(folder)
    except (RuntimeFolderUnusable, OSError) as exc:
        return Sandbox.unavailable(
            f"{reason}; the rlimits launcher needs a runtime folder the job uids can reach: "
            f"{exc}", FIX_RUNTIME_DIR, data_placement(python, data_dir))
    # A fallback is worth a word to the operator; BATCHYARD_SANDBOX=rlimits was a choice.
    notes = [] if reason.startswith("BATCHYARD_SANDBOX=") else [
        f"no namespaces ({reason}): {_OR_BUBBLEWRAP.removeprefix('or ')}"]
    failures: list[str] = []
    # Each attempt's first log line: bwrap's own words may name host paths; not there.
    short = reason.split(": ", 1)[0] if reason.startswith("bwrap cannot run") else reason
    description = (f"rlimits (no namespaces: {short}; own session, minimal environment, "
                   f"uid {uids.base}+n per attempt; limits: {limits.describe()})")
    for candidate in interpreter_candidates(python):
        placement = Placement(candidate, sdk, folder / "work", folder / "envs",
                              folder / "uv-cache", folder)
        sandbox = Sandbox(IsolationLevel.RLIMITS, description, limits, uids=uids,
                          placement=placement)
        failure = sandbox.probe(candidate, placement.work_root, placement.env_root)
        if failure is not None:
            failures.append(f"{candidate}: {failure}")
            continue
        if failures:
            notes.append(f"the job uids cannot run {failures[0]}; jobs run {candidate}")
        compile_sdk(sdk, candidate)
        sandbox.report = OperatorReport(notes=tuple(notes))
        return sandbox
    return Sandbox.unavailable(
        f"{reason}; no interpreter the job uids can run ({'; '.join(failures)})",
        FIX_INTERPRETER, data_placement(python, data_dir))


def _bwrap_base(bwrap: str, read_only: Sequence[str], as_root: bool) -> list[str]:
    # The deadline's SIGTERM would kill bwrap at once, and the PID namespace with it: no
    # grace for the job. Ignoring it (inherited through exec; the prelude restores it in
    # the job), bwrap stays while the job, signalled directly, cleans up; SIGKILL ends all.
    args = [*_ignoring_sigterm(), bwrap, *_BWRAP_NAMESPACES]
    # Root keeps the init user namespace (bind sources resolve as root, the job's uid is a
    # real host uid); anyone else needs a user namespace of their own.
    args += list(_ROOT_CAPS) if as_root else ["--unshare-user", "--disable-userns"]
    args += ["--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp",
             "--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs", "/dev/shm",
             "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / name
        if host.is_symlink():  # Debian 12: all of them point into /usr
            args += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            args += ["--ro-bind", str(host), str(host)]
    # bwrap would create /etc for the binds below as 0700: unreadable to the job's uid.
    args += ["--perms", "0755", "--dir", "/etc"]
    for name in ETC_ENTRIES:
        if os.path.exists(f"/etc/{name}"):
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    trees = [Path(path) for path in read_only]
    for directory in bind_ancestors(read_only, trees, frozenset()):
        args += ["--perms", "0711", "--dir", directory]
    for path in read_only:
        if not any(tree in Path(path).parents for tree in trees):  # not already inside one
            args += ["--ro-bind", path, path]
    return args


def _ignoring_sigterm() -> list[str]:
    """``env --ignore-signal=TERM`` (coreutils 8.31 and later) where it works, else nothing
    (bwrap then dies of the SIGTERM: the job gets no grace)."""
    env = shutil.which("env")
    if env is None:
        return []
    try:
        done = subprocess.run([env, "--ignore-signal=TERM"], capture_output=True,
                              timeout=PROBE_TIMEOUT_SECONDS)
    except (OSError, subprocess.SubprocessError):
        return []
    return [env, "--ignore-signal=TERM"] if done.returncode == 0 else []


def _interpreter_prefixes(python: str) -> list[str]:
    """The job interpreter's own folders when they are outside /usr (pyenv: libpython)."""
    done = subprocess.run([python, "-I", "-S", "-c",
                           "import sys; print(sys.base_prefix); print(sys.base_exec_prefix)"],
                          capture_output=True, check=True, timeout=PROBE_TIMEOUT_SECONDS)
    prefixes = {os.path.realpath(line) for line in done.stdout.decode().split() if line}
    prefixes.add(os.path.dirname(os.path.dirname(os.path.realpath(python))))
    return sorted(p for p in prefixes if p != "/usr" and not p.startswith("/usr/"))
