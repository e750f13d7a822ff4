"""Fixtures of the end-to-end tier: real servers, operator clients, account factories."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import (
    Account,
    AccountFactory,
    ServerFactory,
    ServerProcess,
    create_account,
    zip_bomb,
)

SERVERS_OF_ITEM = pytest.StashKey[list[ServerProcess]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a failure, attach the end of each server's output (a 500 is explained there)."""
    report = yield
    if report.failed:
        servers: list[ServerProcess] = item.stash.get(SERVERS_OF_ITEM, [])
        for number, process in enumerate(servers):
            report.sections.append((f"batchyard server {number} output (last 6000 chars)",
                                    process.output()[-6000:]))
    return report


@pytest.fixture(autouse=True)
def _servers_of_item(request: pytest.FixtureRequest) -> None:
    request.node.stash[SERVERS_OF_ITEM] = []


def _server_factory(base: Path) -> tuple[ServerFactory, list[ServerProcess]]:
    started: list[ServerProcess] = []

    def launch(data_dir: Path | None = None, workers: int | None = 2) -> ServerProcess:
        """``workers=None`` starts the server with its default worker pool."""
        server = ServerProcess(base / f"server{len(started)}", data_dir=data_dir,
                               workers=workers)
        started.append(server)
        return server.start()

    return launch, started


@pytest.fixture
def launch_server(tmp_path: Path, request: pytest.FixtureRequest,
                  _servers_of_item: None) -> Iterator[ServerFactory]:
    """Start servers for one test (restarts, kills); all are stopped at its end."""
    launch, started = _server_factory(tmp_path)
    request.node.stash[SERVERS_OF_ITEM] = started
    yield launch
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server shared by the tests of a module; each test uses its own accounts."""
    launch, started = _server_factory(tmp_path_factory.mktemp("e2e"))
    yield launch()
    for process in started:
        process.stop()


@pytest.fixture(autouse=True)
def _report_module_server(request: pytest.FixtureRequest, _servers_of_item: None) -> None:
    if "server" in request.fixturenames:
        request.node.stash[SERVERS_OF_ITEM].append(request.getfixturevalue("server"))


@pytest.fixture(scope="module")
def operator(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture
def make_account(operator: httpx.Client) -> Iterator[AccountFactory]:
    """``make_account(plan=None, enabled=True)``: a fresh account on the module's server,
    with owner (admin), developer and viewer users; their clients close at teardown."""
    made: list[Account] = []

    def make(plan: dict[str, Any] | None = None, enabled: bool = True) -> Account:
        account = create_account(operator, plan=plan, enabled=enabled)
        made.append(account)
        return account

    yield make
    for account in made:
        account.close()


@pytest.fixture(scope="session")
def zip_bomb_bytes() -> bytes:
    """~1 MB on the wire, 1 GiB once expanded; built once per session."""
    return zip_bomb()
