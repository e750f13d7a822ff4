"""Job environments against the real uv and the real package index.

Tests that install skip (with the reason) when the index cannot be reached from here.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from batchyard.app import job_python
from batchyard.domain.requirements import normalise_requirements
from batchyard.runtime.box.envcache import (
    MARKER,
    EnvCache,
    Environment,
    InstallFailed,
    InstallInterrupted,
    InstallWaitTooLong,
    Interrupt,
    last_message,
)

pytestmark = pytest.mark.timeout(180)

SIX = normalise_requirements("six==1.16.0\n")
OLD_SIX = normalise_requirements("six==1.15.0\n")
MISSING = normalise_requirements("this-package-does-not-exist-batchyard==1.0\n")


@functools.cache
def pypi_unreachable() -> str | None:
    """Why the package index cannot be used from here, or None (asked once per session)."""
    try:
        with urllib.request.urlopen("https://pypi.org/simple/six/", timeout=10) as answer:
            answer.read(1)
    except OSError as exc:
        return f"PyPI is not reachable from this machine: {exc}"
    return None


@pytest.fixture
def needs_pypi() -> None:
    reason = pypi_unreachable()
    if reason:
        pytest.skip(reason)


def make_cache(base: Path, max_bytes: int = 1024 ** 3, timeout: float = 120) -> EnvCache:
    return EnvCache(base / "envs", job_python(None), base / "uv-cache", max_bytes, timeout)


def size(environment: Environment) -> int:
    return int(json.loads((environment.path / MARKER).read_text())["size"])


def imports_six(environment: Environment) -> str:
    """What the job interpreter (-I -S, as the boot script runs it) imports from the env."""
    done = subprocess.run(
        [job_python(None), "-I", "-S", "-B", "-c",
         "import site, sys; site.addsitedir(sys.argv[1]); import six; print(six.__version__)",
         str(environment.path)], capture_output=True, text=True, check=True, timeout=30)
    return done.stdout.strip()


def test_concurrent_attempts_with_the_same_requirements_build_once(
        tmp_path: Path, needs_pypi: None) -> None:
    cache = make_cache(tmp_path)
    outputs: list[list[str]] = [[] for _ in range(4)]
    leased: list[Environment | None] = [None] * 4
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def attempt(number: int) -> None:
        try:
            barrier.wait()
            with cache.lease(SIX, outputs[number].append) as environment:
                leased[number] = environment
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    environments = [e for e in leased if e is not None]
    assert len(environments) == 4
    assert [e.built for e in environments].count(True) == 1
    assert len({e.path for e in environments}) == 1
    assert sum(any("six==1.16.0" in line for line in out) for out in outputs) == 1
    assert imports_six(environments[0]) == "1.16.0"
    assert sorted(p.name for p in cache.root.iterdir()) == [
        ".home", ".locks", environments[0].key]


def test_a_second_lease_reuses_the_environment_without_running_the_installer(
        tmp_path: Path, needs_pypi: None) -> None:
    cache = make_cache(tmp_path)
    with cache.lease(SIX, lambda line: None) as first:
        pass
    built_at = (first.path / MARKER).stat().st_mtime_ns
    output: list[str] = []
    with cache.lease(SIX, output.append) as second:
        assert (second.path, second.built, output) == (first.path, False, [])
    assert (first.path / MARKER).stat().st_mtime_ns == built_at
    # Another server process on the same data folder finds it too.
    with make_cache(tmp_path).lease(SIX, output.append) as third:
        assert (third.path, third.built, output) == (first.path, False, [])


def test_the_environment_is_read_only_to_anyone_but_the_server(
        tmp_path: Path, needs_pypi: None) -> None:
    cache = make_cache(tmp_path)
    with cache.lease(SIX, lambda line: None) as environment:
        modes = {path.relative_to(environment.path).as_posix(): path.stat().st_mode & 0o777
                 for path in [environment.path, *environment.path.rglob("*")]}
    assert modes["."] == 0o755 and modes["six.py"] == 0o644, modes
    assert all(mode & 0o022 == 0 and mode & 0o004 for mode in modes.values()), modes
    assert ".lock" not in modes  # uv's world-writable lock file is gone
    assert cache.root.stat().st_mode & 0o777 == 0o711


def test_a_package_that_does_not_exist_fails_with_the_installers_message(
        tmp_path: Path, needs_pypi: None) -> None:
    cache = make_cache(tmp_path)
    output: list[str] = []
    with pytest.raises(InstallFailed) as caught, cache.lease(MISSING, output.append):
        pass
    assert caught.value.code == "dependency_install_failed"
    assert "this-package-does-not-exist-batchyard" in caught.value.message
    assert caught.value.message.startswith("error:"), caught.value.message
    assert any("this-package-does-not-exist-batchyard" in line for line in output), output
    # Nothing half-built is left, and nothing is cached: the next lease tries again.
    assert sorted(p.name for p in cache.root.iterdir()) == [".home", ".locks"]


def test_least_recently_used_environments_are_evicted_above_the_cap(
        tmp_path: Path, needs_pypi: None) -> None:
    cache = make_cache(tmp_path)
    with cache.lease(SIX, lambda line: None) as oldest:
        pass
    time.sleep(0.01)
    with cache.lease(OLD_SIX, lambda line: None) as recent:
        pass
    # Room for two and a half of them: the third build must evict exactly one.
    cache.max_bytes = size(oldest) + size(recent) + size(oldest) // 2
    time.sleep(0.01)
    with cache.lease(normalise_requirements("six==1.14.0\n"), lambda line: None) as newest:
        assert newest.built
    assert not oldest.path.exists()
    assert recent.path.is_dir() and newest.path.is_dir()


def test_an_environment_in_use_is_never_evicted(tmp_path: Path, needs_pypi: None) -> None:
    cache = make_cache(tmp_path, max_bytes=1)  # any environment is over the cap
    with cache.lease(SIX, lambda line: None) as held:
        with cache.lease(OLD_SIX, lambda line: None) as other:
            assert other.built and (held.path / MARKER).is_file()
        assert cache.evict() == [other.key]
        assert (held.path / MARKER).is_file()
    assert cache.evict() == [held.key]
    assert not held.path.exists()


def hold_build_lock(cache: EnvCache, normalised: str) -> int:
    """Act as another process building these requirements: hold their lock exclusively."""
    (cache.root / ".locks").mkdir(parents=True, exist_ok=True)
    fd = os.open(cache.root / ".locks" / f"{cache.key_for(normalised)}.lock",
                 os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_waiting_for_another_install_ends_on_interrupt_and_past_one_builds_time(
        tmp_path: Path) -> None:
    cache = make_cache(tmp_path, timeout=0.5)
    cache.wait_slack = 0.3
    builder = hold_build_lock(cache, SIX)
    try:
        started = time.monotonic()
        # Interrupted, not failed: the other build is not this attempt's failure.
        with pytest.raises(InstallWaitTooLong, match=r"waited 0\.8 s for another attempt"), \
                cache.lease(SIX, lambda line: None):
            pass
        assert not issubclass(InstallWaitTooLong, InstallFailed)
        assert issubclass(InstallWaitTooLong, InstallInterrupted)
        assert 0.7 < time.monotonic() - started < 3
        interrupt = Interrupt()
        threading.Timer(0.1, interrupt.fire, ("cancelled by a user",)).start()
        cache.install_timeout = 30
        started = time.monotonic()
        with pytest.raises(InstallInterrupted, match="cancelled by a user"), \
                cache.lease(SIX, lambda line: None, interrupt):
            pass
        assert time.monotonic() - started < 3
    finally:
        os.close(builder)


def slow_installer(folder: Path, seconds: float) -> str:
    """A stand-in for uv that takes ``seconds`` and installs nothing (requirements that
    select nothing on this platform look the same): the build's timing without an index."""
    script = folder / "slow-uv"
    script.write_text(f"#!/bin/sh\nsleep {seconds}\necho installed\n")
    script.chmod(0o755)
    return str(script)


