"""Start one attempt of a customer's job: read its context, import ``main.py``, call ``main``.

The supervisor runs ``python -I -S _batchyard_boot.py [--channel-fd N]`` with the
extracted code folder as the working directory. Isolated mode and no ``site``
keep the server's environment and packages out of the job; this file then puts
exactly the code folder and the job path (the SDK) on ``sys.path``.

Protocol: stdin carries one JSON object (the context) then EOF; fd N (default 3),
when inherited, is the JSON-lines channel to the supervisor. Exit status: 0 when
``main`` returns, 1 for an uncaught exception (import included), the code of a
``SystemExit``, 2 when there is no callable ``main`` or no usable context, 130 for
``KeyboardInterrupt``. Only the standard library may be imported here.
"""

from __future__ import annotations

import io
import os
import sys
from types import ModuleType

# Start-up time is every job's latency: no typing, argparse, inspect or pathlib here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

JOBPATH = os.path.dirname(os.path.abspath(__file__))
RESULT_LIMIT = 10_000
# Prefix of a marshal context (a marshalled dict may itself start with "{").
MARSHAL_MAGIC = b"BYM1"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOT_STARTED = 2
EXIT_INTERRUPTED = 130

# Set once the SDK is importable; a Channel or None (running without supervisor).
_supervisor: Any = None


def run(argv: list[str]) -> int:
    """Run the job and return the process exit status."""
    global _supervisor
    args = _parse_args(argv)
    if args.liveness_fd:
        _die_with_supervisor(args.liveness_fd)
    _line_buffer_std_streams()
    # The SDK must come from the job path even if the customer's folder holds a
    # ``batchyard`` directory of its own, so it is imported before cwd is added.
    sys.path.insert(0, JOBPATH)
    from batchyard import _channel, sdk

    _supervisor = _channel.Channel.open(args.channel_fd)
    try:
        payload = _read_payload()
    except ValueError as exc:
        return _not_started(f"unreadable job context on stdin: {exc}")
    _detach_stdin()
    sdk._configure(payload, _supervisor)
    output = payload.get("output_dir")
    if output:
        os.environ.setdefault("OUTPUT_DIR", str(output))
    sys.path.insert(0, os.getcwd())
    site_dirs = payload.get("site_dirs") or ()
    if site_dirs:
        import site

        for directory in site_dirs:
            # The job's own virtual environment (requirements.txt), .pth files included.
            site.addsitedir(str(directory))
    sys.argv = ["main.py"]
    return _run_main(os.path.join(os.getcwd(), "main.py"), payload.get("event") or {})


class _Args:
    channel_fd = 3
    liveness_fd = 0


def _parse_args(argv: list[str]) -> _Args:
    """``--channel-fd N`` and ``--liveness-fd M``; anything else is a supervisor bug."""
    args = _Args()
    pairs = iter(argv)
    for flag in pairs:
        value = next(pairs, None)
        if flag not in ("--channel-fd", "--liveness-fd") or value is None \
                or not value.isdigit():
            print(f"batchyard: bad bootstrap argument {flag!r}", file=sys.stderr)
            raise SystemExit(EXIT_NOT_STARTED)
        setattr(args, flag[2:].replace("-", "_"), int(value))
    return args


def _die_with_supervisor(fd: int) -> None:
    """Kill this job's whole process group as soon as its supervisor is gone.

    Without it, a job whose server was killed would run on, unsupervised and
    unaccounted. ``fd`` is the read end of a pipe whose only writer is the
    supervisor: the kernel closes it when the supervisor dies, however it dies,
    and the read returns. (prctl's parent-death signal would need ctypes, ~7 ms
    a start, and would spare the job's own children.)
    """
    import _thread

    os.set_inheritable(fd, False)

    def watch() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        os.killpg(0, 9)

    _thread.start_new_thread(watch, ())


def _line_buffer_std_streams() -> None:
    # Pipes are block-buffered by default; the supervisor tails logs live.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)


def _read_payload() -> dict[str, Any]:
    """The context: ``marshal`` bytes from the supervisor (built in, no import cost), or JSON.

    JSON stays accepted so that a person can start the bootstrap by hand.
    """
    raw = sys.stdin.buffer.read()
    if not raw.startswith(MARSHAL_MAGIC):
        import json  # lazily: json pulls in re and enum (~8 ms per job start)

        payload = json.loads(raw or b"null")
    else:
        import marshal

        try:
            payload = marshal.loads(raw[len(MARSHAL_MAGIC):])
        except (EOFError, TypeError) as exc:
            raise ValueError(f"bad marshal payload: {exc}") from exc
    if not isinstance(payload, dict):
        raise ValueError("expected one JSON object")
    return payload


