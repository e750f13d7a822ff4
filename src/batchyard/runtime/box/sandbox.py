"""How an attempt's process is confined: bubblewrap where it runs, else an rlimits launcher.

Both levels start the job's interpreter with a *prelude* (a constant, see ``PRELUDE``)
that sets the resource limits, soft = hard, and, when the server runs as root, leaves
root for a uid of the attempt's own before any of the job is imported.

- **bubblewrap**: ``bwrap`` runs as root without a user namespace (so bind sources such
  as a pyenv prefix under a 0700 ``/root`` resolve) and starts the interpreter in new
  PID, mount, IPC and UTS namespaces, network shared (jobs call third-party APIs), with
  ``--die-with-parent``, no capability but the three the prelude needs for its switch,
  and no_new_privs. The mount tree is empty but for: ``/usr`` and a short list of ``/etc``
  files read-only, the interpreter's prefix and the SDK read-only, ``/proc``, ``/dev``,
  small tmpfs ``/tmp`` and ``/dev/shm``, and the attempt's code, output and tmp folders
  read-write, each at its host path (so cwd, ``OUTPUT_DIR``, ``TMPDIR`` and the context
  need no translation). Nothing else of the host: no data folder, no other attempt's
  folders, no ``/root``, ``/home``, ``/run`` or ``/var``.
- **rlimits**: the same prelude without namespaces: own session, minimal environment, the
  limits, and the attempt's uid. The job reaches everything by path, so all it needs lives
  in a *runtime folder* whose every parent other users may enter (runtime/box/jobroot.py): a
  copy of the SDK, the work root (0711; each attempt's folder 0700, owned by its uid) and
  the requirements environments; the interpreter is one the job uid can execute. The
  data folder (database, keys, tokens) stays 0700, out of its reach.
- **unavailable**: neither level can give each attempt its own uid here. The server
  still serves; every attempt ends ``failed``, reason ``sandbox_unavailable``, before
  anything is spawned. Only ``BATCHYARD_SANDBOX=off`` runs jobs as the server's own uid.

One uid per attempt (``uid_base`` + n, claimed with a host-wide ``flock`` so several
servers on one machine never share one): ``RLIMIT_NPROC`` counts per uid, so a shared
uid would let one job's fork bomb starve every other job, and a shared uid could read
another running attempt's folder through ``/proc/<pid>/cwd``. The uid has no passwd
entry; USER/LOGNAME name it. A server not running as root cannot switch uids: under
bubblewrap its jobs get a user namespace of their own (nothing of the server's is in their
mount tree or PID namespace; NPROC counts per namespace there), and without bubblewrap
no job runs (unavailable).

The network namespace is the host's: runtime/box/netguard.py keeps the job uid range from
this host's services and its private networks (nftables). Unix sockets are not IP: under
bubblewrap the host's socket files (/run, /var/run, the host's /tmp) are not in the mount
tree, but abstract ones (``@name``) are reachable at both levels.

Not covered: at the rlimits level the host's socket files (/run/postgresql, /run/mysqld,
...) are reachable by path, the host's world-writable /tmp, /var/tmp and /dev/shm stay
writable and world-readable host files readable, as for any unprivileged user, and
no_new_privs is not set (the host's setuid programs run as for such a user); disk use is
bounded per file (RLIMIT_FSIZE) and by the output cap at collection, not in total. At both
levels a job may create user namespaces (``unshare -U``: more of the kernel in reach;
bwrap as root cannot ``--disable-userns``): ``sysctl user.max_user_namespaces=0`` on the
host closes that.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import resource
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from batchyard.errors import BatchyardError
from batchyard.runtime.box.workspace import Workspace, remove_tree
from batchyard.sdk import JOBPATH

# Runs first in the job's interpreter, before anything of the job is imported. A constant,
# never generated: its arguments come in argv as "resource:soft:hard,..." and "uid:gid"
# (or "-": keep the uid). Soft = hard so job code cannot raise a limit back (CPU time:
# hard one second later, so that SIGXCPU, reported as cpu_time_exceeded, comes first).
# SIGTERM gets its default action back: bwrap is started with it ignored (_bwrap_base).
PRELUDE = (
    "def _confine(limits, ids):\n"
    "    import _signal, os, resource\n"
    "    _signal.signal(15, _signal.SIG_DFL)\n"
    "    for item in limits.split(',') if limits else ():\n"
    "        which, soft, hard = map(int, item.split(':'))\n"
    "        resource.setrlimit(which, (soft, hard))\n"
    "    if ids != '-':\n"
    "        uid, gid = map(int, ids.split(':'))\n"
    "        os.setgroups([])\n"
    "        os.setresgid(gid, gid, gid)\n"
    "        os.setresuid(uid, uid, uid)\n"
    "import sys\n"
    "_confine(sys.argv.pop(1), sys.argv.pop(1))\n"
    "del _confine\n"
)
# The start-up probe: the interpreter itself (a job may start ``sys.executable`` again),
# its stdlib, the SDK, the attempt's folders and the environments' root must be usable by
# the job's uid, through the real flags.
PROBE_SOURCE = (
    "import os, sys\n"
    "if sys.version_info < (3, 11):\n"
    "    sys.exit('Python %d.%d: jobs need Python 3.11 or newer' % sys.version_info[:2])\n"
    "if not os.access(sys.executable, os.X_OK):\n"
    "    sys.exit(f'the job uid cannot execute {sys.executable}')\n"
    "os.listdir(sys.base_prefix)\nos.listdir(os.path.dirname(os.__file__))\nimport json\n"
    "sys.path.insert(0, sys.argv[1])\nimport _batchyard_boot\n"
    "os.stat(sys.argv[2]) if len(sys.argv) > 2 else None\n"
    "os.listdir(os.getcwd())\n"
    "for name in ('OUTPUT_DIR', 'TMPDIR'):\n"
    "    open(os.path.join(os.environ[name], 'probe'), 'w').close()\n")
UID_COUNT = 10_000
JOB_USER = "batchyard-job"
UID_LOCK_DIR = Path("/run/batchyard/uids")
PROBE_TIMEOUT_SECONDS = 20.0
_SIGNALS = frozenset(member.value for member in signal.Signals)

log = logging.getLogger(__name__)


class SandboxUnavailable(BatchyardError):
    """BATCHYARD_SANDBOX=bubblewrap, but bubblewrap cannot run on this machine."""

    code = "sandbox_unavailable"


class IsolationLevel(StrEnum):
    BUBBLEWRAP = "bubblewrap"
    RLIMITS = "rlimits"
    # BATCHYARD_SANDBOX=off, and supervisors built without a sandbox (their own tests).
    UNCONFINED = "unconfined"
    # No level gives each attempt a uid of its own here: no job runs.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Placement:
    """Where the jobs of a level find what they need: the interpreter they run, the SDK
    folder on their path, the attempts' work root and the requirements environments."""

    python: str
    jobpath: Path
    work_root: Path
    env_root: Path
    uv_cache: Path
    # The runtime folder outside the data folder (rlimits and bubblewrap), else None.
    runtime_dir: Path | None = None


