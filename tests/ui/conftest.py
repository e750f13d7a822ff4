"""Fixtures of the browser tier: a real ``batchyard serve``, Debian's chromium driven by
Playwright (never a downloaded browser), and a folder of screenshots per test that is
kept, with the server's log, when the test fails."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))

from e2e_support import ServerProcess

CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SHOTS = pytest.StashKey[Path]()
SERVER = pytest.StashKey[ServerProcess]()


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call" and report.failed and SHOTS in item.stash:
        shots = item.stash[SHOTS]
        if SERVER in item.stash:
            (shots / "server.log").write_text(item.stash[SERVER].output())
        report.sections.append(("browser screenshots and server log", str(shots)))
    return report


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("ui"), workers=2)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def shots(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          ui_server: ServerProcess) -> Path:
    """The folder this test's screenshots go to, named after the test."""
    folder = tmp_path_factory.getbasetemp() / "ui-screenshots" / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    request.node.stash[SHOTS] = folder
    request.node.stash[SERVER] = ui_server
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        pytest.skip("Debian's chromium is not installed (./dev installs it with apt-get); "
                    "the browser tests need it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, shots: Path) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True)
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    yield opened
    context.close()