def _detach_stdin() -> None:
    # Job code that reads stdin (input(), a child tool) must see EOF, not block.
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
    finally:
        os.close(null)


def _run_main(path: str, event: Any) -> int:
    if not os.path.isfile(path):
        return _not_started(f"{os.path.basename(path)} not found in the code folder")
    try:
        module = _load_main(path)
    except BaseException as exc:
        return _failed(exc)
    entry = getattr(module, "main", None)
    if not callable(entry):
        return _not_started("main.py does not define a callable main()")
    try:
        value = entry(event) if _takes_positional(entry) else entry()
        if type(value).__name__ == "coroutine":
            import asyncio

            value = asyncio.run(value)
    except BaseException as exc:
        return _failed(exc)
    if value is not None:
        _send({"type": "result", "value": _result_value(value)})
    _flush_std_streams()
    return EXIT_OK


def _load_main(path: str) -> ModuleType:
    """Import ``main.py`` as module ``main`` (so ``if __name__ == "__main__"`` stays off).

    The code is compiled and run here rather than through the loader so that a
    traceback shows the customer's frames only, as ``python main.py`` would.
    """
    module = ModuleType("main")
    module.__file__ = path
    sys.modules["main"] = module
    with open(path, "rb") as source:
        code = compile(source.read(), path, "exec")
    exec(code, module.__dict__)
    return module


_CO_VARARGS = 0x04


def _takes_positional(entry: Any) -> bool:
    code = getattr(entry, "__code__", None)
    if code is not None and not hasattr(entry, "__wrapped__"):
        # A plain function: its code object answers without importing inspect.
        return code.co_argcount > 0 or bool(code.co_flags & _CO_VARARGS)
    import inspect

    try:
        parameters = inspect.signature(entry).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
    )
    return any(p.kind in positional for p in parameters)


def _failed(exc: BaseException) -> int:
    if isinstance(exc, SystemExit):
        return _exit_status(exc)
    _print_traceback(exc)
    _send({"type": "error", "error_type": type(exc).__name__, "message": _safe_str(exc)})
    _flush_std_streams()
    return EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_FAILED


def _exit_status(exc: SystemExit) -> int:
    # The same rules as the interpreter: None is success, a non-int is printed.
    _flush_std_streams()
    if exc.code is None:
        return EXIT_OK
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr, flush=True)
    return EXIT_FAILED


def _print_traceback(exc: BaseException) -> None:
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    import traceback

    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)


def _not_started(message: str) -> int:
    print(f"batchyard: {message}", file=sys.stderr, flush=True)
    _send({"type": "error", "error_type": "BootstrapError", "message": message})
    return EXIT_NOT_STARTED


def _result_value(value: Any) -> Any:
    """``value`` itself when it is small JSON; else its JSON text or repr, cut short."""
    import json  # lazily: json pulls in re and enum (~8 ms per job start)

    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        text = _safe_repr(value)
    else:
        if len(text) <= RESULT_LIMIT:
            return value
    return text[:RESULT_LIMIT]


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def _send(record: dict[str, Any]) -> None:
    if _supervisor is not None:
        _supervisor.send(record)


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def _report_usage() -> None:
    """The job's CPU time and peak memory as it ends, for the supervisor to join with its
    own samples (runtime/box/resources.py takes the larger of each).

    CPU: ``os.times`` of this process and the children it reaped. Peak: this process's
    ``VmHWM`` (its own high-water mark since exec). Nothing is imported: the job's folder
    is first on ``sys.path`` by now, and a ``resource.py`` of its own would be found
    first; and json would cost every job ~8 ms. Whatever goes wrong, the job's exit
    status stands: the samples remain.
    """
    if _supervisor is None:
        return
    try:
        times = os.times()
        cpu = times.user + times.system + times.children_user + times.children_system
        peak = 0
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    peak = int(line.split()[1]) * 1024
                    break
        _supervisor.send_line(b'{"type": "usage", "cpu_seconds": %.6f, '
                              b'"peak_memory_bytes": %d}\n' % (cpu, peak))
    except Exception:
        pass


def _run_and_report(argv: list[str]) -> int:
    status = run(argv)
    _report_usage()
    return status


def start() -> None:
    """Entry for ``python -c "...; _batchyard_boot.start()"``: the module then loads from
    its cached bytecode, which a script given by path never does."""
    sys.exit(_run_and_report(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(_run_and_report(sys.argv[1:]))
