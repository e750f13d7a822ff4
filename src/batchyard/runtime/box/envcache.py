"""Job environments: one folder of installed packages per (requirements, interpreter).

``EnvCache.lease`` hands an attempt the folder its ``requirements.txt`` needs, installing
it first when no attempt did before. The folder is ``<root>/<key>``, the key a SHA-256 of
the requirements' normal form (domain/requirements.py), the job interpreter's
implementation, version and machine, and ``LAYOUT``. The boot script adds it with
``site.addsitedir`` (.pth files work); the sandbox mounts it read-only.

Decisions worth knowing:

* ``uv pip install --target``, binary wheels only: installing a wheel runs none of its
  code on the server (an sdist's build would, as the server's uid), and a flat folder is
  all a ``-I -S`` interpreter needs (no venv, no copy of the interpreter).
* Built in ``.tmp-<key>-<random>`` and renamed into place, completion marker inside, so
  a folder under its key is always whole. A per-key ``flock`` is held exclusively by
  the one attempt that builds it (the others wait, then use its result) and shared by
  every attempt using it; eviction takes it exclusively without waiting, so an
  environment in use is never removed.
* Waiting for another attempt's build of the same requirements is not a failure of
  one's own: that build is bounded by its own install timeout (its uv is killed then) and
  its lock is released if its process dies, so the wait is given as long as one build
  may take plus ``WAIT_SLACK_SECONDS``, counted again whenever a build ends (a waiting
  attempt may start the next one). Past that the attempt ends as interrupted
  (``InstallWaitTooLong``: retried when it has retries left), never as
  ``dependency_install_failed``; and a build this attempt starts itself after waiting gets
  the whole install timeout.
* Least recently used eviction (the lock file's mtime is the last use) after each
  build, until the total size recorded in the markers fits the cap.
* uv runs with an environment of its own: no variable of the server's but proxy, TLS
  and uv index settings; no configuration files (``UV_NO_CONFIG``); no Python
  downloads; the system's CA bundle; its cache in ``uv_cache``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import ssl
import stat
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from batchyard.errors import BatchyardError

# Part of every key: a change to how environments are built must not reuse old ones.
LAYOUT = "uv-pip-target-only-binary-v1"
MARKER = ".batchyard-env.json"
LOCK_POLL_SECONDS = 0.05
# Beyond one install timeout, for a build's own clean-up (chmod walk, rename, removal).
WAIT_SLACK_SECONDS = 60.0
MESSAGE_LIMIT = 1000
# What the server's environment may pass to uv: reaching an index, nothing else.
PASSED_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy",
                    "https_proxy", "all_proxy", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR",
                    "UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL", "UV_INDEX",
                    "UV_NATIVE_TLS", "UV_SYSTEM_CERTS", "UV_HTTP_TIMEOUT")
_CROSS = "\N{MULTIPLICATION SIGN}"
_TAG_SOURCE = ("import platform, sys; print(sys.implementation.name, sys.version_info[0], "
               "sys.version_info[1], platform.machine(), sep='-')")


class InstallFailed(BatchyardError):
    """The job's requirements could not be installed."""

    code = "dependency_install_failed"


class InstallInterrupted(BatchyardError):
    """The install (or the wait for another attempt's) was stopped: cancel or shutdown."""

    code = "install_interrupted"


class InstallWaitTooLong(InstallInterrupted):
    """Another attempt held the install of the same requirements longer than an install may
    take; this attempt was interrupted (retried when it has retries left)."""


