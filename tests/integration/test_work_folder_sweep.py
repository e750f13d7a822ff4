"""An attempt's folders and its uid, at both isolation levels, against the real sandbox:
the folders go before the uid is given back (so a uid's next attempt never finds them),
a folder that will not go keeps its uid, and what a killed server left in the work folder
is swept at the next start (a process sharing its work folder with others sweeps only what
no live process holds).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchyard.app import Server
from batchyard.config import Settings
from batchyard.domain.executions import AttemptOutcome
from batchyard.runtime.box.sandbox import SandboxUnavailable, UidPool
from batchyard.runtime.box.workspace import lock_work_root, new_workspace, share_work_root
from support.attempts import claimed_attempt, run_attempt

pytestmark = pytest.mark.timeout(120)

UID_BASE = 2_100_300_000


def _build(data_dir: Path, level: str) -> Server:
    try:
        return Server(Settings(
            data_dir=data_dir, workers=1, job_network="open", sandbox_uid_base=UID_BASE,
            sandbox="bubblewrap" if level == "bubblewrap" else "none",  # type: ignore[arg-type]
            warm_pool_size=0))
    except SandboxUnavailable as exc:
        pytest.skip(f"bubblewrap cannot run here: {exc.message}")


def _close(built: Server) -> None:
    built.supervisor.close()
    built.db.dispose()
    built.slot.release()


@pytest.fixture(params=["bubblewrap", "rlimits"])
def level(request: pytest.FixtureRequest) -> str:
    if os.geteuid() != 0:
        pytest.skip("a uid per attempt needs a server running as root")
    if request.param == "bubblewrap" and shutil.which("bwrap") is None:
        pytest.skip("bwrap is not installed (Debian package bubblewrap)")
    return str(request.param)


@pytest.fixture
def server(level: str, tmp_path: Path) -> Iterator[Server]:
    built = _build(tmp_path / "data", level)
    if not built.supervisor.sandbox.per_attempt_uid:
        _close(built)
        pytest.skip("this level runs jobs without a uid of their own here")
    yield built
    _close(built)
    placement = built.supervisor.sandbox.placement
    if placement is not None and placement.runtime_dir is not None:
        shutil.rmtree(placement.runtime_dir, ignore_errors=True)


def _pool(server: Server) -> UidPool:
    first, last = server.supervisor.sandbox.uid_range or (0, -1)
    return UidPool(first, last - first + 1)


def test_an_attempts_uid_is_held_while_it_runs_and_free_once_its_folders_are_gone(
        server: Server) -> None:
    sandbox, work_root = server.supervisor.sandbox, server.supervisor.work_root
    workspace = new_workspace(work_root, "exe_order-1")
    with sandbox.confine(workspace) as confinement:
        uid = confinement.owner
        assert uid is not None and workspace.root.stat().st_uid == uid
        assert _pool(server).hold(uid) is None  # held while the attempt runs
    assert not workspace.root.exists()
    held = _pool(server).hold(uid)
    assert held is not None  # and given back, once its folders were gone
    UidPool.release(held)


def test_a_folder_that_will_not_go_keeps_its_uid(server: Server) -> None:
    sandbox, work_root = server.supervisor.sandbox, server.supervisor.work_root
    workspace = new_workspace(work_root, "exe_stuck-1")
    mount_point = workspace.output / "mounted"
    mount_point.mkdir()
    # A mount inside the folder: rmtree cannot remove it (EBUSY), even as root.
    if subprocess.run(["mount", "-t", "tmpfs", "none", str(mount_point)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with sandbox.confine(workspace) as confinement:
            uid = confinement.owner
            assert uid is not None
        assert workspace.root.exists()
        assert _pool(server).hold(uid) is None  # never handed to the next attempt
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
    # The next start's sweep takes both back (this process still holds the uid: a
    # restart frees it; on the exclusive store the folder goes anyway).
    assert sandbox.sweep_leftovers(work_root, exclusive=True) >= 1
    assert not workspace.root.exists()


def _leftovers(work_root: Path, uid_base: int, held_uid: int) -> dict[str, Path]:
    """A killed server's leftovers, each kind once."""
    made: dict[str, Path] = {}
    for name, owner in (("free_uid", uid_base + 17), ("held_uid", held_uid), ("root", 0)):
        workspace = new_workspace(work_root, f"warm-{name}")
        (workspace.output / "result.csv").write_text("a tenant's data\n")
        for path in (workspace.root, workspace.code, workspace.output, workspace.tmp,
                     workspace.output / "result.csv"):
            os.chown(path, owner, owner)
        made[name] = workspace.root
    dangling = work_root / "exe_gone-1-warm-0000"
    dangling.symlink_to("warm-deadbeef")
    made["dangling"] = dangling
    alias = work_root / "exe_kept-1-warm-1111"
    alias.symlink_to(made["held_uid"].name)
    made["alias"] = alias
    return made


