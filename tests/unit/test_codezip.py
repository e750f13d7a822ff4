from __future__ import annotations

import io
import os
import stat
import struct
import time
import zipfile
from collections.abc import Callable, Iterator

import pytest

from batchyard.domain.codezip import (
    MIB,
    CodeManifest,
    ZipLimits,
    inspect_code_zip,
    read_member,
)
from batchyard.errors import CodeTooLarge, InvalidCode

MAIN = "def main(event):\n    return event\n"
LIMIT = 4 * MIB

Member = tuple[str | zipfile.ZipInfo, bytes | str]


def build_zip(*members: Member, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in members:
            archive.writestr(name, content)
    return buffer.getvalue()


@pytest.fixture
def code_zip() -> Callable[..., bytes]:
    """Build a zip holding main.py (overridable) plus any extra members."""

    def make(*extra: Member, main: str | None = MAIN, folder: str = "") -> bytes:
        members: list[Member] = [] if main is None else [(f"{folder}main.py", main)]
        return build_zip(*members, *extra)

    return make


def with_mode(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info


def patch_central(data: bytes, name: str, offset: int, fmt: str, value: int) -> bytes:
    """Overwrite one field of an entry's central directory header."""
    header = data.index(b"PK\x01\x02")
    while True:
        length = struct.unpack_from("<H", data, header + 28)[0]
        if data[header + 46 : header + 46 + length] == name.encode():
            break
        header = data.index(b"PK\x01\x02", header + 46)
    patched = bytearray(data)
    struct.pack_into(fmt, patched, header + offset, value)
    return bytes(patched)


def refusal(data: bytes, limits: ZipLimits | None = None, max_size: int = LIMIT) -> str:
    with pytest.raises(InvalidCode) as caught:
        if limits is None:
            inspect_code_zip(data, max_size)
        else:
            inspect_code_zip(data, max_size, limits)
    return caught.value.message


# Layout


def test_valid_zip_with_main_at_root(code_zip: Callable[..., bytes]) -> None:
    data = code_zip(("lib/util.py", "X = 1\n"), ("requirements.txt", "requests==2.32\n"))

    manifest = inspect_code_zip(data, LIMIT)

    assert manifest.prefix == ""
    assert [(e.name, e.target) for e in manifest.entries] == [
        ("main.py", "main.py"),
        ("lib/util.py", "lib/util.py"),
        ("requirements.txt", "requirements.txt"),
    ]
    assert manifest.has_requirements
    assert manifest.requirements == "requests==2.32\n"
    assert manifest.main_parameters == 1
    assert manifest.total_size == sum(e.size for e in manifest.entries)
    assert manifest.entries[0].size == len(MAIN)


def test_valid_zip_with_main_in_single_top_level_folder(
    code_zip: Callable[..., bytes],
) -> None:
    data = code_zip(("proj/", b""), ("proj/lib/util.py", "X = 1\n"), folder="proj/")

    manifest = inspect_code_zip(data, LIMIT)

    assert manifest.prefix == "proj/"
    assert [(e.name, e.target) for e in manifest.entries] == [
        ("proj/main.py", "main.py"),
        ("proj/lib/util.py", "lib/util.py"),
    ]
    assert not manifest.has_requirements
    assert manifest.requirements is None


def test_macos_junk_is_tolerated_and_skipped(code_zip: Callable[..., bytes]) -> None:
    data = code_zip(
        ("__MACOSX/", b""),
        ("__MACOSX/proj/._main.py", b"\x00\x05junk"),
        ("proj/.DS_Store", b"\x00junk"),
        ("__MACOSX/._x", b"junk"),
        folder="proj/",
    )

    manifest = inspect_code_zip(data, LIMIT)

    assert manifest.prefix == "proj/"
    assert [e.target for e in manifest.entries] == ["main.py"]


def test_ds_store_at_root_is_skipped(code_zip: Callable[..., bytes]) -> None:
    manifest = inspect_code_zip(code_zip((".DS_Store", b"\x00")), LIMIT)

    assert [e.target for e in manifest.entries] == ["main.py"]


def test_backslash_separators_are_normalised(code_zip: Callable[..., bytes]) -> None:
    manifest = inspect_code_zip(code_zip(("lib\\util.py", "X = 1\n")), LIMIT)

    assert manifest.entries[1].name == "lib\\util.py"
    assert manifest.entries[1].target == "lib/util.py"


def test_zip_without_main_is_refused_and_lists_what_it_holds(
    code_zip: Callable[..., bytes],
) -> None:
    message = refusal(code_zip(("a.py", ""), ("b/c.py", ""), main=None))

    assert "main.py not found at the zip's root" in message
    assert "found: a.py, b/" in message


def test_main_nested_too_deep_is_refused_with_a_hint(
    code_zip: Callable[..., bytes],
) -> None:
    message = refusal(code_zip(folder="outer/inner/"))

    assert "found: outer/" in message
    assert "outer/inner/main.py" in message


def test_folder_next_to_other_files_is_not_a_single_top_level_folder(
    code_zip: Callable[..., bytes],
) -> None:
    message = refusal(code_zip(("README.md", "hi"), folder="proj/"))

    assert "found: README.md, proj/" in message


def test_listing_of_found_entries_is_capped(code_zip: Callable[..., bytes]) -> None:
    extra = [(f"f{i:02}.py", "") for i in range(30)]
    message = refusal(code_zip(*extra, main=None))

    assert "f09.py, … (20 more)" in message
    assert "f10.py" not in message


def test_zip_with_only_folders_is_refused(code_zip: Callable[..., bytes]) -> None:
    assert "holds no files" in refusal(code_zip(("src/", b""), main=None))


# Not a zip, too large


@pytest.mark.parametrize(
    "data", [b"", os.urandom(300), b"PK\x03\x04 truncated"], ids=["empty", "random", "truncated"]
)
def test_upload_that_is_not_a_zip_is_refused(data: bytes) -> None:
    assert refusal(data).startswith("The upload is not a zip file")


def test_upload_over_plan_size_is_too_large(code_zip: Callable[..., bytes]) -> None:
    data = code_zip(("blob.bin", os.urandom(5 * MIB)))

    with pytest.raises(CodeTooLarge) as caught:
        inspect_code_zip(data, LIMIT)

    assert "5.0 MiB" in caught.value.message
    assert "4.0 MiB" in caught.value.message
    assert caught.value.extra == {"size": len(data), "limit": LIMIT}


def test_upload_just_over_the_limit_shows_exact_bytes(
    code_zip: Callable[..., bytes],
) -> None:
    data = code_zip()

    with pytest.raises(CodeTooLarge) as caught:
        inspect_code_zip(data, len(data) - 1)

    assert f"{len(data) - 1:,} bytes" in caught.value.message


# main.py


def test_syntax_error_in_main_reports_its_line(code_zip: Callable[..., bytes]) -> None:
    message = refusal(code_zip(main="import os\n\ndef main(:\n    pass\n"))

    assert message.startswith("main.py line 3: ")


def test_main_that_is_not_utf8_is_refused(code_zip: Callable[..., bytes]) -> None:
    data = build_zip(("main.py", b"# ok\n# caf\xe9\ndef main(): pass\n"))

    assert refusal(data).startswith("main.py line 2: not valid UTF-8")


def test_main_with_utf8_bom_is_accepted() -> None:
    data = build_zip(("main.py", b"\xef\xbb\xbf" + MAIN.encode()))

    assert inspect_code_zip(data, LIMIT).main_parameters == 1


def test_main_with_invalid_escape_parses_without_warning(
    code_zip: Callable[..., bytes],
) -> None:
    manifest = inspect_code_zip(code_zip(main='P = "\\d+"\ndef main(): pass\n'), LIMIT)

    assert manifest.main_parameters == 0


@pytest.mark.parametrize(
    ("signature", "parameters"),
    [
        ("main()", 0),
        ("main(event)", 1),
        ("main(event=None)", 1),
        ("main(*args)", 1),
        ("main(event, /)", 1),
        ("main(event, retries=3)", 1),
        ("main(**kwargs)", 0),
        ("main(*, dry_run=False)", 0),
    ],
)
def test_main_signatures_that_can_be_called_are_accepted(
    code_zip: Callable[..., bytes],
    signature: str,
    parameters: int,
) -> None:
    manifest = inspect_code_zip(code_zip(main=f"def {signature}:\n    pass\n"), LIMIT)

    assert manifest.main_parameters == parameters


def test_main_with_two_positional_parameters_is_refused(
    code_zip: Callable[..., bytes],
) -> None:
    message = refusal(code_zip(main="def main(a, b):\n    pass\n"))

    assert "main must take 0 or 1 positional parameter (event), found 2: a, b" in message


def test_main_with_required_keyword_only_parameter_is_refused(
    code_zip: Callable[..., bytes],
) -> None:
    message = refusal(code_zip(main="def main(event, *, token):\n    pass\n"))

    assert "required keyword-only parameters, found: token" in message


def test_async_main_is_refused(code_zip: Callable[..., bytes]) -> None:
    message = refusal(code_zip(main="async def main(event):\n    pass\n"))

    assert "not async def" in message


@pytest.mark.parametrize(
    "source", ["def handler(event):\n    pass\n", "if True:\n    def main():\n        pass\n", ""]
)
def test_missing_main_function_is_refused(
    code_zip: Callable[..., bytes],
    source: str,
) -> None:
    message = refusal(code_zip(main=source))

    assert "main.py must define a function main(event) or main()" in message


@pytest.mark.parametrize(
    "source",
    [
        "def run(): pass\nmain = run\n",
        "from app import run as main\n",
        "def main(): pass\nmain = 1\n",
    ],
)
def test_main_bound_other_than_by_def_is_refused(
    code_zip: Callable[..., bytes],
    source: str,
) -> None:
    message = refusal(code_zip(main=source))

    assert "main is bound by" in message


def test_main_redefined_by_def_uses_the_last_definition(
    code_zip: Callable[..., bytes],
) -> None:
    source = "main = None\ndef main():\n    pass\n"

    assert inspect_code_zip(code_zip(main=source), LIMIT).main_parameters == 0


def test_oversized_main_is_refused(code_zip: Callable[..., bytes]) -> None:
    source = MAIN + "# " + os.urandom(MIB).hex() + "\n"

    assert "main.py is 2.0 MiB" in refusal(code_zip(main=source))


def test_requirements_that_are_not_utf8_are_refused(
    code_zip: Callable[..., bytes],
) -> None:
    message = refusal(code_zip(("requirements.txt", b"caf\xe9\n")))

    assert message.startswith("requirements.txt line 1: not valid UTF-8")


# Unsafe entries


@pytest.mark.parametrize("name", ["../evil.py", "lib/../../evil.py", "lib\\..\\..\\x.py"])
def test_zip_with_parent_dir_component_is_refused(
    code_zip: Callable[..., bytes],
    name: str,
) -> None:
    message = refusal(code_zip((name, "")))

    assert repr(name) in message
    assert "'..'" in message


@pytest.mark.parametrize(
    "name", ["/etc/cron.d/x", "C:\\x.py", "c:x.py", "\\evil.py", "//server/share/x.py"]
)
def test_zip_with_absolute_path_is_refused(
    code_zip: Callable[..., bytes],
    name: str,
) -> None:
    message = refusal(code_zip((name, "")))

    assert repr(name) in message
    assert "absolute path" in message


def test_zip_with_nul_byte_in_a_name_is_refused(code_zip: Callable[..., bytes]) -> None:
    data = code_zip(("evilXname.py", "")).replace(b"evilXname", b"evil\x00name")

    assert "control character" in refusal(data)


def test_zip_with_symlink_entry_is_refused(code_zip: Callable[..., bytes]) -> None:
    message = refusal(code_zip((with_mode("link.py", 0o120777), "/etc/passwd")))

    assert "'link.py' is a symbolic link" in message


@pytest.mark.parametrize("kind", [stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK])
def test_zip_with_device_fifo_or_socket_entry_is_refused(
    code_zip: Callable[..., bytes],
    kind: int,
) -> None:
    message = refusal(code_zip((with_mode("dev", kind | 0o644), "")))

    assert "'dev' is a device, pipe or socket" in message


def test_symlink_is_refused_even_among_skipped_junk(
    code_zip: Callable[..., bytes],
) -> None:
    message = refusal(code_zip((with_mode("__MACOSX/link", 0o120777), "/")))

    assert "symbolic link" in message


def test_zip_with_encrypted_entry_is_refused(code_zip: Callable[..., bytes]) -> None:
    data = patch_central(code_zip(("secret.py", "X = 1\n")), "secret.py", 8, "<H", 0x1)

    assert "'secret.py' is encrypted" in refusal(data)


def test_zip_with_unsupported_compression_method_is_refused(
    code_zip: Callable[..., bytes],
) -> None:
    data = patch_central(code_zip(("odd.py", "X = 1\n")), "odd.py", 10, "<H", 99)

    assert "'odd.py' uses an unsupported compression method" in refusal(data)


def test_zip_with_overlong_name_component_is_refused(code_zip: Callable[..., bytes]) -> None:
    message = refusal(code_zip(("x" * 256 + ".py", "")))

    assert "longer than 255 bytes" in message


def test_zip_with_duplicate_names_is_refused(code_zip: Callable[..., bytes]) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        data = code_zip(("util.py", "A = 1\n"), ("util.py", "A = 2\n"))

    assert "would both be extracted to 'util.py'" in refusal(data)


def test_zip_with_names_that_normalise_to_the_same_target_is_refused(
    code_zip: Callable[..., bytes],
) -> None:
    message = refusal(code_zip(("lib/util.py", ""), ("lib\\util.py", "")))

    assert "'lib/util.py' and 'lib\\\\util.py' would both be extracted" in message


def test_zip_with_a_file_where_a_folder_is_needed_is_refused(
    code_zip: Callable[..., bytes],
) -> None:
    message = refusal(code_zip(("lib", "x"), ("lib/util.py", "")))

    assert "'lib' is a file, but other entries need 'lib' to be a folder" in message


# Bounds


def test_zip_with_too_many_files_is_refused(code_zip: Callable[..., bytes]) -> None:
    data = code_zip(*[(f"m{i}.py", "") for i in range(10)])

    message = refusal(data, ZipLimits(max_files=10))

    assert "holds 11 entries; at most 10" in message


def test_zip_expanding_past_the_limit_is_refused(code_zip: Callable[..., bytes]) -> None:
    data = code_zip(("a.bin", os.urandom(600)), ("b.bin", os.urandom(600)))

    message = refusal(data, ZipLimits(max_uncompressed_bytes=1000))

    assert "zip bomb" in message


def test_entry_with_extreme_compression_ratio_is_refused(
    code_zip: Callable[..., bytes],
) -> None:
    data = code_zip(("zeros.bin", bytes(2 * MIB)))

    message = refusal(data)

    assert "'zeros.bin' expands" in message
    assert "zip bomb" in message


def test_highly_compressible_small_entry_is_accepted(
    code_zip: Callable[..., bytes],
) -> None:
    manifest = inspect_code_zip(code_zip(("zeros.bin", bytes(MIB))), LIMIT)

    assert manifest.entries[1].size == MIB


@pytest.fixture(scope="module")
def gigabyte_bomb() -> Iterator[bytes]:
    buffer = io.BytesIO()
    # Level 1 keeps building this real 1 GiB deflate stream to about two seconds.
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("main.py", MAIN)
        with archive.open("zeros.bin", "w", force_zip64=True) as member:
            chunk = bytes(MIB)
            for _ in range(1024):
                member.write(chunk)
    yield buffer.getvalue()


def test_zip_bomb_is_refused_at_default_limits_without_expanding_it(
    gigabyte_bomb: bytes,
) -> None:
    started = time.monotonic()

    # The plan's upload limit is not what this test is about.
    message = refusal(gigabyte_bomb, ZipLimits(), max_size=len(gigabyte_bomb))

    assert time.monotonic() - started < 1
    assert "would expand to 1.0 GiB" in message
    assert "zip bomb" in message


# read_member


def test_read_member_returns_the_content(code_zip: Callable[..., bytes]) -> None:
    data = code_zip(("lib/util.py", "X = 1\n"))
    manifest = inspect_code_zip(data, LIMIT)

    assert read_member(data, manifest, manifest.entries[1], 100) == b"X = 1\n"


def test_read_member_refuses_entry_over_max_bytes(code_zip: Callable[..., bytes]) -> None:
    data = code_zip(("lib/util.py", "X = 1\n"))
    manifest = inspect_code_zip(data, LIMIT)

    with pytest.raises(InvalidCode, match="at most 5 bytes"):
        read_member(data, manifest, manifest.entries[1], 5)


def test_read_member_refuses_entry_not_in_manifest(code_zip: Callable[..., bytes]) -> None:
    data = code_zip()
    manifest = inspect_code_zip(data, LIMIT)
    stranger = CodeManifest((), "", False, None, 0, 0)

    with pytest.raises(ValueError, match="not an entry"):
        read_member(data, stranger, manifest.entries[0], 100)


def test_member_whose_header_understates_its_size_is_refused(
    code_zip: Callable[..., bytes],
) -> None:
    data = code_zip(("data.txt", "0123456789"))
    lying = patch_central(data, "data.txt", 24, "<I", 5)
    manifest = inspect_code_zip(lying, LIMIT)
    entry = manifest.entries[1]

    assert entry.size == 5
    with pytest.raises(InvalidCode, match=r"'data\.txt' could not be read"):
        read_member(lying, manifest, entry, 100)


def test_main_whose_header_understates_its_size_is_refused(
    code_zip: Callable[..., bytes],
) -> None:
    data = patch_central(code_zip(), "main.py", 24, "<I", 10)

    assert "'main.py' could not be read" in refusal(data)
