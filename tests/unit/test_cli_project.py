"""The kit's reading of a project folder: batchyard.toml (with file:line errors), secrets,
the vendor's lsbatch layout, and the package built from it."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import pytest

from batchyard.cli import packing, profiles
from batchyard.cli import project as projects
from batchyard.cli.exits import LIMIT, USAGE, Exit

CONFIG = """[job]
name = "unit-job"

[settings]
timeout_minutes = 2

[variables]
PLAIN = "value"
COUNT = 3
TOKEN = { secret = true }
OTHER = { secret = true, env = "OTHER_FROM_ENV" }
"""


def _write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def _refusal(root: Path) -> Exit:
    with pytest.raises(Exit) as caught:
        projects.load(root)
    assert caught.value.code == USAGE
    return caught.value


def test_variables_and_secrets_come_from_toml_environment_and_secrets_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, {"batchyard.toml": CONFIG, "main.py": "def main():\n    pass\n",
                      ".secrets.toml": 'TOKEN = "from-file"\n'})
    monkeypatch.delenv("TOKEN", raising=False)
    monkeypatch.delenv("OTHER_FROM_ENV", raising=False)
    project = projects.load(tmp_path)
    assert project.kind == "batchyard" and project.name == "unit-job"
    assert project.settings == {"timeout_minutes": 2}
    assert [(v.key, v.value, v.secret) for v in project.variables] == [
        ("PLAIN", "value", False), ("COUNT", "3", False), ("TOKEN", "from-file", True)]
    assert project.missing_secrets == ("OTHER",)
    monkeypatch.setenv("TOKEN", "from-env")
    monkeypatch.setenv("OTHER_FROM_ENV", "other-env")
    project = projects.load(tmp_path)
    assert {v.key: v.value for v in project.variables if v.secret} == {
        "TOKEN": "from-env", "OTHER": "other-env"}
    assert project.missing_secrets == ()


@pytest.mark.parametrize(("config", "line", "words"), [
    ('[job]\nname = "ok-name"\n[settings]\nretries = "x"\n', 4, "retries must be"),
    ('[job]\nname = "x"\n', 2, "3 to 100"),
    ('[job]\nname = "ok-name"\n\n[variables]\n1BAD = "v"\n', 5, "identifier"),
    ('[job]\nname = "ok-name"\n[variables]\nT = { secret = false }\n', 4, "secret = true"),
    ('[job]\nname = "ok-name"\n[schedule]\ntype = "weekly"\ntimes = ["01:00"]\n'
     'days_of_week = ["funday"]\n', 6, "schedule"),
    ('[job]\nname = "ok-name"\n[extra]\n', 3, "unknown table"),
    ('[job\nname = "ok-name"\n', 1, "batchyard.toml:1"),
])
def test_a_bad_batchyard_toml_names_its_line(tmp_path: Path, config: str, line: int,
                                             words: str) -> None:
    _write(tmp_path, {"batchyard.toml": config})
    refusal = _refusal(tmp_path)
    assert f"{tmp_path / 'batchyard.toml'}:{line}:" in refusal.message, refusal.message
    assert words in refusal.message


def test_the_vendor_layout_is_read_as_it_is(tmp_path: Path) -> None:
    root = _write(tmp_path / "My Lead Sync", {
        "src/main.py": "def main():\n    pass\n", "batch_details.json": '{"Name": ""}',
        "settings.json": '{"mykey": "myvalue", "n": 2}', "event.json": '{"body": {}}'})
    project = projects.load(root)
    assert (project.kind, project.name, project.code_dir) == ("lsbatch", "My Lead Sync",
                                                              root / "src")
    assert [(v.key, v.value) for v in project.variables] == [("mykey", "myvalue"), ("n", "2")]
    projects.write_lsbatch_id(project, "job_123")
    assert projects.load(root).job_id == "job_123"


def test_the_package_is_reproducible_and_leaves_out_what_is_not_code(tmp_path: Path) -> None:
    _write(tmp_path, {
        "batchyard.toml": '[job]\nname = "pack-job"\n', ".secrets.toml": 'T = "x"\n',
        "main.py": "def main(event):\n    pass\n", "lib/util.py": "X = 1\n",
        "lib/__pycache__/util.cpython-311.pyc": b"\0", ".venv/bin/python": "",
        "output/old.txt": "", ".git/HEAD": "", "notes.log": "", "data/big.csv": "",
        "top.txt": "", "lib/top.txt": "", "event.json": "{}",
        ".batchyardignore": "# comments\n*.log\ndata/\n/top.txt\n"})
    os.symlink("/etc/passwd", tmp_path / "link.txt")
    project = projects.load(tmp_path)
    first = packing.build(project)
    assert [name for name, _size in first.files] == ["lib/top.txt", "lib/util.py", "main.py"]
    assert first.left_out == ("link.txt (a link)",)
    os.utime(tmp_path / "main.py", (1, 1))
    again = packing.build(project)
    assert again.sha256 == first.sha256 == hashlib.sha256(first.data).hexdigest()
    (tmp_path / "lib" / "util.py").write_text("X = 2\n")
    assert packing.build(project).sha256 != first.sha256
    with zipfile.ZipFile(io.BytesIO(first.data)) as archive:
        assert archive.read("main.py") == b"def main(event):\n    pass\n"


def test_the_package_is_checked_by_the_servers_rules(tmp_path: Path) -> None:
    _write(tmp_path, {"batchyard.toml": '[job]\nname = "pack-job"\n',
                      "main.py": "import os\n\ndef main(a, b):\n    pass\n"})
    project = projects.load(tmp_path)
    with pytest.raises(Exit) as caught:
        packing.build(project)
    assert caught.value.code == USAGE and "main" in caught.value.message
    (tmp_path / "main.py").write_text("def main():\n    pass\n")
    (tmp_path / "requirements.txt").write_text("six\n--index-url https://x.example/simple\n")
    with pytest.raises(Exit) as caught:
        packing.build(project)
    assert f"{tmp_path / 'requirements.txt'}:2:" in caught.value.message
    (tmp_path / "requirements.txt").unlink()
    (tmp_path / "blob.bin").write_bytes(os.urandom(3000))
    with pytest.raises(Exit) as caught:
        packing.build(project, limit=2000)
    assert caught.value.code == LIMIT


def test_profiles_are_private_and_the_environment_wins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for name in ("BATCHYARD_URL", "BATCHYARD_API_KEY", "BATCHYARD_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    path = profiles.save_profile("default", "http://a.example/", 'key"one', True)
    profiles.save_profile("other", "http://b.example", "key-two", False)
    assert path == tmp_path / "batchyard" / "config.toml"
    assert path.stat().st_mode & 0o777 == 0o600
    assert profiles.resolve() == profiles.Profile("default", "http://a.example", 'key"one')
    assert profiles.resolve("other").key == "key-two"
    monkeypatch.setenv("BATCHYARD_PROFILE", "other")
    assert profiles.resolve().url == "http://b.example"
    monkeypatch.setenv("BATCHYARD_API_KEY", "from-env")
    assert profiles.resolve().key == "from-env"
    with pytest.raises(Exit):
        profiles.resolve("missing")