def test_a_build_started_after_waiting_for_another_gets_the_whole_install_timeout(
        tmp_path: Path) -> None:
    cache = EnvCache(tmp_path / "envs", job_python(None), tmp_path / "uv-cache", 1024 ** 3,
                     install_timeout=1.5, uv=slow_installer(tmp_path, 1.0), wait_slack=0)
    builder = hold_build_lock(cache, SIX)
    # The other build fails after 1 s (it leaves no environment): this attempt builds.
    threading.Timer(1.0, os.close, (builder,)).start()
    output: list[str] = []
    started = time.monotonic()

    with cache.lease(SIX, output.append) as environment:
        pass

    # 1 s waiting and 1 s building: more than the install timeout in all, but each part
    # within it.
    assert environment.built and output == ["installed"]
    assert 1.9 < time.monotonic() - started < 4
    assert (environment.path / MARKER).is_file()


def test_leftovers_of_a_crashed_server_are_removed_at_start(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    half_built = cache.root / f".tmp-{'a' * 64}-0123abcd"
    half_removed = cache.root / f".trash-{'b' * 64}-0123abcd"
    for folder in (half_built, half_removed):
        (folder / "site").mkdir(parents=True)
    make_cache(tmp_path)
    assert not half_built.exists() and not half_removed.exists()


def test_the_installer_gets_no_server_secret(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHYARD_SECRET_KEY", "s3cret-value")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:s3cret-value@db/x")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    environment = make_cache(tmp_path).uv_environment
    assert not any("s3cret" in value for value in environment.values())
    assert not any(name.startswith("BATCHYARD") for name in environment)
    assert environment["HTTPS_PROXY"] == "http://proxy.internal:3128"
    assert environment["UV_NO_CONFIG"] == "1"
    assert environment["UV_CACHE_DIR"] == str(tmp_path / "uv-cache")


def test_the_installers_last_message_starts_at_its_last_error() -> None:
    lines = ["Using CPython 3.11.7", "error: No solution found when resolving dependencies",
             "  cause: Because x was not found in the package registry and you require x,",
             "         we can conclude that your requirements are unsatisfiable."]
    assert last_message(lines) == (
        "error: No solution found when resolving dependencies cause: Because x was not "
        "found in the package registry and you require x, we can conclude that your "
        "requirements are unsatisfiable.")
    assert last_message(["Resolved 1 package", "killed"]) == "killed"
    assert last_message([]) == ""
