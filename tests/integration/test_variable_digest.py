"""The keyed digest of each variable's value: how ``batchyard deploy`` compares a secret
it holds with the server's without the API ever returning the secret."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.fernet import Fernet

from batchyard.services import jobs
from batchyard.services.context import Actor, Platform
from batchyard.services.secrets import SecretBox
from batchyard.store.models import Account

SECRET = "s3cret-token-of-the-job"


def test_digests_follow_values_and_reveal_nothing_across_jobs(
        platform: Platform, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor]) -> None:
    account = make_account()
    admin = make_actor(account, "admin")
    first = jobs.create_job(platform, admin, {"name": "first"})
    second = jobs.create_job(platform, admin, {"name": "second"})
    written = jobs.replace_variables(platform, admin, first.id, [
        {"key": "TOKEN", "value": SECRET, "secret": True},
        {"key": "REGION", "value": "eu-west-1"}])
    listed = jobs.list_variables(platform, admin, first.id)
    # The answer to the write and a later read agree: deploy records one, compares the other.
    assert [(v.key, v.value, v.digest) for v in written] == \
        [(v.key, v.value, v.digest) for v in listed]
    token = listed[0]
    assert token.value is None and len(token.digest) == 64
    assert SECRET not in token.digest

    # A changed secret changes its digest; writing the same value again does not.
    jobs.replace_variables(platform, admin, first.id, [
        {"key": "TOKEN", "value": SECRET + "!", "secret": True}])
    assert jobs.list_variables(platform, admin, first.id)[0].digest != token.digest
    jobs.replace_variables(platform, admin, first.id, [
        {"key": "TOKEN", "value": SECRET, "secret": True}])
    assert jobs.list_variables(platform, admin, first.id)[0].digest == token.digest

    # The same value in another job (or under another key) shows a different digest.
    jobs.replace_variables(platform, admin, second.id, [
        {"key": "TOKEN", "value": SECRET, "secret": True},
        {"key": "OTHER", "value": SECRET, "secret": True}])
    other_job = jobs.list_variables(platform, admin, second.id)
    assert len({token.digest, other_job[0].digest, other_job[1].digest}) == 3

    # Another account's digest of the same job, key and value differs (key per account), and
    # a server with another secret key gives other digests: nobody without the key computes it.
    box = platform.secrets
    assert box.value_digest(account.id, first.id, "TOKEN", SECRET) == token.digest
    assert box.value_digest("another-account", first.id, "TOKEN", SECRET) != token.digest
    assert SecretBox(Fernet.generate_key()).value_digest(
        account.id, first.id, "TOKEN", SECRET) != token.digest