@dataclass(frozen=True)
class OperatorReport:
    """What the operator is told (startup log, health's operator view), never a tenant:
    why jobs cannot run and what to change, or what start-up chose instead of what was
    configured. Host paths belong here, not in the description (each attempt's log)."""

    problem: str | None = None
    fix: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobLimits:
    """Per-process limits of a job (its children inherit them); 0 = no limit."""

    memory_bytes: int = 1024 ** 3
    processes: int = 256
    open_files: int = 1024
    file_bytes: int = 256 * 1024 ** 2
    cpu_seconds: int = 0

    def argument(self) -> str:
        """The prelude's first argument; each value capped at this process's hard limit
        (the prelude may lower a limit but not raise it without CAP_SYS_RESOURCE)."""
        pairs = [(resource.RLIMIT_AS, self.memory_bytes, 0),
                 (resource.RLIMIT_NPROC, self.processes, 0),
                 (resource.RLIMIT_NOFILE, self.open_files, 0),
                 (resource.RLIMIT_FSIZE, self.file_bytes, 0),
                 # SIGXCPU at the soft limit (reported), SIGKILL a second later.
                 (resource.RLIMIT_CPU, self.cpu_seconds, 1),
                 (resource.RLIMIT_CORE, 0, 0)]
        items = []
        for which, value, slack in pairs:
            if value == 0 and which != resource.RLIMIT_CORE:
                continue
            hard = resource.getrlimit(which)[1]
            soft, top = value, value + slack
            if hard != resource.RLIM_INFINITY:
                soft, top = min(soft, hard), min(top, hard)
            items.append(f"{which}:{soft}:{top}")
        return ",".join(items)

    def describe(self) -> str:
        return ", ".join([
            f"memory {_size(self.memory_bytes) if self.memory_bytes else 'unlimited'}",
            f"{self.processes or 'unlimited'} processes",
            f"{self.open_files or 'unlimited'} open files",
            f"files up to {_size(self.file_bytes) if self.file_bytes else 'any size'}",
            *([f"CPU {self.cpu_seconds} s"] if self.cpu_seconds else [])])


