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

import argparse
import importlib.util
import inspect
import io
import json
import os
import site
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

JOBPATH = os.path.dirname(os.path.abspath(__file__))
RESULT_LIMIT = 10_000
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
    for directory in payload.get("site_dirs") or ():
        # The job's own virtual environment (requirements.txt), .pth files included.
        site.addsitedir(str(directory))
    sys.argv = ["main.py"]
    return _run_main(Path.cwd() / "main.py", payload.get("event") or {})


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="_batchyard_boot.py")
    parser.add_argument("--channel-fd", type=int, default=3)
    return parser.parse_args(argv)


def _line_buffer_std_streams() -> None:
    # Pipes are block-buffered by default; the supervisor tails logs live.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)


def _read_payload() -> dict[str, Any]:
    payload = json.loads(sys.stdin.buffer.read() or b"null")
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


def _run_main(path: Path, event: Any) -> int:
    if not path.is_file():
        return _not_started(f"{path.name} not found in the code folder")
    try:
        module = _load_main(path)
    except BaseException as exc:
        return _failed(exc)
    entry = getattr(module, "main", None)
    if not callable(entry):
        return _not_started("main.py does not define a callable main()")
    try:
        value = entry(event) if _takes_positional(entry) else entry()
        if inspect.iscoroutine(value):
            import asyncio

            value = asyncio.run(value)
    except BaseException as exc:
        return _failed(exc)
    _send({"type": "result", "value": _result_value(value)})
    _flush_std_streams()
    return EXIT_OK


def _load_main(path: Path) -> ModuleType:
    """Import ``main.py`` as module ``main`` (so ``if __name__ == "__main__"`` stays off).

    The code is compiled and run here rather than through the loader so that a
    traceback shows the customer's frames only, as ``python main.py`` would.
    """
    spec = importlib.util.spec_from_file_location("main", path)
    if spec is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["main"] = module
    code = compile(path.read_bytes(), str(path), "exec")
    exec(code, module.__dict__)
    return module


def _takes_positional(entry: Any) -> bool:
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
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)


def _not_started(message: str) -> int:
    print(f"batchyard: {message}", file=sys.stderr, flush=True)
    _send({"type": "error", "error_type": "BootstrapError", "message": message})
    return EXIT_NOT_STARTED


def _result_value(value: Any) -> Any:
    """``value`` itself when it is small JSON; else its JSON text or repr, cut short."""
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


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
