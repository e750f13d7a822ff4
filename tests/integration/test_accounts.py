"""Accounts, users and API keys against a real database."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import select

from batchyard.domain.clock import FixedClock
from batchyard.domain.roles import Role
from batchyard.errors import (
    Conflict,
    FeatureDisabled,
    Forbidden,
    InvalidInput,
    NotAuthenticated,
    NotFound,
)
from batchyard.services import accounts, audit, jobs
from batchyard.services.context import Actor, Platform
from batchyard.store.models import Account, ApiKey, AuditEntry


def key_row(platform: Platform, key_hash: str) -> ApiKey:
    with platform.db.read() as session:
        return session.scalars(select(ApiKey).where(ApiKey.key_hash == key_hash)).one()


def test_user_key_authenticate_and_revoke(platform: Platform, clock: FixedClock,
                                          make_account: Callable[..., Account]) -> None:
    account = make_account()
    user, secret = accounts.create_user(platform, account.id, {
        "email": "Dev@Example.com", "role": "developer"})
    assert user.email == "dev@example.com"
    assert secret.startswith(accounts.KEY_PREFIX)

    actor = accounts.authenticate(platform, secret)
    assert actor == Actor(user_id=user.id, email="dev@example.com", role=Role.DEVELOPER,
                          account_id=account.id, batch_jobs_enabled=True,
                          super_admin_only=False)
    # Stored only as a hash; the prefix helps the user tell keys apart.
    row = key_row(platform, accounts.hash_key(secret))
    assert row.prefix == secret[:12]
    assert secret not in (row.key_hash, row.prefix)
    assert row.last_used_at == clock.now()

    clock.advance(minutes=5)
    extra = accounts.create_api_key(platform, actor, "ci")
    assert accounts.authenticate(platform, extra.secret).user_id == user.id
    assert [k.name for k in accounts.list_api_keys(platform, actor)] == ["initial", "ci"]

    clock.advance(minutes=1)
    revoked = accounts.revoke_api_key(platform, actor, extra.key.id)
    assert revoked.revoked_at == clock.now()
    with pytest.raises(NotAuthenticated):
        accounts.authenticate(platform, extra.secret)
    # Revoking twice is harmless and the first key still works.
    accounts.revoke_api_key(platform, actor, extra.key.id)
    assert accounts.authenticate(platform, secret) == actor

    entries, _ = audit.list_entries(platform, actor, None, 10, None)
    assert [(e.action, e.actor) for e in entries] == [
        ("api_key.revoke", "dev@example.com"), ("api_key.create", "dev@example.com"),
        ("user.create", "operator"), ("account.create", "operator")]
    assert secret not in repr([(e.before, e.after) for e in entries])
    assert extra.secret not in repr([(e.before, e.after) for e in entries])


def test_unknown_keys_are_refused(platform: Platform, make_account: Callable[..., Account],
                                  make_actor: Callable[..., Actor]) -> None:
    make_actor(make_account())
    for secret in ("", "byk_unknown", "not-a-key", "byk_" + "x" * 43):
        with pytest.raises(NotAuthenticated):
            accounts.authenticate(platform, secret)


def test_last_used_is_recorded_to_the_minute(platform: Platform, clock: FixedClock,
                                             make_account: Callable[..., Account]) -> None:
    _user, secret = accounts.create_user(platform, make_account().id, {
        "email": "a@example.com", "role": "viewer"})
    assert key_row(platform, accounts.hash_key(secret)).last_used_at is None
    accounts.authenticate(platform, secret)
    first = clock.now()
    clock.advance(seconds=30)
    accounts.authenticate(platform, secret)
    assert key_row(platform, accounts.hash_key(secret)).last_used_at == first
    clock.advance(seconds=31)
    accounts.authenticate(platform, secret)
    assert key_row(platform, accounts.hash_key(secret)).last_used_at == clock.now()


def test_members_revoke_only_their_own_keys(platform: Platform,
                                            make_account: Callable[..., Account],
                                            make_actor: Callable[..., Actor]) -> None:
    account = make_account()
    admin, developer = make_actor(account, "admin"), make_actor(account, "developer")
    admin_key = accounts.create_api_key(platform, admin, "admin's")
    developer_key = accounts.create_api_key(platform, developer, "dev's")
    with pytest.raises(NotFound):
        accounts.revoke_api_key(platform, developer, admin_key.key.id)
    assert {k.user_id for k in accounts.list_api_keys(platform, developer)} == {
        developer.user_id}
    accounts.revoke_api_key(platform, admin, developer_key.key.id)
    with pytest.raises(NotAuthenticated):
        accounts.authenticate(platform, developer_key.secret)


def test_user_email_is_unique_across_accounts(platform: Platform,
                                              make_account: Callable[..., Account]) -> None:
    accounts.create_user(platform, make_account().id, {"email": "x@example.com",
                                                       "role": "admin"})
    with pytest.raises(Conflict):
        accounts.create_user(platform, make_account().id, {"email": "X@example.com",
                                                           "role": "viewer"})
    with pytest.raises(InvalidInput):
        accounts.create_user(platform, make_account().id, {"email": "y@example.com\n",
                                                           "role": "viewer"})
    with pytest.raises(NotFound):
        accounts.create_user(platform, "acc_missing", {"email": "z@example.com",
                                                       "role": "viewer"})


def test_account_switches_close_batch_jobs(platform: Platform,
                                           make_account: Callable[..., Account],
                                           make_actor: Callable[..., Actor]) -> None:
    account = make_account(enabled=False)
    actor = make_actor(account, "admin")
    assert actor.batch_jobs_enabled is False
    with pytest.raises(FeatureDisabled):
        jobs.list_jobs(platform, actor)

    accounts.update_account(platform, account.id, {"batch_jobs_enabled": True,
                                                   "super_admin_only": True})
    admin = make_actor(account, "admin")
    with pytest.raises(Forbidden, match="super admins"):
        jobs.list_jobs(platform, admin)
    assert jobs.list_jobs(platform, make_actor(account, "super_admin")) == []


def test_plan_changes_are_validated_and_audited(platform: Platform,
                                                make_account: Callable[..., Account],
                                                make_actor: Callable[..., Actor]) -> None:
    account = make_account(plan={"max_jobs": 2})
    assert account.plan["max_jobs"] == 2
    with pytest.raises(InvalidInput):
        accounts.update_account(platform, account.id, {"plan": {"max_jobs": float("nan")}})
    updated = accounts.update_account(platform, account.id,
                                      {"plan": {"daily_runtime_budget_minutes": 0.5}})
    assert (updated.plan["max_jobs"], updated.plan["daily_runtime_budget_minutes"]) == (2, 0.5)
    with platform.db.read() as session:
        entry = session.scalars(select(AuditEntry).where(
            AuditEntry.action == "account.update")).one()
    assert entry.actor == "operator"
    assert entry.before is not None and entry.after is not None
    assert entry.before["plan"]["daily_runtime_budget_minutes"] == 240
    assert entry.after["plan"]["daily_runtime_budget_minutes"] == 0.5


def test_database_urls_are_stored_encrypted_and_never_audited(
        platform: Platform, make_account: Callable[..., Account]) -> None:
    url = "postgresql://etl_user:hunter2-secret@db.example.com:5432/warehouse"
    account = make_account()
    accounts.update_account(platform, account.id, {"databases": {"etl": url}})
    with platform.db.read() as session:
        stored = session.get_one(Account, account.id).db_etl
        entries = list(session.scalars(select(AuditEntry)))
    assert stored is not None and "hunter2" not in stored
    assert platform.secrets.decrypt(stored) == url
    assert "hunter2" not in repr([(e.before, e.after) for e in entries])
