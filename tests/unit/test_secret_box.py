"""The secret box checks its key at start without cryptography, and loads it at first use."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from batchyard.services.secrets import SecretBox, SecretUndecryptable, check_key, generate_key

KEYS = [
    Fernet.generate_key(),
    generate_key(),
    b"",
    b"not base64 at all!",
    base64.urlsafe_b64encode(b"x" * 31),
    base64.urlsafe_b64encode(b"x" * 33),
    base64.urlsafe_b64encode(b"x" * 32).rstrip(b"="),
    base64.b64encode(b"\xff" * 32),  # standard alphabet: '+' and '/'
    base64.urlsafe_b64encode(b"\xff" * 32),
    base64.urlsafe_b64encode(b"x" * 32) + b"=",  # too much padding
    b" " + Fernet.generate_key(),
    Fernet.generate_key() + b"\n",
    Fernet.generate_key()[:10] + b" " + Fernet.generate_key()[10:],
    Fernet.generate_key().rstrip(b"=") + b"==",
    b"=" + Fernet.generate_key(),
]


@pytest.mark.parametrize("key", KEYS)
def test_the_start_refuses_exactly_the_keys_fernet_refuses(key: bytes) -> None:
    try:
        Fernet(key)
        fernet_accepts = True
    except (ValueError, TypeError):
        fernet_accepts = False
    try:
        check_key(key)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == fernet_accepts


def test_a_generated_key_encrypts_with_fernet_and_back(tmp_path: Path) -> None:
    box = SecretBox.from_data_dir(tmp_path, None)
    token = box.encrypt("s3cret")
    assert Fernet((tmp_path / "secret.key").read_bytes()).decrypt(token.encode()) == b"s3cret"
    assert box.decrypt(token) == "s3cret"
    with pytest.raises(SecretUndecryptable):
        SecretBox(Fernet.generate_key()).decrypt(token)


def test_cryptography_is_loaded_at_the_first_secret_not_at_start(tmp_path: Path) -> None:
    probe = (
        "import sys, pathlib\n"
        "from batchyard.services.secrets import SecretBox\n"
        f"box = SecretBox.from_data_dir(pathlib.Path({str(tmp_path)!r}), None)\n"
        "print('cryptography' in sys.modules)\n"
        "box.encrypt('x')\n"
        "print('cryptography' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "True"]
