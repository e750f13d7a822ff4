"""Run one attempt: spawn the child, pump its output, enforce its deadline, report.

The child's exit is detected by a blocking ``waitpid`` (``Popen.wait()`` without
a timeout), never by polling; the deadline is a timer that kills the whole tree.
"""

from __future__ import annotations

import contextlib
import json
import logging
import marshal
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchyard.domain.attempts import AttemptResult, ClaimedAttempt
from batchyard.domain.executions import (
    DEPENDENCY_INSTALL_FAILED,
    SANDBOX_UNAVAILABLE,
    SETUP_FAILED,
    AttemptOutcome,
)
from batchyard.domain.requirements import normalise_requirements
from batchyard.errors import (
    BatchyardError,
    InvalidCode,
    internal_error_message,
    new_reference,
)
from batchyard.logs import execution_context
from batchyard.runtime.box.diskwatch import describe_violation, disk_usage
from batchyard.runtime.box.envcache import EnvCache, InstallFailed, InstallInterrupted, Interrupt
from batchyard.runtime.box.logsink import LogSink, LogWriter
from batchyard.runtime.box.processes import (
    kill_group_now,
    kill_tree,
    process_table,
    tree_below,
)
from batchyard.runtime.box.pump import OutputPump, Part
from batchyard.runtime.box.resources import (
    ResourceUsage,
    UsageMeter,
    reported_usage,
    wait_with_usage,
    with_report,
)
from batchyard.runtime.box.sandbox import (
    Confinement,
    IsolationLevel,
    Sandbox,
    explain_failure,
)
from batchyard.runtime.box.warm import WarmKey, WarmPool, WarmStats
from batchyard.runtime.box.workspace import (
    SetupTimedOut,
    Workspace,
    collect_outputs,
    create_workspace,
    extract_code,
    new_workspace,
)
from batchyard.runtime.channel.dispatcher import Reply, RequestDispatcher, RequestHandler

log = logging.getLogger("batchyard.supervisor")
# A constant, not generated source: the job path comes in as argv[1].
BOOT_COMMAND = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
                "import _batchyard_boot; _batchyard_boot.start()")
# Longest SDK record read from the channel (the SDK learns it from the context and refuses
# longer requests itself); a longer line is not read as a record: see _on_long_channel_line.
CHANNEL_LINE_LIMIT = 1024 * 1024
LAST_REQUEST_GRACE_SECONDS = 2.0
# Records the job sends without waiting for a reply (the SDK writes "type" first).
_ONE_WAY_RECORD = re.compile(rb'\s*\{\s*"type"\s*:\s*"(log|error|result|usage)"')
LOG_FLUSH_SECONDS = 0.2
# What the tenant learns when this host cannot isolate jobs; the operator learns why (the
# startup log, health's operator view). No host detail: it is the tenant's log.
SANDBOX_UNAVAILABLE_MESSAGE = (f"{SANDBOX_UNAVAILABLE}: this server cannot run jobs in "
                               "isolation at the moment, so the job was not started; the "
                               "server's operator has been told why")
DISK_CHECK_SECONDS = 1.0
_LEVELS = {"debug", "info", "warn", "error", "fatal"}


@dataclass(frozen=True)
class RuntimeLimits:
    kill_grace_seconds: float
    log_cap_bytes: int
    log_line_max_bytes: int
    artifact_cap_bytes: int
    artifact_max_files: int
    # Bytes the attempt's writable folders may hold (0: no limit); see runtime/box/diskwatch.py.
    disk_bytes: int = 0
    # Extracting the code; dependency installs are bounded by the environment cache.
    setup_timeout_seconds: float = 120.0