class Interrupt:
    """Stops an install from another thread (a cancel, a shutdown); set once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooks: list[Callable[[], None]] = []
        self.reason: str | None = None

    def fire(self, reason: str) -> None:
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            hooks = list(self._hooks)
        for hook in hooks:
            hook()

    @contextlib.contextmanager
    def hooked(self, hook: Callable[[], None]) -> Iterator[None]:
        """Run ``hook`` on ``fire`` while inside (at once if fired already)."""
        with self._lock:
            fired = self.reason is not None
            self._hooks.append(hook)
        if fired:
            hook()
        try:
            yield
        finally:
            with self._lock:
                self._hooks.remove(hook)


@dataclass(frozen=True)
class Environment:
    key: str
    path: Path
    # True when this lease installed it; False when it was there (or another attempt
    # installed it while this one waited).
    built: bool
    seconds: float


class EnvCache:
    def __init__(self, root: Path, python: str, uv_cache: Path, max_bytes: int,
                 install_timeout: float, uv: str | None = None,
                 wait_slack: float = WAIT_SLACK_SECONDS) -> None:
        self.root = root
        self.python = python
        self.uv_cache = uv_cache
        self.max_bytes = max_bytes
        self.install_timeout = install_timeout
        self.wait_slack = wait_slack
        self.uv = uv or _find_uv()
        self._locks = root / ".locks"
        self._home = root / ".home"
        self._tag: str | None = None
        self._tag_lock = threading.Lock()
        self._made = False
        self.uv_environment = _uv_environment(self._home, uv_cache)
        if root.is_dir():
            self._clean_leftovers()

    def _make_folders(self) -> None:
        """On first use: a server whose jobs have no requirements.txt gets no folders."""
        if self._made:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        # Jobs without a mount namespace reach their environment by path: traverse only.
        os.chmod(self.root, 0o711)
        for private in (self._locks, self._home, self.uv_cache):
            private.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._made = True

    # --- keys ------------------------------------------------------------------------
    def interpreter_tag(self) -> str:
        """``cpython-3-11-x86_64``: what a wheel's compatibility depends on (asked once)."""
        with self._tag_lock:
            if self._tag is None:
                done = subprocess.run([self.python, "-I", "-S", "-c", _TAG_SOURCE],
                                      capture_output=True, check=True, timeout=30)
                self._tag = done.stdout.decode().strip()
            return self._tag

    def key_for(self, normalised: str) -> str:
        text = f"{LAYOUT}\n{self.interpreter_tag()}\n{normalised}"
        return hashlib.sha256(text.encode()).hexdigest()

    # --- leases ----------------------------------------------------------------------
    @contextlib.contextmanager
    def lease(self, normalised: str, on_output: Callable[[str], None],
              interrupt: Interrupt | None = None) -> Iterator[Environment]:
        """The environment of ``normalised`` requirements, built first if need be; held
        (never evicted) until the block ends. Raise ``InstallFailed`` with the installer's
        last message, or ``InstallInterrupted`` (``InstallWaitTooLong``)."""
        self._make_folders()
        started = time.monotonic()
        key = self.key_for(normalised)
        final = self.root / key
        fd = os.open(self._locks / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            built = False
            while True:
                self._wait_lock(fd, fcntl.LOCK_SH, interrupt)
                if (final / MARKER).is_file():
                    break
                fcntl.flock(fd, fcntl.LOCK_UN)
                self._wait_lock(fd, fcntl.LOCK_EX, interrupt)
                if not (final / MARKER).is_file():
                    # Its own build: the whole install timeout, whatever the wait took.
                    self._build(key, normalised, final, on_output,
                                time.monotonic() + self.install_timeout, interrupt)
                    built = True
                # Back to shared through unlocked: the loop looks at the folder again.
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.utime(fd)  # its last use, for eviction
            if built:
                self.evict(keep=key)
            yield Environment(key, final, built, time.monotonic() - started)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def lease_built(self, normalised: str) -> Iterator[Environment]:
        """A lease on the environment of ``normalised`` only if it is installed now; never
        a build, never a wait (a warm start's box, built off any attempt's path). Raise
        ``OSError`` when it is not there or is being built or evicted."""
        key = self.key_for(normalised)
        final = self.root / key
        fd = os.open(self._locks / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise OSError("its requirements environment is being built or evicted") \
                    from exc
            if not (final / MARKER).is_file():
                raise OSError("its requirements environment is not installed")
            os.utime(fd)
            yield Environment(key, final, False, 0.0)
        finally:
            os.close(fd)

    def _wait_lock(self, fd: int, mode: int, interrupt: Interrupt | None) -> None:
        """Take the lock, waiting out another attempt's build (one build's time at most)."""
        allowed = self.install_timeout + self.wait_slack
        deadline = time.monotonic() + allowed
        # Polled, not blocking: a cancel or the deadline must end the wait.
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            if interrupt is not None and interrupt.reason is not None:
                raise InstallInterrupted(interrupt.reason)
            if time.monotonic() >= deadline:
                raise InstallWaitTooLong(
                    f"waited {allowed:g} s for another attempt installing the same "
                    "requirements, longer than an install may take; this attempt is "
                    "interrupted (retried when it has retries left), not failed")
            time.sleep(LOCK_POLL_SECONDS)

    # --- building --------------------------------------------------------------------
    def _build(self, key: str, normalised: str, final: Path, on_output: Callable[[str], None],
               deadline: float, interrupt: Interrupt | None) -> None:
        staging = self.root / f".tmp-{key}-{secrets.token_hex(4)}"
        staging.mkdir(mode=0o700)
        try:
            site = staging / "site"
            listing = staging / "requirements.txt"
            listing.write_text(normalised)
            command = [self.uv, "pip", "install", "--only-binary", ":all:", "--python",
                       self.python, "--target", str(site), "--compile-bytecode",
                       "--no-progress", "--color", "never", "-r", str(listing)]
            code, lines, stopped = self._run_uv(command, staging, on_output, deadline,
                                                interrupt)
            if stopped == "interrupted":
                raise InstallInterrupted(interrupt.reason if interrupt else None)
            if stopped == "timeout":
                raise InstallFailed(f"the install did not finish within "
                                    f"{self.install_timeout:g} s")
            if code != 0:
                raise InstallFailed(last_message(lines) or f"uv exited with code {code}")
            site.mkdir(exist_ok=True)  # requirements that select nothing on this platform
            (site / ".lock").unlink(missing_ok=True)  # uv's, world-writable
            size = _open_to_everyone(site)
            (site / MARKER).write_text(json.dumps({
                "requirements": normalised, "interpreter": self.interpreter_tag(),
                "layout": LAYOUT, "size": size, "built_at": time.time()}))
            os.chmod(site / MARKER, 0o644)
            if final.exists():  # a folder without its marker: never whole, so not in use
                os.rename(final, self.root / f".trash-{key}-{secrets.token_hex(4)}")
            os.rename(site, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _run_uv(self, command: list[str], cwd: Path, on_output: Callable[[str], None],
                deadline: float, interrupt: Interrupt | None) -> \
            tuple[int, list[str], str | None]:
        """Run uv, every output line to ``on_output``; (exit code, last lines, why stopped)."""
        process = subprocess.Popen(command, cwd=cwd, env=self.uv_environment,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        stopped: list[str] = []

        def stop(why: str) -> None:
            stopped.append(why)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

        timer = threading.Timer(max(0.0, deadline - time.monotonic()), stop, ("timeout",))
        timer.daemon = True
        lines: deque[str] = deque(maxlen=50)
        hook = interrupt.hooked(lambda: stop("interrupted")) if interrupt is not None \
            else contextlib.nullcontext()
        assert process.stdout is not None
        with hook, process.stdout:
            timer.start()
            try:
                for raw in process.stdout:
                    line = raw.decode("utf-8", "replace").rstrip()
                    if line:
                        lines.append(line)
                        on_output(line)
            finally:
                code = process.wait()
                timer.cancel()
        return code, list(lines), stopped[0] if stopped else None

    # --- eviction --------------------------------------------------------------------
    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used environments not in use until the total fits the
        cap; return their keys. One in use (its lock held shared) is skipped."""
        found: list[tuple[float, str, int]] = []
        for entry in os.scandir(self.root):
            if entry.name.startswith("."):
                continue
            try:
                size = int(json.loads((Path(entry.path) / MARKER).read_text())["size"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            try:
                used = (self._locks / f"{entry.name}.lock").stat().st_mtime
            except OSError:
                used = 0.0
            found.append((used, entry.name, size))
        total = sum(size for _, _, size in found)
        removed: list[str] = []
        for _, key, size in sorted(found):
            if total <= self.max_bytes:
                break
            if key != keep and self._remove_unused(key):
                total -= size
                removed.append(key)
        return removed

    def _remove_unused(self, key: str) -> bool:
        fd = os.open(self._locks / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # in use, or being built
            if not (self.root / key / MARKER).is_file():
                return False
            trash = self.root / f".trash-{key}-{secrets.token_hex(4)}"
            os.rename(self.root / key, trash)
        finally:
            os.close(fd)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def _clean_leftovers(self) -> None:
        """Remove what a crashed server left: half-built and half-removed folders."""
        self._make_folders()
        for entry in os.scandir(self.root):
            if entry.name.startswith(".trash-"):
                shutil.rmtree(entry.path, ignore_errors=True)
            elif entry.name.startswith(".tmp-"):
                key = entry.name.split("-")[1]
                fd = os.open(self._locks / f"{key}.lock",
                             os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    # Held: another server on this data folder is building it right now.
                    with contextlib.suppress(BlockingIOError):
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        shutil.rmtree(entry.path, ignore_errors=True)
                finally:
                    os.close(fd)
        self.evict()


def last_message(lines: list[str]) -> str:
    """The installer's last message: from its last ``error:`` line (or the cross that
    starts one in uv's decorated output) to the end, on one line."""
    starts = ("error", _CROSS)
    start = max((index for index, line in enumerate(lines)
                 if line.lstrip().lower().startswith(starts)), default=len(lines) - 1)
    text = " ".join(" ".join(line.split()) for line in lines[max(start, 0):])
    return text[:MESSAGE_LIMIT]


def _find_uv() -> str:
    import uv  # the PyPI package: its wheel carries the binary

    return str(uv.find_uv_bin())


def _uv_environment(home: Path, cache: Path) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "XDG_CONFIG_HOME": str(home / ".config"), "UV_CACHE_DIR": str(cache),
           "UV_NO_CONFIG": "1", "UV_PYTHON_DOWNLOADS": "never", "NO_COLOR": "1"}
    env.update({name: os.environ[name] for name in PASSED_VARIABLES if name in os.environ})
    if not {"SSL_CERT_FILE", "UV_NATIVE_TLS", "UV_SYSTEM_CERTS"} & env.keys():
        # uv trusts only its built-in roots; the job's Python trusts the system's store,
        # where an operator adds a company CA or a TLS-inspecting proxy's.
        paths = ssl.get_default_verify_paths()
        cafile = paths.cafile or paths.openssl_cafile
        if cafile and os.path.isfile(cafile):
            env["SSL_CERT_FILE"] = cafile
    return env


def _open_to_everyone(site: Path) -> int:
    """Make the tree readable by any job uid (read-only); return its size in bytes."""
    size = 0
    for dirpath, _dirnames, filenames in os.walk(site):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode):
                os.chmod(path, 0o755 if info.st_mode & 0o111 else 0o644)
                size += info.st_size
    return size
