from __future__ import annotations

import io
import zipfile

import pytest

from batchyard.domain.codezip import inspect_code_zip
from batchyard.domain.requirements import normalise_requirements, parse_requirements
from batchyard.errors import InvalidCode


def refusal(text: str) -> str:
    with pytest.raises(InvalidCode) as caught:
        parse_requirements(text)
    assert caught.value.status == 422
    return caught.value.message


@pytest.mark.parametrize(("line", "why"), [
    ("--index-url https://evil.example/simple", "'--index-url' are not allowed"),
    ("-i https://evil.example/simple", "'-i' are not allowed"),
    ("--extra-index-url=https://evil.example/simple", "'--extra-index-url' are not allowed"),
    ("-e git+https://github.com/psf/requests", "'-e' are not allowed"),
    ("--editable ./pkg", "'--editable' are not allowed"),
    ("-r other.txt", "'-r' are not allowed"),
    ("-c constraints.txt", "'-c' are not allowed"),
    ("--find-links /opt/wheels", "'--find-links' are not allowed"),
    ("--trusted-host evil.example", "'--trusted-host' are not allowed"),
    ("--pre", "'--pre' are not allowed"),
])
def test_option_lines_are_refused_with_their_line_number(line: str, why: str) -> None:
    message = refusal(f"# header\nsix==1.16.0\n{line}\n")
    assert message.startswith("requirements.txt line 3: option lines such as")
    assert why in message


@pytest.mark.parametrize("line", [
    "requests @ https://files.example/requests-2.32.3-py3-none-any.whl",
    "requests@https://files.example/requests.tar.gz",
    "git+https://github.com/psf/requests",
    "https://files.example/requests-2.32.3-py3-none-any.whl",
    "http://files.example/x.tar.gz",
    "hg+https://example.org/repo",
])
def test_urls_and_direct_references_are_refused(line: str) -> None:
    message = refusal(f"{line}\n")
    assert message.startswith("requirements.txt line 1: URLs are not allowed")


@pytest.mark.parametrize("line", ["./pkg", "../pkg", "/opt/wheels/x.whl", "~/pkg",
                                  "file:///opt/pkg", "file:pkg", "pkg/sub"])
def test_local_paths_are_refused(line: str) -> None:
    message = refusal(f"six\n\n{line}\n")
    assert message.startswith("requirements.txt line 3:")
    assert "not allowed" in message


def test_a_direct_reference_to_a_local_path_is_refused() -> None:
    assert "direct references" in refusal("pkg @ ./vendor/pkg\n")


def test_an_archive_file_name_is_refused() -> None:
    assert "archive files are not allowed" in refusal("requests-2.32.3-py3-none-any.whl\n")


def test_environment_variables_are_refused() -> None:
    assert "environment variables" in refusal("six==${SIX_VERSION}\n")


def test_options_after_a_requirement_are_refused_except_hashes() -> None:
    assert "'--config-settings' is not allowed" in refusal("six --config-settings=a=b\n")
    hashed = parse_requirements("six==1.16.0 \\\n    --hash=sha256:ABCDEF0123\n")
    assert hashed[0].hashes == ("sha256:abcdef0123",)


def test_a_bad_version_specifier_names_its_line() -> None:
    message = refusal("six\nrequests==2.32#frag\n")
    assert message.startswith("requirements.txt line 2: '==2.32#frag' is not a version")


def test_comments_blank_lines_markers_specifiers_and_extras_are_accepted() -> None:
    text = ("# tools\n\n"
            "  Requests[Socks, security] >= 2.31, <3  # HTTP\n"
            "six==1.16.0\n"
            "tomli ; python_version < \"3.11\"\n"
            "python_dateutil~=2.9\n"
            "typing-extensions (>=4.0)\n"
            "\tnumpy===1.26.4\n"
            "zope.interface!=6.0.*\n")
    found = parse_requirements(text)
    assert [(r.line, r.name, r.extras, r.specifier, r.marker) for r in found] == [
        (3, "requests", ("security", "socks"), ">=2.31,<3", ""),
        (4, "six", (), "==1.16.0", ""),
        (5, "tomli", (), "", 'python_version < "3.11"'),
        (6, "python-dateutil", (), "~=2.9", ""),
        (7, "typing-extensions", (), "(>=4.0)", ""),
        (8, "numpy", (), "===1.26.4", ""),
        (9, "zope-interface", (), "!=6.0.*", ""),
    ]


def test_a_continued_line_keeps_its_first_line_number() -> None:
    message = refusal("six\nrequests \\\n  --index-url x\n")
    assert message.startswith("requirements.txt line 2:")


def test_normal_form_ignores_comments_spacing_order_and_name_spelling() -> None:
    first = "# deps\nSix == 1.16.0\n\nPython_DateUtil>=2.9  # dates\n"
    second = "python-dateutil >=2.9\nsix==1.16.0\nsix==1.16.0\n"
    assert normalise_requirements(first) == normalise_requirements(second) == (
        "python-dateutil>=2.9\nsix==1.16.0\n")


def test_normal_form_keeps_what_changes_the_install() -> None:
    assert normalise_requirements("six==1.16.0\n") != normalise_requirements("six==1.15.0\n")
    assert normalise_requirements("requests[socks]\n") == "requests[socks]\n"
    assert normalise_requirements('tomli; python_version<"3.11"\n') == \
        'tomli ; python_version<"3.11"\n'


def test_a_file_of_only_comments_needs_no_environment() -> None:
    assert normalise_requirements("# nothing yet\n\n   \n") == ""


def test_the_upload_check_refuses_a_package_whose_requirements_name_an_index() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", "def main():\n    pass\n")
        archive.writestr("requirements.txt", "six\n--index-url https://evil.example/simple\n")
    with pytest.raises(InvalidCode, match=r"^requirements.txt line 2: option lines"):
        inspect_code_zip(buffer.getvalue(), 1024 * 1024)