class _Stops:
    """Where a stop from outside goes: to the step running now, or kept for the next."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: tuple[AttemptOutcome, str] | None = None
        self._current: Callable[[AttemptOutcome, str], None] | None = None

    def stop(self, reason: AttemptOutcome, detail: str) -> None:
        with self._lock:
            self._pending = (reason, detail)
            current = self._current
        if current is not None:
            current(reason, detail)

    def attach(self, stopper: Callable[[AttemptOutcome, str], None]) -> None:
        with self._lock:
            self._current = stopper
            pending = self._pending
        if pending is not None:
            stopper(*pending)

    def detach(self) -> None:
        with self._lock:
            self._current = None

    def pending(self) -> bool:
        with self._lock:
            return self._pending is not None


@dataclass
class _Child:
    """A launched job process and the ends this process holds of it."""

    process: subprocess.Popen[bytes]
    # The channel: SDK records and requests in, replies out.
    channel: socket.socket
    # Closed when the attempt is over: the job sees EOF and ends its group (-1: closed).
    liveness_write: int
    # When it was handed its context (the deadline starts there), monotonic.
    started: float = 0.0
    exit_code: int = 0
    runtime: float = 0.0
    usage: ResourceUsage | None = None

    def close_liveness(self) -> None:
        if self.liveness_write >= 0:
            os.close(self.liveness_write)
            self.liveness_write = -1


@dataclass
class _WarmBox:
    """A child spawned ahead of its attempt (runtime/box/warm.py): its folders, its uid
    (the confinement), its environment lease, all held in ``held`` until it is discarded."""

    key: WarmKey
    child: _Child
    workspace: Workspace
    confinement: Confinement
    site_dirs: tuple[str, ...]
    held: contextlib.ExitStack
    born: float


@dataclass
class _Stop:
    """Why the supervisor killed the child, when it did."""

    reason: AttemptOutcome | None = None
    detail: str | None = None


class Supervisor:
    def __init__(self, python: str, work_root: Path, limits: RuntimeLimits,
                 sandbox: Sandbox | None = None,
                 requests: Mapping[str, RequestHandler] | None = None,
                 environments: EnvCache | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.python = python
        # The wall clock of log records and of each attempt's end.
        self.clock = clock
        self.work_root = work_root
        self.limits = limits
        # Sandbox: how each attempt is confined (runtime/box/sandbox.py); without one (tests of
        # the supervisor alone) the child runs unconfined, as its own session.
        self.sandbox = sandbox or Sandbox.unconfined()
        # Requests the job makes over its channel ("db", "email"), answered in the server.
        self.requests: dict[str, RequestHandler] = dict(requests or {})
        # Dependencies: where jobs' requirements.txt are installed (runtime/box/envcache.py).
        self.environments = environments
        # By (execution, attempt number): a late stop or end of an old attempt must never
        # reach a newer attempt of the same execution running on this node.
        self._running: dict[tuple[str, int], _Stops] = {}
        self._lock = threading.Lock()
        # Warm starts (runtime/box/warm.py): off until enable_warm_starts.
        self.warm: WarmPool[_WarmBox] | None = None
        # This process's share of work_root (workspace.lock_work_root), given up by close.
        self.work_root_lock: int | None = None

    def enable_warm_starts(self, size: int, per_key: int, idle_seconds: float,
                           max_bytes: int) -> None:
        """Keep up to ``size`` interpreters spawned ahead of their attempts, for the keys
        in demand; nothing where jobs do not run (fail closed: no box is ever built)."""
        # Not where jobs run unconfined: there every job shares the server's uid, and a
        # ready box's folders would be a standing target for the job running beside it.
        if size <= 0 or self.sandbox.level in (IsolationLevel.UNAVAILABLE,
                                               IsolationLevel.UNCONFINED):
            return
        self.warm = WarmPool(self._spawn_warm, self._discard_warm,
                             lambda box: box.child.process.poll() is None, size, per_key,
                             idle_seconds, max_bytes, measure=self._measure_warm,
                             pid=lambda box: box.child.process.pid)

    def close(self) -> None:
        """Retire the warm interpreters (running attempts are the pool's to stop)."""
        if self.warm is not None:
            self.warm.close()
        if self.work_root_lock is not None:
            os.close(self.work_root_lock)
            self.work_root_lock = None

    def warm_stats(self) -> WarmStats | None:
        return self.warm.stats() if self.warm is not None else None

    def warm_key(self, attempt: ClaimedAttempt) -> WarmKey:
        """The key an attempt's warm process must have been built for."""
        try:
            return WarmKey(normalise_requirements(attempt.requirements or ""))
        except InvalidCode:
            return WarmKey("\0unusable")  # never built: such an attempt fails cold

    def warm_pids(self) -> set[int]:
        """Host pids of the ready warm processes and their descendants (bwrap's child)."""
        if self.warm is None:
            return set()
        table = process_table(max_age=0)
        found: set[int] = set()
        for pid in self.warm.ready_pids():
            found |= {pid} | table.descendants(pid)
        return found

    def stop(self, execution_id: str, reason: AttemptOutcome, detail: str,
             number: int | None = None) -> bool:
        """Kill a running attempt from outside (cancel, lost lease, shutdown): attempt
        ``number`` of the execution, or whichever of its attempts runs here."""
        with self._lock:
            found = [stops for (execution, attempt), stops in self._running.items()
                     if execution == execution_id and number in (None, attempt)]
        for stops in found:
            stops.stop(reason, detail)
        return bool(found)

    def run(self, attempt: ClaimedAttempt, write_logs: LogWriter) -> AttemptResult:
        # A stop that arrives between two steps (after the install, before the child is
        # spawned) is kept and applied by the next step, never lost.
        stops = _Stops()
        key = (attempt.execution_id, attempt.number)
        with self._lock:
            self._running[key] = stops
        try:
            # Server log lines about this attempt carry its execution id (logs.py).
            with execution_context(attempt.execution_id):
                return self._run(attempt, write_logs, stops)
        finally:
            with self._lock:
                if self._running.get(key) is stops:
                    del self._running[key]

    def _run(self, attempt: ClaimedAttempt, write_logs: LogWriter,
             stops: _Stops) -> AttemptResult:
        sink = LogSink(write_logs, self.clock,
                       secrets=attempt.secret_values, first_seq=attempt.log_seq,
                       used_bytes=attempt.log_bytes, truncated=attempt.log_truncated,
                       cap_bytes=self.limits.log_cap_bytes)
        sink.add("log", f"batchyard: attempt {attempt.number} of execution "
                 f"{attempt.execution_id} (revision {attempt.revision}) on {attempt.worker}; "
                 f"isolation: {self.sandbox.description}; "
                 f"deadline {attempt.deadline_seconds:g} s", "info")
        if not self.sandbox.runs_jobs:
            # Fail closed: nothing of the job is installed, extracted or spawned.
            sink.add("log", f"batchyard: {SANDBOX_UNAVAILABLE_MESSAGE}", "error")
            return AttemptResult(AttemptOutcome.FAILED, 0.0, None, SANDBOX_UNAVAILABLE_MESSAGE,
                                 self.clock(), logs=sink.close(),
                                 final_failure=SANDBOX_UNAVAILABLE)
        # Dependencies: the environment stays held (never evicted) until the child has ended.
        held = contextlib.ExitStack()
        site_dirs, ended = self._environment(attempt, sink, held, stops)
        if ended is not None:
            held.close()
            return replace(ended, logs=sink.close())
        try:
            box = self._take_warm(attempt, site_dirs)
        except Exception:  # never an attempt lost to the pool: it starts cold
            log.exception("warm pool: taking a warm interpreter failed; starting cold")
            box = None
        if box is not None:
            result = self._run_warm(attempt, box, sink, held, stops)
            if result is not None:
                return result
        # Setup is bounded on its own (dependency installs above have their own timeout).
        setup_started = time.monotonic()
        try:
            workspace = create_workspace(
                self.work_root, attempt.execution_id, attempt.number, attempt.code,
                deadline=setup_started + self.limits.setup_timeout_seconds)
        except (BatchyardError, SetupTimedOut, OSError) as exc:
            held.close()
            return self._setup_failed(attempt, sink, exc)
        sink.add("log", f"batchyard: code ready in {time.monotonic() - setup_started:.2f} s",
                 "info")
        try:
            # Sandbox: the attempt's uid is claimed for the child's lifetime only.
            with self.sandbox.confine(workspace, [Path(d) for d in site_dirs]) as confinement:
                child = self._spawn(workspace, confinement, site_dirs)
                result = self._run_child(attempt, child, workspace, sink, confinement, stops,
                                         site_dirs)
        except BaseException:
            sink.close()
            raise
        finally:
            workspace.remove()
            held.close()
        return replace(result, logs=sink.close())

    # --- warm starts (runtime/box/warm.py) ------------------------------------------------
    def _take_warm(self, attempt: ClaimedAttempt, site_dirs: tuple[str, ...]) -> \
            _WarmBox | None:
        if self.warm is None:
            return None
        box = self.warm.take(self.warm_key(attempt))
        if box is not None and box.site_dirs != site_dirs:
            # Built for the same requirements but another folder (an environment evicted
            # and installed again since): never a mismatched box.
            self._discard_warm(box)
            return None
        return box

    def _run_warm(self, attempt: ClaimedAttempt, box: _WarmBox, sink: LogSink,
                  held: contextlib.ExitStack, stops: _Stops) -> AttemptResult | None:
        """The attempt in a box spawned ahead: its code extracted into the box's folders and
        handed to its uid, then the context sent; the box is discarded after, whatever
        happened (never a second attempt). None: the box died before the context was
        sent (killed from outside): the attempt is not started there, but cold."""
        setup_started = time.monotonic()
        workspace = box.workspace
        # The execution's folder by its name, as a cold start names it (the e-mail
        # handler finds the output folder so, and so does an operator).
        alias = self.work_root / (f"{attempt.execution_id}-{attempt.number}-warm-"
                                  f"{workspace.root.name.removeprefix('warm-')}")
        cold = False  # the box died first: the attempt goes on cold, with its lease on held
        try:
            try:
                extract_code(workspace, attempt.code,
                             deadline=setup_started + self.limits.setup_timeout_seconds)
                box.confinement.hand_over(workspace.code)
                alias.symlink_to(workspace.root.name)
            except (BatchyardError, SetupTimedOut, OSError) as exc:
                held.close()
                return self._setup_failed(attempt, sink, exc)
            if box.child.process.poll() is not None:
                log.warning("attempt %s/%d: its warm interpreter had ended (exit status %s); "
                            "starting it cold", attempt.execution_id, attempt.number,
                            box.child.process.returncode)
                cold = True
                return None
            sink.add("log", f"batchyard: code ready in {time.monotonic() - setup_started:.2f}"
                     f" s (warm start: the interpreter was spawned "
                     f"{setup_started - box.born:.1f} s ahead)", "info")
            try:
                result = self._run_child(attempt, box.child, workspace, sink,
                                         box.confinement, stops, box.site_dirs)
            except BaseException:
                sink.close()
                raise
            return replace(result, logs=sink.close())
        finally:
            with contextlib.suppress(OSError):
                alias.unlink()
            try:
                self._discard_warm(box)
            except Exception:  # the attempt's end stands; what is left is the sweep's
                log.exception("attempt %s/%d: discarding its warm interpreter failed",
                              attempt.execution_id, attempt.number)
            if not cold:
                held.close()

    def _spawn_warm(self, key: WarmKey) -> _WarmBox:
        """What the cold path spawns for an attempt of ``key``, before the attempt: the
        same folders, uid, command line and environment (the warm pool's thread)."""
        held = contextlib.ExitStack()
        try:
            site_dirs: tuple[str, ...] = ()
            if key.requirements:
                if self.environments is None:
                    raise OSError("this worker has no environment cache")
                # Never an install here: only an environment installed now is leased.
                environment = held.enter_context(
                    self.environments.lease_built(key.requirements))
                site_dirs = (str(environment.path),)
            workspace = new_workspace(self.work_root, "warm")
            held.callback(workspace.remove)
            confinement = held.enter_context(
                self.sandbox.confine(workspace, [Path(d) for d in site_dirs]))
            child = self._spawn(workspace, confinement, site_dirs)
        except BaseException:
            held.close()
            raise
        return _WarmBox(key, child, workspace, confinement, site_dirs, held, time.monotonic())

    def _discard_warm(self, box: _WarmBox) -> None:
        """End a warm process (ready or after its attempt) and free what it held."""
        child = box.child
        # Its boot kills its own group when the liveness pipe closes; the kills below
        # are for a box whose boot has not reached that point yet.
        child.close_liveness()
        if child.process.poll() is None:
            kill_group_now(child.process.pid)
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=5)
        for stream in (child.process.stdin, child.process.stdout, child.process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        child.channel.close()
        # The uid (after its leftovers are killed), the folders, the environment lease.
        box.held.close()

    @staticmethod
    def _measure_warm(box: _WarmBox) -> int:
        """Resident bytes of a ready box's processes (bwrap and the interpreter)."""
        table = process_table(max_age=0)
        total = 0
        for pid in {box.child.process.pid} | table.descendants(box.child.process.pid):
            with contextlib.suppress(OSError, ValueError, IndexError), \
                    open(f"/proc/{pid}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        return total

    def _environment(self, attempt: ClaimedAttempt, sink: LogSink, held: contextlib.ExitStack,
                     stops: _Stops) -> tuple[tuple[str, ...], AttemptResult | None]:
        """Dependencies: the folder of the job's requirements, installed first when no
        attempt did before (SPEC 5), entered into ``held``; or how the attempt ended.

        Install time is not the job's run time (the deadline starts with the child): it
        is bounded by the cache's own install timeout, and a cancel or a shutdown stops it.
        """
        if not attempt.requirements:
            return (), None
        try:
            normalised = normalise_requirements(attempt.requirements)
        except InvalidCode as exc:  # uploaded before such lines were refused at upload
            return (), self._install_failed(sink, exc.message)
        if not normalised:
            return (), None
        if self.environments is None:
            return (), self._install_failed(sink, "this worker has no environment cache")
        interrupt = Interrupt()
        stop = _Stop()

        def stopper(reason: AttemptOutcome, detail: str) -> None:
            stop.reason, stop.detail = reason, detail
            interrupt.fire(detail)

        flushed = [time.monotonic()]

        def on_output(line: str) -> None:
            sink.add("log", f"pip: {line}", "info")
            if time.monotonic() - flushed[0] >= LOG_FLUSH_SECONDS:  # a live tail meanwhile
                flushed[0] = time.monotonic()
                sink.flush()

        stops.attach(stopper)
        try:
            environment = held.enter_context(
                self.environments.lease(normalised, on_output, interrupt))
        except InstallInterrupted as exc:
            outcome = stop.reason or AttemptOutcome.INTERRUPTED
            # Not stopped from outside: the cache's own reason (a wait for another build).
            detail = stop.detail or exc.message
            sink.add("log", f"batchyard: attempt {attempt.number} ended while installing its "
                     f"requirements: {outcome.value} ({detail})", "info")
            return (), AttemptResult(outcome, 0.0, None, detail, self.clock())
        except InstallFailed as exc:
            return (), self._install_failed(sink, exc.message)
        finally:
            stops.detach()
        if stop.reason is not None:  # stopped just as the install ended: the job never starts
            return (), AttemptResult(stop.reason, 0.0, None, stop.detail, self.clock())
        how = (f"installed in {environment.seconds:.1f} s" if environment.built
               else "cached environment" + (f", ready after {environment.seconds:.1f} s"
                                            if environment.seconds >= 0.1 else ""))
        sink.add("log", f"batchyard: requirements: {how} ({environment.key[:12]})", "info")
        return (str(environment.path),), None

    def _setup_failed(self, attempt: ClaimedAttempt, sink: LogSink,
                      exc: BatchyardError | SetupTimedOut | OSError) -> AttemptResult:
        if isinstance(exc, BatchyardError):  # the validator's refusal: the tenant's to read
            detail = f"code could not be prepared: {exc.message}"
        elif isinstance(exc, SetupTimedOut):
            detail = (f"the code was not ready within {self.limits.setup_timeout_seconds:g} s "
                      f"({exc})")
        else:
            # An OSError names host paths: the tenant gets a reference to the server log.
            reference = new_reference()
            log.error("attempt %s/%d: setup failed (reference %s)", attempt.execution_id,
                      attempt.number, reference, exc_info=exc)
            detail = internal_error_message(reference)
        sink.add("log", f"batchyard: {SETUP_FAILED}: {detail}", "error")
        return AttemptResult(AttemptOutcome.FAILED, 0.0, None, f"{SETUP_FAILED}: {detail}",
                             self.clock(), logs=sink.close(), final_failure=SETUP_FAILED)

    def _install_failed(self, sink: LogSink, message: str) -> AttemptResult:
        sink.add("log", f"batchyard: the job's requirements could not be installed: {message}",
                 "error")
        return AttemptResult(AttemptOutcome.FAILED, 0.0, None,
                             f"{DEPENDENCY_INSTALL_FAILED}: {message}", self.clock(),
                             final_failure=DEPENDENCY_INSTALL_FAILED)

    def _run_child(self, attempt: ClaimedAttempt, child: _Child, workspace: Workspace,
                   sink: LogSink, confinement: Confinement, stops: _Stops,
                   site_dirs: tuple[str, ...] = ()) -> AttemptResult:
        """Hand the spawned child its context, route what it says, watch it to its end,
        then report."""
        code_dir, output_dir, tmp_dir = workspace.code, workspace.output, workspace.tmp
        # First of all: the child is blocked reading its context until this is written;
        # the deadline starts here. A stop that came during setup: main() never runs (the
        # watch below applies the stop at once and kills the waiting child).
        child.started = time.monotonic()
        if not stops.pending():
            self._send_context(child.process, self._context(attempt, output_dir, site_dirs))
        elif child.process.stdin is not None:
            child.process.stdin.close()  # the child reads EOF: no context, no main()
        errors: list[str] = []
        # The job's own figures at its end (the boot's usage record), to join the measured.
        reports: list[ResourceUsage] = []
        dispatcher, on_line = self._route(attempt, sink, errors, reports, child.channel)
        stop = self._watch(attempt, child, sink, confinement, stops, on_line,
                           (code_dir, output_dir, tmp_dir))
        runtime = child.runtime
        dispatcher.close(timeout=LAST_REQUEST_GRACE_SECONDS)
        # Wakes a request thread still blocked writing to a job that escaped the kill.
        with contextlib.suppress(OSError):
            child.channel.shutdown(socket.SHUT_RDWR)
        child.channel.close()
        outputs = collect_outputs(output_dir, self.limits.artifact_max_files,
                                  self.limits.artifact_cap_bytes)
        for skipped in outputs.skipped:
            sink.add("log", f"Output not kept: {skipped}", "warn")
        outcome, error = self._outcome(child.exit_code, stop, errors)
        sink.add("log", f"batchyard: attempt {attempt.number} ended: {outcome.value}"
                 + (f" ({error})" if error else "") + f" after {runtime:.3f} s", "info")
        usage = with_report(child.usage, reports[-1] if reports else None)
        return AttemptResult(outcome, runtime, child.exit_code, error, self.clock(),
                             outputs.files,
                             cpu_seconds=usage.cpu_seconds if usage else None,
                             peak_memory_bytes=usage.peak_memory_bytes if usage else None)

    def _spawn(self, workspace: Workspace, confinement: Confinement,
               site_dirs: tuple[str, ...]) -> _Child:
        """Spawn the confined child, which blocks reading its context (_send_context). The
        command line and environment depend on the folders and the level only, never on
        the attempt: a warm start spawns exactly this ahead of its attempt."""
        parent_end, child_end = socket.socketpair()
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(workspace.tmp),
               "TMPDIR": str(workspace.tmp), "LANG": "C.UTF-8", "TZ": "UTC",
               "OUTPUT_DIR": str(workspace.output), **confinement.environment}
        # The job holds the read end; only this process holds the write end, so the
        # job sees EOF (and kills its group) the moment this server dies.
        liveness_read, liveness_write = os.pipe()
        try:
            # Sandbox: bwrap (or nothing) around the interpreter, the limits prelude before
            # the boot command.
            process = subprocess.Popen(
                confinement.command(self.python, BOOT_COMMAND, [
                    str(self.sandbox.jobpath), "--channel-fd", str(child_end.fileno()),
                    "--liveness-fd", str(liveness_read)]),
                cwd=workspace.code, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, pass_fds=(child_end.fileno(), liveness_read),
                start_new_session=True, close_fds=True)
        except BaseException:
            os.close(liveness_write)
            parent_end.close()
            raise
        finally:
            child_end.close()
            os.close(liveness_read)
        return _Child(process, parent_end, liveness_write)

    @staticmethod
    def _context(attempt: ClaimedAttempt, output_dir: Path,
                 site_dirs: tuple[str, ...]) -> dict[str, Any]:
        context: dict[str, Any] = {
            "event": {
                "body": attempt.params.get("body", {}),
                "query_string_parameters": attempt.params.get("query_string_parameters", {}),
                "source": attempt.source, "job_name": attempt.job_name,
                "job_instance_id": attempt.execution_id, "retry_attempt": attempt.number - 1},
            "variables": attempt.variables, "output_dir": str(output_dir),
            "job_name": attempt.job_name, "execution_id": attempt.execution_id,
            "attempt": attempt.number, "database_access": attempt.database_access,
            "email_limit": 3, "channel_line_limit": CHANNEL_LINE_LIMIT,
        }
        if site_dirs:
            # Dependencies: the boot adds them with site.addsitedir before importing main.py.
            context["site_dirs"] = list(site_dirs)
        return context

    def _route(self, attempt: ClaimedAttempt, sink: LogSink, errors: list[str],
               reports: list[ResourceUsage], channel: socket.socket) -> tuple[RequestDispatcher,
                                                Callable[[str, bytes, Part], None]]:
        """Where each line of the child goes: output to the log, channel records to the
        log, the error list or the request dispatcher."""
        # Without a handler for a kind of request (a supervisor built without a broker or a
        # mailer), the job is still answered: it must not hang.
        dispatcher = RequestDispatcher({**_UNAVAILABLE, **self.requests}, attempt,
                                       channel.sendall,
                                       note=lambda message, level: sink.add("log", message,
                                                                            level))

        def on_line(stream: str, line: bytes, part: Part) -> None:
            if stream != "channel":
                sink.add(stream, line.decode("utf-8", "replace"))
            elif part is Part.WHOLE:
                self._on_channel_line(line, sink, errors, reports, dispatcher)
            elif part is Part.FIRST:
                self._on_long_channel_line(line, sink, dispatcher)

        return dispatcher, on_line

    def _watch(self, attempt: ClaimedAttempt, child: _Child, sink: LogSink,
               confinement: Confinement, stops: _Stops,
               on_line: Callable[[str, bytes, Part], None],
               watched: tuple[Path, ...]) -> _Stop:
        """Pump the child's output until it ends, killing it at its deadline, at a stop
        from outside or past its disk limit; then clear away what it left. Returns why
        it was stopped (nothing: it ended by itself)."""
        process = child.process
        stop = _Stop()
        stopped = threading.Event()

        def stopper(reason: AttemptOutcome, detail: str) -> None:
            if stopped.is_set():
                return
            stop.reason, stop.detail = reason, detail
            stopped.set()
            kill_tree(process.pid, self.limits.kill_grace_seconds)

        stops.attach(stopper)
        timer = threading.Timer(attempt.deadline_seconds, stopper, args=(
            AttemptOutcome.TIMED_OUT,
            f"killed at its deadline of {attempt.deadline_seconds:g} s"
            + (" (the time left in today's run-time budget)"
               if attempt.deadline_seconds < attempt.timeout_seconds else "")))
        timer.daemon = True
        timer.start()
        assert process.stdout is not None and process.stderr is not None
        next_disk_check = [time.monotonic() + DISK_CHECK_SECONDS]

        def tick() -> None:
            sink.flush()
            if not self.limits.disk_bytes or time.monotonic() < next_disk_check[0]:
                return
            # The job's processes: its tree, and under the rlimits level (no PID namespace:
            # a double fork leaves the tree) every process of the attempt's own uid.
            if confinement.sweep_uid is not None:
                table = process_table()
                pids = {process.pid} | table.descendants(process.pid) | \
                    table.owned_by(confinement.sweep_uid)
            else:  # bubblewrap adopts orphans inside the tree; unconfined, they escape it
                pids = {process.pid} | tree_below(process.pid)
            usage = disk_usage(watched, pids)
            violation = describe_violation(usage, self.limits.disk_bytes)
            if violation is not None:
                stopper(AttemptOutcome.FAILED, violation)
            next_disk_check[0] = time.monotonic() + DISK_CHECK_SECONDS

        line_limit = self.limits.log_line_max_bytes
        pump = OutputPump([(process.stdout.fileno(), "stdout", line_limit),
                           (process.stderr.fileno(), "stderr", line_limit),
                           (child.channel.fileno(), "channel", CHANNEL_LINE_LIMIT)],
                          on_line, tick, LOG_FLUSH_SECONDS)
        pump.start()
        # Resource figures: under bubblewrap wait4 does not see the job (resources.py).
        meter = UsageMeter(waited_sees_job=not confinement.bubblewrap)
        meter.watch(process.pid)
        waited = None
        try:
            # Resource figures: wait4 gives the tree's CPU time and peak memory (resources.py).
            status, waited = wait_with_usage(process)
            child.exit_code = confinement.exit_status(status)
        finally:
            timer.cancel()
            child.close_liveness()
            stops.detach()
            child.usage = meter.finish(waited)
        child.runtime = time.monotonic() - child.started
        # Whatever the job left behind in its group goes with it.
        kill_group_now(process.pid)
        # Sandbox: and, under the rlimits level, what left the group (setsid) in its uid.
        confinement.kill_leftovers()
        pump.finish(timeout=2)
        process.stdout.close()
        process.stderr.close()
        return stop

    @staticmethod
    def _send_context(process: subprocess.Popen[bytes], context: dict[str, Any]) -> None:
        assert process.stdin is not None
        try:
            # marshal: the child reads it without importing json (~8 ms saved per start).
            process.stdin.write(b"BYM1" + marshal.dumps(context))
            process.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    @staticmethod
    def _outcome(exit_code: int, stop: _Stop, errors: list[str]) -> \
            tuple[AttemptOutcome, str | None]:
        if stop.reason is not None:
            return stop.reason, stop.detail
        if exit_code == 0:
            return AttemptOutcome.SUCCEEDED, None
        # Sandbox: a limit the job hit is named first (out_of_memory: MemoryError: ...).
        if errors:
            return AttemptOutcome.FAILED, explain_failure(errors[-1], exit_code)
        if exit_code < 0:
            name = signal.Signals(-exit_code).name
            return AttemptOutcome.FAILED, explain_failure(f"killed by signal {name}", exit_code)
        return AttemptOutcome.FAILED, f"exited with code {exit_code}"

    def _on_channel_line(self, line: bytes, sink: LogSink, errors: list[str],
                         reports: list[ResourceUsage], dispatcher: RequestDispatcher) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            return
        if not isinstance(record, dict):
            return
        if dispatcher.handles(record.get("type")):
            dispatcher.submit(record)
        else:
            self._on_record(record, sink, errors, reports)

    @staticmethod
    def _on_long_channel_line(first_piece: bytes, sink: LogSink,
                              dispatcher: RequestDispatcher) -> None:
        """A channel line over the limit: whatever it asked, the job must not wait for ever.

        Called once per line (its later pieces are skipped). A request is answered with an
        error; a log or error record gets no reply (the job is not waiting, and a stray
        reply would be read as the answer to its next request) and is noted as dropped.
        """
        one_way = _ONE_WAY_RECORD.match(first_piece)
        if one_way is not None:
            sink.add("log", f"batchyard: a {one_way.group(1).decode()} record of the job "
                     f"larger than the channel's limit of {CHANNEL_LINE_LIMIT} bytes was "
                     "dropped", "warn")
            return
        dispatcher.refuse({"ok": False, "code": "too_large",
                           "error": f"The request is larger than the channel's limit of "
                                    f"{CHANNEL_LINE_LIMIT} bytes"})

    @staticmethod
    def _on_record(record: dict[str, Any], sink: LogSink, errors: list[str],
                   reports: list[ResourceUsage]) -> None:
        kind = record.get("type")
        if kind == "log":
            level = record.get("level") if record.get("level") in _LEVELS else "info"
            at = record.get("at")
            when = datetime.fromtimestamp(at, UTC) if isinstance(at, int | float) else None
            sink.add("log", str(record.get("message", "")), level, record.get("data"), when)
        elif kind == "error":
            errors.append(f"{record.get('error_type', 'Error')}: {record.get('message', '')}"
                          [:2000])
        elif kind == "result":
            sink.add("log", "main returned", "debug", {"result": record.get("value")})
        elif kind == "usage":
            reported = reported_usage(record)
            if reported is not None:
                reports[:] = [reported]  # the last one counts; a job cannot grow the list



def _unavailable(reply: Reply) -> RequestHandler:
    return lambda attempt, record: dict(reply)


_UNAVAILABLE: dict[str, RequestHandler] = {
    "email": _unavailable({"ok": False, "code": "not_configured",
                           "error": "E-mail is not available on this server."}),
    "db": _unavailable({"ok": False,
                        "error": "Database access is not available on this server."}),
}