def _size(value: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if value % (1 << shift) == 0:
            return f"{value >> shift} {unit}"
    return f"{value} bytes"


def explain_failure(detail: str, exit_code: int) -> str:
    """Prefix a failed attempt's error with the limit it hit, when it hit one.

    ``detail`` is the job's last error record ("MemoryError: …") or the exit summary.
    """
    reason = None
    if detail.startswith("MemoryError") or exit_code == -signal.SIGKILL:
        # SIGKILL that the supervisor did not send: the kernel's out-of-memory killer.
        reason = "out_of_memory"
    elif (detail.startswith("BlockingIOError") and "[Errno 11]" in detail) \
            or "can't start new thread" in detail:
        reason = "too_many_processes"
    elif "[Errno 27]" in detail or exit_code == -signal.SIGXFSZ:
        reason = "file_too_large"
    elif "[Errno 24]" in detail:
        reason = "too_many_open_files"
    elif exit_code == -signal.SIGXCPU:
        reason = "cpu_time_exceeded"
    return f"{reason}: {detail}" if reason else detail


@dataclass(frozen=True)
class _Identity:
    uid: int
    lock_fd: int


class UidPool:
    """Hands out one uid per running attempt, unique across every server on this host."""

    def __init__(self, base: int, count: int = UID_COUNT, lock_dir: Path = UID_LOCK_DIR) -> None:
        self.base, self.count, self.lock_dir = base, count, lock_dir

    def claim(self) -> _Identity:
        self.lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        start = secrets.randbelow(self.count)
        for offset in range(self.count):
            identity = self._try(self.base + (start + offset) % self.count)
            if identity is not None:
                return identity
        raise BatchyardError(f"all {self.count} job uids from {self.base} are in use")

    def hold(self, uid: int) -> _Identity | None:
        """``uid``'s lock if no process on this host holds it now, else None."""
        if not self.base <= uid < self.base + self.count:
            return None
        self.lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self._try(uid)

    def _try(self, uid: int) -> _Identity | None:
        fd = os.open(self.lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return _Identity(uid, fd)

    @staticmethod
    def release(identity: _Identity) -> None:
        os.close(identity.lock_fd)


def kill_user_processes(uid: int) -> None:
    """SIGKILL every process of ``uid`` (what a job left behind with ``setsid``)."""
    for _ in range(100):
        found = False
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{name}").st_uid != uid:
                    continue
                with open(f"/proc/{name}/stat", "rb") as handle:
                    if handle.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                        continue
                os.kill(int(name), signal.SIGKILL)
                found = True
        if not found:
            return


@dataclass(frozen=True)
class Confinement:
    """One attempt's launch: the command line around the job's interpreter."""

    prefix: tuple[str, ...]
    limits: str | None
    ids: str
    bubblewrap: bool
    # The attempt's own uid when nothing else (a PID namespace) ends its leftovers.
    sweep_uid: int | None = None
    # The attempt's own uid, whatever the level (None: the server's own).
    owner: int | None = None

    def hand_over(self, folder: Path) -> None:
        """Give what this process wrote into ``folder`` (a warm start's code, extracted
        after the child was spawned) to the attempt's uid, as confine() did for the rest."""
        if self.owner is None:
            return
        for dirpath, _folders, filenames in os.walk(folder):
            os.chown(dirpath, self.owner, self.owner, follow_symlinks=False)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), self.owner, self.owner,
                         follow_symlinks=False)

    def command(self, python: str, source: str, args: Sequence[str]) -> list[str]:
        if self.limits is None:
            return [*self.prefix, python, "-I", "-S", "-B", "-c", source, *args]
        return [*self.prefix, python, "-I", "-S", "-B", "-c", PRELUDE + source, self.limits,
                self.ids, *args]

    @property
    def environment(self) -> dict[str, str]:
        """The job's uid has no passwd entry: name it for getpass.getuser() and friends."""
        return {"USER": JOB_USER, "LOGNAME": JOB_USER} if self.ids != "-" else {}

    def kill_leftovers(self) -> None:
        """Kill what left the job's process group (setsid) and so outlived it."""
        if self.sweep_uid is not None:
            kill_user_processes(self.sweep_uid)

    def exit_status(self, code: int) -> int:
        """bwrap reports a child killed by signal N as exit 128 + N: make it -N again."""
        if self.bubblewrap and code - 128 in _SIGNALS:
            return 128 - code
        return code