def test_a_shared_data_folder_sweeps_only_what_no_live_process_holds(server: Server) -> None:
    sandbox, work_root = server.supervisor.sandbox, server.supervisor.work_root
    first, _last = sandbox.uid_range or (0, 0)
    holder = _pool(server).hold(first + 23)  # a live attempt of another process
    assert holder is not None
    try:
        made = _leftovers(work_root, first, holder.uid)
        assert sandbox.sweep_leftovers(work_root, exclusive=False) == 2
        assert not made["free_uid"].exists() and not os.path.lexists(made["dangling"])
        # Another process's: its uid is held, or no job uid owns it yet.
        assert made["held_uid"].is_dir() and made["root"].is_dir()
        assert made["alias"].is_symlink()
        # The store's only process (SQLite): all of it was its previous life's.
        assert sandbox.sweep_leftovers(work_root, exclusive=True) == 3
        assert list(work_root.iterdir()) == []
    finally:
        UidPool.release(holder)


def test_a_restart_on_the_same_data_folder_sweeps_a_killed_servers_leftovers(
        level: str, tmp_path: Path) -> None:
    first = _build(tmp_path / "data", level)
    try:
        sandbox, work_root = first.supervisor.sandbox, first.supervisor.work_root
        if not sandbox.per_attempt_uid:
            pytest.skip("this level runs jobs without a uid of their own here")
        made = _leftovers(work_root, (sandbox.uid_range or (0, 0))[0], 0)
    finally:
        _close(first)
    second = _build(tmp_path / "data", level)  # SQLite: the data folder's only process
    try:
        assert second.supervisor.work_root == work_root
        assert not any(os.path.lexists(path) for path in made.values())
    finally:
        _close(second)
        placement = second.supervisor.sandbox.placement
        if placement is not None and placement.runtime_dir is not None:
            shutil.rmtree(placement.runtime_dir, ignore_errors=True)


def _deep_tree(under: Path, depth: int = 1100) -> None:
    """Folders nested deeper than Python's recursion limit (shutil.rmtree recurses per
    level): a job can make them in its own tmp folder."""
    fd = os.open(under, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)


def test_folders_nested_deeper_than_the_recursion_limit_go_and_give_their_uid_back(
        server: Server) -> None:
    sandbox, work_root = server.supervisor.sandbox, server.supervisor.work_root
    workspace = new_workspace(work_root, "exe_deep-1")
    with sandbox.confine(workspace) as confinement:
        uid = confinement.owner
        _deep_tree(workspace.tmp)
    assert not workspace.root.exists()
    held = _pool(server).hold(uid) if uid is not None else None
    assert held is not None
    UidPool.release(held)
    # And a killed server's deep folder does not keep the next start from sweeping.
    left = new_workspace(work_root, "warm-deep")
    _deep_tree(left.tmp)
    assert sandbox.sweep_leftovers(work_root, exclusive=True) == 1
    assert not left.root.exists()


def test_a_process_alone_on_its_work_folder_sweeps_it_and_one_beside_another_does_not(
        tmp_path: Path) -> None:
    work_root = tmp_path / "work"
    work_root.mkdir()
    first, alone = lock_work_root(work_root)
    assert alone  # exclusive while it sweeps
    share_work_root(first)
    second, second_alone = lock_work_root(work_root)
    assert not second_alone  # the first one still uses the folder
    os.close(first)
    os.close(second)
    again, again_alone = lock_work_root(work_root)
    assert again_alone  # both gone: what is left there is stale
    os.close(again)


def test_a_server_beside_a_live_process_on_its_work_folder_keeps_that_ones_folders(
        level: str, tmp_path: Path) -> None:
    first = _build(tmp_path / "data", level)
    work_root = first.supervisor.work_root
    _close(first)
    live = new_workspace(work_root, "exe_live-1")  # root-owned: not chowned yet
    other, _alone = lock_work_root(work_root)  # another process using the folder
    share_work_root(other)
    try:
        second = _build(tmp_path / "data", level)
        try:
            assert live.root.is_dir()
        finally:
            _close(second)
    finally:
        os.close(other)
        live.remove()
        placement = first.supervisor.sandbox.placement
        if placement is not None and placement.runtime_dir is not None:
            shutil.rmtree(placement.runtime_dir, ignore_errors=True)


DEEP_OUTPUT = """
import os
def main():
    out = os.environ['OUTPUT_DIR']
    with open(os.path.join(out, 'result.txt'), 'w') as handle:
        handle.write('done')
    fd = os.open(out, os.O_RDONLY)
    for _ in range(1100):  # deeper than the server's recursion limit
        os.mkdir('d', dir_fd=fd)
        inner = os.open('d', os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    with open(f'/proc/self/fd/{fd}/deep.txt', 'w') as handle:
        handle.write('deep')
"""


def test_a_job_nesting_its_output_deeper_than_the_recursion_limit_succeeds_with_its_files(
        server: Server) -> None:
    result, logs = run_attempt(server.supervisor, claimed_attempt(DEEP_OUTPUT))
    assert result.outcome is AttemptOutcome.SUCCEEDED, (result, [r.message for r in logs])
    names = [artifact.name for artifact in result.artifacts]
    assert names[0] == "result.txt" and names[-1].endswith("/d/deep.txt"), names
    assert len(names) == 2
    assert list(server.supervisor.work_root.iterdir()) == []
