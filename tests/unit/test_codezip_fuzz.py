"""Fuzzing the zip validator: random archives, names, sizes, nesting and damage.

Whatever comes in, ``inspect_code_zip`` either describes a package whose every entry
extracts to a safe relative path, or refuses with its own errors; it never raises
anything else, and it reads the archive a fixed number of times whatever its size.
"""

from __future__ import annotations

import io
import stat
import warnings
import zipfile
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from batchyard.domain import codezip
from batchyard.domain.codezip import (
    MAX_COMPONENT_BYTES,
    MAX_PATH_BYTES,
    ZipLimits,
    inspect_code_zip,
    read_members,
)
from batchyard.errors import CodeTooLarge, InvalidCode

LIMIT = 4 * 1024 * 1024
SMALL = ZipLimits(max_files=50, max_uncompressed_bytes=256 * 1024, max_ratio=200)
MAIN = b"def main(event):\n    return event\n"

component = st.one_of(
    st.sampled_from(["", ".", "..", "main.py", "requirements.txt", "__MACOSX", ".DS_Store",
                     "pkg", "C:", "a\\b", "\x00", "x" * 256, "é" * 128]),
    st.text(min_size=1, max_size=12),
)
name = st.lists(component, min_size=1, max_size=6).map("/".join) | st.sampled_from(
    ["main.py", "pkg/main.py", "/etc/passwd", "../up.py", "d/", "/".join(["e" * 250] * 17)])
mode = st.sampled_from([0, stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777,
                        stat.S_IFIFO | 0o644, stat.S_IFCHR | 0o644])
method = st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                          zipfile.ZIP_LZMA])
content = st.binary(max_size=2048) | st.just(MAIN) | st.sampled_from(
    [b"def main(:\n", b"main = 1\n", b"requests==2.0\n", b"--index-url x\n", b"\xff\xfe"])
entry = st.tuples(name, content, mode, method)


def build(entries: list[tuple[str, bytes, int, int]], with_main: bool) -> bytes:
    buffer = io.BytesIO()
    # Duplicate names are a case to fuzz, not a mistake of the test.
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as archive:
        warnings.simplefilter("ignore")
        if with_main:
            archive.writestr("main.py", MAIN)
        for entry_name, data, entry_mode, entry_method in entries:
            info = zipfile.ZipInfo(entry_name)
            info.external_attr = entry_mode << 16
            info.compress_type = entry_method
            archive.writestr(info, data)
    return buffer.getvalue()


def check(data: bytes, limits: ZipLimits = SMALL) -> None:
    """The validator's contract on any input. Damage inside an entry other than main.py
    and requirements.txt is found only when it is extracted: a refusal then is fine."""
    try:
        manifest = inspect_code_zip(data, LIMIT, limits)
        extracted = list(read_members(data, manifest))
    except (InvalidCode, CodeTooLarge):
        return
    targets = set()
    for found, body in extracted:
        parts = found.target.split("/")
        assert found.target and not found.target.startswith("/")
        assert ".." not in parts and "" not in parts and "." not in parts
        assert all(len(part.encode()) <= MAX_COMPONENT_BYTES for part in parts)
        assert len(found.target.encode()) <= MAX_PATH_BYTES
        assert len(body) == found.size
        assert found.target not in targets
        targets.add(found.target)
    assert "main.py" in targets


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(entry, max_size=12), st.booleans())
@example([("a" * 256 + "/x.py", b"x", 0, zipfile.ZIP_DEFLATED)], True)
@example([("/".join(["e" * 250] * 17), b"x", 0, zipfile.ZIP_DEFLATED)], True)
@example([("main.py/x", b"x", 0, zipfile.ZIP_STORED)], True)
@example([("MAIN.py", b"x", 0, zipfile.ZIP_STORED), ("pkg/", b"", 0, 0)], False)
def test_random_archives_are_described_or_refused_never_raised(
        entries: list[tuple[str, bytes, int, int]], with_main: bool) -> None:
    check(build(entries, with_main))


@settings(max_examples=200, deadline=None)
@given(st.lists(entry, max_size=4), st.data())
def test_damaged_archives_are_refused_never_raised(
        entries: list[tuple[str, bytes, int, int]], data: st.DataObject) -> None:
    archive = bytearray(build(entries, True))
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(archive) - 1))
        archive[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(archive)))
    check(bytes(archive[:cut] if data.draw(st.booleans()) else archive))


@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_refused_never_raised(data: bytes) -> None:
    check(data)


@pytest.mark.parametrize("count", [10, 1000, 2000])
def test_the_archive_is_opened_a_fixed_number_of_times_whatever_its_size(
        count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # The quadratic setup came from opening the archive (parsing its whole directory)
    # once per entry.
    data = build([(f"pkg/f{n}.py", b"X = 1\n", 0, zipfile.ZIP_DEFLATED)
                  for n in range(count - 1)], True)
    opened = []
    real_open = codezip._open_zip

    def counting(raw: bytes) -> Any:
        opened.append(len(raw))
        return real_open(raw)

    monkeypatch.setattr(codezip, "_open_zip", counting)
    manifest = inspect_code_zip(data, 64 * 1024 * 1024)
    assert sum(1 for _ in read_members(data, manifest)) == count
    assert len(opened) == 2  # one listing (main.py read from it) and one extraction pass


def test_an_entry_needing_a_newer_zip_version_is_refused() -> None:
    # Found by the fuzz test: zipfile raises NotImplementedError while listing it (a 500).
    data = bytearray(build([], True))
    central = data.index(b"PK\x01\x02")
    data[central + 6:central + 8] = (64).to_bytes(2, "little")
    with pytest.raises(InvalidCode, match="not a zip file"):
        inspect_code_zip(bytes(data), LIMIT)


def test_a_stored_entry_shorter_than_its_declared_size_is_refused() -> None:
    # Found by the fuzz test: zipfile ends such an entry early, without an error.
    data = bytearray(build([("data.bin", b"x" * 100, 0, zipfile.ZIP_STORED)], True))
    central = data.rindex(b"PK\x01\x02")
    data[central + 24:central + 28] = (300).to_bytes(4, "little")  # uncompressed size
    manifest = inspect_code_zip(bytes(data), LIMIT)
    with pytest.raises(InvalidCode, match="less data than its header declares"):
        list(read_members(bytes(data), manifest))
