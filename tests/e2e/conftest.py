"""Fixtures of the end-to-end tier: real servers, operator clients, account factories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import Account, ServerProcess, create_account, zip_bomb

ServerFactory = Callable[..., ServerProcess]
AccountFactory = Callable[..., Account]


def _server_factory(base: Path) -> tuple[ServerFactory, list[ServerProcess]]:
    started: list[ServerProcess] = []

    def launch(data_dir: Path | None = None, workers: int = 2) -> ServerProcess:
        server = ServerProcess(base / f"server{len(started)}", data_dir=data_dir,
                               workers=workers)
        started.append(server)
        return server.start()

    return launch, started


@pytest.fixture
def launch_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start servers for one test (restarts, kills); all are stopped at its end."""
    launch, started = _server_factory(tmp_path)
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
def zip_bomb_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """~1 MB on the wire, 1 GiB once expanded; built once per session."""
    return zip_bomb(tmp_path_factory.mktemp("bomb") / "bomb.zip")