class Sandbox:
    """The isolation level in force, decided once at start (runtime/box/sandbox_setup.py)."""

    def __init__(self, level: IsolationLevel, description: str, limits: JobLimits | None,
                 bwrap: Sequence[str] = (), uids: UidPool | None = None,
                 read_only: Sequence[Path] = (), placement: Placement | None = None,
                 report: OperatorReport | None = None) -> None:
        self.level = level
        self.description = description
        self.limits = limits
        # None: a supervisor built without a sandbox, which uses its own python and folders.
        self.placement = placement
        self.report = report or OperatorReport()
        # Whether the network guard's table fences this level's job uids (netguard.py).
        self.network_guard = False
        self._limits_arg = limits.argument() if limits is not None else None
        self._bwrap = tuple(bwrap)
        self._uids = uids
        self._read_only = tuple(read_only)
        # Folders the fixed part of the command already creates (each --dir only once).
        self._made = frozenset(bind_ancestors([str(p) for p in read_only], read_only,
                                              frozenset()))

    @property
    def per_attempt_uid(self) -> bool:
        return self._uids is not None

    @property
    def runs_jobs(self) -> bool:
        return self.level is not IsolationLevel.UNAVAILABLE

    @property
    def jobpath(self) -> Path:
        """The folder put first on the job's path: the SDK and its bootstrap."""
        return self.placement.jobpath if self.placement is not None else JOBPATH

    @property
    def uid_range(self) -> tuple[int, int] | None:
        """First and last uid of the attempts (None: they run as the server's own uid)."""
        if self._uids is None:
            return None
        return self._uids.base, self._uids.base + self._uids.count - 1

    def add_note(self, text: str) -> None:
        """Add what else confines jobs (the network guard) to the level's description."""
        self.description = f"{self.description}; {text}"

    @classmethod
    def unconfined(cls, placement: Placement | None = None) -> Sandbox:
        """No confinement: the server's own uid, its own session, a minimal environment."""
        why = ("BATCHYARD_SANDBOX=off, the operator's explicit choice" if placement is not None
               else "a supervisor without a sandbox")
        return cls(IsolationLevel.UNCONFINED, f"unconfined ({why}: jobs run as the server's "
                   "own uid; own session, minimal environment; no namespaces, no resource "
                   "limits)", None, placement=placement)

    @classmethod
    def unavailable(cls, problem: str, fix: str, placement: Placement | None = None) -> Sandbox:
        """No job runs; the operator learns why from ``report``, tenants only that."""
        return cls(IsolationLevel.UNAVAILABLE, "unavailable (jobs do not run: this host "
                   "cannot give each attempt an isolated identity; the operator is told "
                   "why)", None, placement=placement,
                   report=OperatorReport(problem=problem, fix=fix))

    @contextlib.contextmanager
    def confine(self, workspace: Workspace, read_only: Sequence[Path] = ()) -> \
            Iterator[Confinement]:
        """Claim the attempt's uid and hand it the workspace; give the uid back after."""
        identity = self._uids.claim() if self._uids is not None else None
        try:
            ids = "-"
            if identity is not None:
                ids = f"{identity.uid}:{identity.uid}"
                if not self._bwrap:
                    kill_user_processes(identity.uid)  # a crashed server's leftovers
                _chown_tree(workspace.root, identity.uid)
            yield Confinement(self._prefix(workspace, read_only), self._limits_arg, ids,
                              bool(self._bwrap), identity.uid if identity and not self._bwrap
                              else None, identity.uid if identity else None)
        finally:
            if identity is not None:
                # Under bubblewrap the PID namespace died with the attempt; without it, a
                # helper that left the group with setsid still runs under this uid.
                if not self._bwrap:
                    kill_user_processes(identity.uid)
                # The folders go before the uid does: released first, the uid could be
                # the next attempt's, another tenant's, while this one's files (owned by
                # it) were still there. A folder that will not go keeps its uid locked
                # until this process ends; the next start's sweep removes both.
                if workspace.remove():
                    UidPool.release(identity)
                else:
                    log.error("could not remove %s: its job uid %d stays unused until "
                              "this process restarts", workspace.root, identity.uid)

    def sweep_leftovers(self, work_root: Path, *, exclusive: bool) -> int:
        """Remove the attempt folders (cold and warm) and aliases that a previous life left
        in ``work_root`` (a SIGKILL runs no cleanup; each boot would add more); return how
        many entries went. Run at start, before any attempt.

        A folder is stale when the lock of the job uid owning it is free: a uid is given
        back only after its folder is gone (confine), so a live attempt's folder always
        has its uid held. When no other process uses the work folder (``exclusive``, from
        workspace.lock_work_root), every folder is this process's previous lives', whoever
        holds its uid now; when others do (several processes on one PostgreSQL data
        folder), one that no job uid owns may be theirs and is left alone. An alias goes
        once its folder has. A failure on one entry is logged and the rest swept.
        """
        if not work_root.is_dir():
            return 0
        removed = 0
        entries = sorted(work_root.iterdir(), key=lambda entry: entry.is_symlink())
        for entry in entries:
            try:
                if entry.is_symlink():
                    if exclusive or not entry.exists():
                        entry.unlink()
                        removed += 1
                    continue
                if not entry.is_dir():
                    continue
                owner = entry.stat().st_uid
                identity = self._uids.hold(owner) if self._uids is not None else None
                if identity is None and not exclusive:
                    continue
                try:
                    if identity is not None and not self._bwrap:
                        kill_user_processes(identity.uid)  # its setsid leftovers
                    if remove_tree(entry):
                        removed += 1
                    else:
                        log.warning("could not remove %s (left by an earlier run)", entry)
                finally:
                    if identity is not None:
                        UidPool.release(identity)
            except Exception:  # one odd entry must not keep the worker from starting
                log.exception("sweeping %s failed", entry)
        return removed

    def _prefix(self, workspace: Workspace, read_only: Sequence[Path]) -> tuple[str, ...]:
        if not self._bwrap:
            return ()
        binds: list[str] = []
        extra = [str(path) for path in read_only]
        folders = [str(workspace.code), str(workspace.output), str(workspace.tmp)]
        for directory in bind_ancestors([*folders, *extra], self._read_only, self._made):
            binds += ["--perms", "0711", "--dir", directory]
        for path in extra:
            binds += ["--ro-bind", path, path]
        for folder in folders:
            binds += ["--bind", folder, folder]
        return (*self._bwrap, *binds, "--chdir", str(workspace.code), "--")

    def probe(self, python: str, work_root: Path, env_root: Path | None = None) -> str | None:
        """Run the real command once; None when it works, else why not."""
        root = work_root / f"probe-{secrets.token_hex(4)}"
        workspace = Workspace(root, root / "code", root / "output", root / "tmp")
        try:
            for folder in (workspace.code, workspace.output, workspace.tmp):
                folder.mkdir(parents=True, mode=0o700)
            with self.confine(workspace) as confinement:
                done = subprocess.run(
                    confinement.command(python, PROBE_SOURCE, [
                        str(self.jobpath), *([str(env_root)] if env_root else [])]),
                    cwd=workspace.code, env={
                        "PATH": "/usr/bin:/bin", "OUTPUT_DIR": str(workspace.output),
                        "TMPDIR": str(workspace.tmp), "HOME": str(workspace.tmp)},
                    stdin=subprocess.DEVNULL, capture_output=True,
                    timeout=PROBE_TIMEOUT_SECONDS, start_new_session=True)
        except (OSError, subprocess.SubprocessError, BatchyardError) as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            shutil.rmtree(root, ignore_errors=True)
        if done.returncode != 0:
            lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
            return lines[-1] if lines else f"exit status {done.returncode}"
        return None


def bind_ancestors(paths: Sequence[str], bound: Sequence[Path],
                   made: frozenset[str]) -> list[str]:
    """The folders above ``paths`` that bwrap would otherwise create with the host's modes
    (a 0700 ``/root`` would hide a pyenv prefix from the job's uid), top down; not those
    inside a bound tree nor those in ``made``. They are made 0711: the job passes through
    to its folders but cannot list the (empty) skeleton of the data folder's path."""
    covered = ("/usr", "/etc", "/proc", "/dev", *(str(path) for path in bound))
    found: dict[str, None] = {}
    for path in paths:
        for parent in reversed(Path(path).parents):
            name = str(parent)
            if name in ("/", "/tmp") or name in made or any(
                    name == c or name.startswith(c + "/") for c in covered):
                continue
            found[name] = None
    return list(found)


def _chown_tree(root: Path, uid: int) -> None:
    os.chown(root, uid, uid)
    # mkdir(parents=True) made the attempt's folder with the umask's mode (0755): without a
    # mount namespace any other job could list it by path.
    os.chmod(root, 0o700)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)


