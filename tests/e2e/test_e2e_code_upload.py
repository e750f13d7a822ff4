"""PUT /jobs/{id}/code refuses every bad package without leaving a file behind.

This module runs no job, so after each upload the server's data folder must hold
only its own files (database, keys, an empty work/) and its TMPDIR must be empty.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile

import httpx
import pytest
from e2e_support import (
    DATA_DIR_FILES,
    AccountFactory,
    ServerProcess,
    create_job,
    make_zip,
    upload_code,
    zip_with_entries,
)

pytestmark = pytest.mark.timeout(30)

GOOD_MAIN = "def main(event):\n    return event\n"


def assert_nothing_left_behind(server: ServerProcess) -> None:
    stray = []
    for dirpath, dirnames, filenames in os.walk(server.data_dir):
        relative = os.path.relpath(dirpath, server.data_dir)
        if relative == ".":
            stray += [name for name in filenames if name not in DATA_DIR_FILES]
            stray += [f"{name}/" for name in dirnames if name != "work"]
            dirnames[:] = [name for name in dirnames if name == "work"]
        else:
            stray += [os.path.join(relative, name) for name in (*dirnames, *filenames)]
    assert stray == [], f"files left in the data folder: {stray}"
    assert os.listdir(server.tmp_dir) == [], "files left in the server's TMPDIR"


def assert_invalid_code(response: httpx.Response, *fragments: str) -> str:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_code", error
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    return str(error["message"])


@pytest.fixture
def job(make_account: AccountFactory) -> tuple[httpx.Client, str]:
    account = make_account()
    return account.developer, create_job(account.developer)


def _versions(client: httpx.Client, job_id: str) -> list[int]:
    response = client.get(f"/api/v1/jobs/{job_id}/code/versions")
    assert response.status_code == 200
    return sorted(item["version"] for item in response.json()["items"])


def test_valid_raw_zip_becomes_version_1_and_downloads_unchanged(
        server: ServerProcess, job: tuple[httpx.Client, str]) -> None:
    client, job_id = job
    data = make_zip({"main.py": GOOD_MAIN, "lib/util.py": "X = 1\n"})

    response = upload_code(client, job_id, data)

    assert response.status_code == 201, response.text
    assert response.json()["version"] == 1
    assert response.json()["size"] == len(data)
    assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()
    download = client.get(f"/api/v1/jobs/{job_id}/code/versions/1")
    assert download.status_code == 200
    assert download.content == data
    assert_nothing_left_behind(server)


def test_multipart_upload_in_field_file_is_accepted(
        server: ServerProcess, job: tuple[httpx.Client, str]) -> None:
    client, job_id = job
    small = make_zip({"main.py": GOOD_MAIN})
    # Over 1 MiB: the multipart parser spools it to a temporary file in TMPDIR.
    large = make_zip({"main.py": GOOD_MAIN, "data.bin": os.urandom(1_500_000)},
                     compression=zipfile.ZIP_STORED)

    for data in (small, large):
        response = client.put(f"/api/v1/jobs/{job_id}/code",
                              files={"file": ("code.zip", data, "application/zip")})
        assert response.status_code == 201, response.text
        assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()

    assert _versions(client, job_id) == [1, 2]
    assert_nothing_left_behind(server)


def test_non_zip_body_is_refused_as_invalid_code(
        server: ServerProcess, job: tuple[httpx.Client, str]) -> None:
    client, job_id = job

    assert_invalid_code(upload_code(client, job_id, b"def main(event): pass\n"), "not a zip")

    assert _versions(client, job_id) == []
    assert_nothing_left_behind(server)


def test_zip_without_main_py_is_refused(
        server: ServerProcess, job: tuple[httpx.Client, str]) -> None:
    client, job_id = job

    assert_invalid_code(upload_code(client, job_id, make_zip({"app.py": GOOD_MAIN})),
                        "main.py not found")

    assert_nothing_left_behind(server)


def test_syntax_error_is_refused_with_its_line_number(
        server: ServerProcess, job: tuple[httpx.Client, str]) -> None:
    client, job_id = job
    source = "import os\n\ndef main(event)\n    return os.getcwd()\n"

    assert_invalid_code(upload_code(client, job_id, make_zip({"main.py": source})),
                        "line 3")

    assert_nothing_left_behind(server)


def test_main_with_two_required_parameters_is_refused(
        server: ServerProcess, job: tuple[httpx.Client, str]) -> None:
    client, job_id = job

    assert_invalid_code(upload_code(client, job_id, make_zip(
        {"main.py": "def main(a, b):\n    return a + b\n"})), "main must take 0 or 1")

    assert_nothing_left_behind(server)


@pytest.mark.parametrize("name", ["../evil.py", "lib/../../evil.py"])
def test_entry_with_dotdot_path_is_refused(
        server: ServerProcess, job: tuple[httpx.Client, str], name: str) -> None:
    client, job_id = job
    data = zip_with_entries([(zipfile.ZipInfo("main.py"), GOOD_MAIN.encode()),
                             (zipfile.ZipInfo(name), b"print('escaped')\n")])

    assert_invalid_code(upload_code(client, job_id, data), "'..'")

    assert_nothing_left_behind(server)
    assert not (server.data_dir.parent / "evil.py").exists()


def test_entry_with_absolute_path_is_refused(
        server: ServerProcess, job: tuple[httpx.Client, str]) -> None:
    client, job_id = job
    data = zip_with_entries([(zipfile.ZipInfo("main.py"), GOOD_MAIN.encode()),
                             (zipfile.ZipInfo("/tmp/batchyard-e2e-evil.py"), b"x = 1\n")])

    assert_invalid_code(upload_code(client, job_id, data), "absolute path")

    assert_nothing_left_behind(server)


def test_symlink_entry_is_refused(
        server: ServerProcess, job: tuple[httpx.Client, str]) -> None:
    client, job_id = job
    link = zipfile.ZipInfo("secrets.txt")
    link.create_system = 3  # Unix, so the mode bits in external_attr are honoured
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    data = zip_with_entries([(zipfile.ZipInfo("main.py"), GOOD_MAIN.encode()),
                             (link, str(server.data_dir / "secret.key").encode())])

    assert_invalid_code(upload_code(client, job_id, data), "symbolic link")

    assert_nothing_left_behind(server)


def test_zip_bomb_is_refused_by_its_expanded_size(
        server: ServerProcess, job: tuple[httpx.Client, str], zip_bomb_bytes: bytes) -> None:
    client, job_id = job
    assert len(zip_bomb_bytes) < 2 * 1024 * 1024

    message = assert_invalid_code(upload_code(client, job_id, zip_bomb_bytes), "zip bomb")

    assert "1.0 GiB" in message
    assert _versions(client, job_id) == []
    assert_nothing_left_behind(server)


def test_zip_over_the_plans_code_size_is_refused_with_413(
        server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account(plan={"max_code_size_bytes": 100_000})
    job_id = create_job(account.owner)
    data = make_zip({"main.py": GOOD_MAIN, "blob.bin": os.urandom(200_000)},
                    compression=zipfile.ZIP_STORED)

    raw = upload_code(account.owner, job_id, data)
    multipart = account.owner.put(f"/api/v1/jobs/{job_id}/code",
                                  files={"file": ("code.zip", data, "application/zip")})

    for response in (raw, multipart):
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "code_too_large"
    assert _versions(account.owner, job_id) == []
    assert_nothing_left_behind(server)
