"""Accounts, users and API keys: the operator's and the account's own use cases."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError
from sqlalchemy.orm import Session

from batchyard.domain.jobs import EMAIL_PATTERN
from batchyard.domain.plans import Plan, apply_plan_changes, plan_from_dict
from batchyard.domain.roles import Role, parse_role
from batchyard.domain.schedules import validate_timezone
from batchyard.errors import Conflict, InvalidInput, NotAuthenticated, NotFound
from batchyard.services import audit
from batchyard.services.context import Actor, Platform
from batchyard.services.databases import driver_url
from batchyard.services.ids import new_id
from batchyard.services.passwords import hash_password
from batchyard.store import scoped
from batchyard.store.models import Account, ApiKey, User

OPERATOR = "operator"
KEY_PREFIX = "byk_"
_LAST_USED_PRECISION = timedelta(seconds=60)


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    secret: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _validate_bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{field} must be true or false", field=field)
    return value


def create_account(platform: Platform, data: dict[str, Any]) -> Account:
    name = data.get("name")
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 200:
        raise InvalidInput("name must be 1 to 200 characters", field="name")
    timezone = validate_timezone(data.get("timezone") or "UTC")
    enabled = _validate_bool(data.get("batch_jobs_enabled", False), "batch_jobs_enabled")
    plan = apply_plan_changes(Plan(), data.get("plan") or {})
    now = platform.clock.now()
    with platform.db.write() as session:
        account = Account(id=new_id("acc"), name=name.strip(), timezone=timezone,
                          batch_jobs_enabled=enabled, super_admin_only=False,
                          budget_mode="recorded", plan=plan.as_dict(), created_at=now)
        session.add(account)
        session.flush()
        audit.record(session, account_id=account.id, actor=OPERATOR, at=now,
                     action="account.create", target=account.id,
                     after={"name": account.name, "plan": account.plan})
        return account


def get_account(platform: Platform, account_id: str) -> Account:
    with platform.db.read() as session:
        return scoped.account(session, account_id)


def update_account(platform: Platform, account_id: str, data: dict[str, Any]) -> Account:
    known = {"timezone", "batch_jobs_enabled", "super_admin_only", "budget_mode", "plan",
             "databases", "name"}
    unknown = set(data) - known
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}",
                           field=sorted(unknown)[0])
    now = platform.clock.now()
    with platform.db.write() as session:
        account = scoped.account(session, account_id, lock=True)
        before: dict[str, Any] = {}
        after: dict[str, Any] = {}

        def change(field: str, value: Any) -> None:
            old = getattr(account, field)
            if old != value:
                before[field], after[field] = old, value
                setattr(account, field, value)

        if "name" in data:
            if not isinstance(data["name"], str) or not 1 <= len(data["name"]) <= 200:
                raise InvalidInput("name must be 1 to 200 characters", field="name")
            change("name", data["name"])
        if "timezone" in data:
            change("timezone", validate_timezone(data["timezone"]))
        for flag in ("batch_jobs_enabled", "super_admin_only"):
            if flag in data:
                change(flag, _validate_bool(data[flag], flag))
        if "budget_mode" in data:
            if data["budget_mode"] not in ("recorded", "strict"):
                raise InvalidInput("budget_mode must be 'recorded' or 'strict'",
                                   field="budget_mode")
            change("budget_mode", data["budget_mode"])
        if "plan" in data:
            if not isinstance(data["plan"], dict):
                raise InvalidInput("plan must be an object", field="plan")
            change("plan", apply_plan_changes(plan_from_dict(account.plan),
                                              data["plan"]).as_dict())
        if "databases" in data:
            _set_databases(platform, account, data["databases"], before, after)
        if after:
            audit.record(session, account_id=account.id, actor=OPERATOR, at=now,
                         action="account.update", target=account.id, before=before,
                         after=after)
    # After the commit: cached actors carry the account's switches.
    platform.auth.clear()
    return account


def _set_databases(platform: Platform, account: Account, value: object,
                   before: dict[str, Any], after: dict[str, Any]) -> None:
    if not isinstance(value, dict) or set(value) - {"main", "etl"}:
        raise InvalidInput("databases must be an object with 'main' and/or 'etl' URLs",
                           field="databases")
    for name, url in value.items():
        if url is not None and (not isinstance(url, str) or "://" not in url):
            raise InvalidInput(f"databases.{name} must be a database URL or null",
                               field=f"databases.{name}")
        if url:
            # Refused here rather than at a job's first query: the operator is the one to fix it.
            driver_url(url, field=f"databases.{name}")
        setattr(account, f"db_{name}", platform.secrets.encrypt(url) if url else None)
        # Never the URL itself: it carries credentials.
        before[f"databases.{name}"] = "(changed)"
        after[f"databases.{name}"] = describe_database_url(url) if url else None


def describe_database_url(url: str) -> str:
    """Driver, host and port only: never the user, the password, the path or the query
    (``?password=...`` is a form drivers accept, so the query is as secret as the rest)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return "(unparsable URL)"
    host = parsed.host or ""
    if parsed.port is not None:
        host = f"{host}:{parsed.port}"
    return f"{parsed.drivername}://{host}"


def create_user(platform: Platform, account_id: str, data: dict[str, Any]) -> tuple[User, str]:
    email = data.get("email")
    if not isinstance(email, str) or not EMAIL_PATTERN.match(email) or len(email) > 254:
        raise InvalidInput("email must be an e-mail address", field="email")
    role = parse_role(data.get("role"))
    password = data.get("password")
    if password is not None and (not isinstance(password, str) or len(password) < 8):
        raise InvalidInput("password must be at least 8 characters", field="password")
    now = platform.clock.now()
    with platform.db.write() as session:
        scoped.account(session, account_id)
        if session.scalars(select(User).where(User.email == email.lower())).first():
            raise Conflict(f"A user with e-mail {email} already exists.")
        user = User(id=new_id("usr"), account_id=account_id, email=email.lower(),
                    role=role.value, created_at=now,
                    password_hash=hash_password(password) if password else None)
        session.add(user)
        session.flush()
        new = _new_key(session, user, "initial", now)
        audit.record(session, account_id=account_id, actor=OPERATOR, at=now,
                     action="user.create", target=user.id,
                     after={"email": user.email, "role": user.role})
        try:
            session.flush()
        except IntegrityError as exc:
            raise Conflict(f"A user with e-mail {email} already exists.") from exc
        return user, new.secret


def _new_key(session: Session, user: User, name: str, now: Any) -> NewKey:
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(id=new_id("key"), account_id=user.account_id, user_id=user.id, name=name,
                 prefix=secret[:12], key_hash=hash_key(secret), created_at=now)
    session.add(key)
    return NewKey(key, secret)


def cached_actor(platform: Platform, secret: str) -> Actor | None:
    """The actor of a key authenticated less than a second ago, without a database read."""
    return platform.auth.get(hash_key(secret))


def authenticate(platform: Platform, secret: str) -> Actor:
    if not secret.startswith(KEY_PREFIX):
        raise NotAuthenticated("Unknown or revoked API key.")
    key_hash = hash_key(secret)
    now = platform.clock.now()
    with platform.db.read() as session:
        row = session.execute(
            select(ApiKey, User, Account).join(User, User.id == ApiKey.user_id)
            .join(Account, Account.id == ApiKey.account_id)
            .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        ).one_or_none()
        if row is None:
            raise NotAuthenticated("Unknown or revoked API key.")
        key, user, account = row
        stale = key.last_used_at is None or now - key.last_used_at > _LAST_USED_PRECISION
    if stale:
        # Recorded to the minute, so that hot API paths do not write on every request.
        with platform.db.write() as session:
            session.get_one(ApiKey, key.id).last_used_at = now
    actor = Actor(user_id=user.id, email=user.email, role=Role(user.role),
                  account_id=account.id, batch_jobs_enabled=account.batch_jobs_enabled,
                  super_admin_only=account.super_admin_only)
    platform.auth.put(key_hash, actor)
    return actor


def create_api_key(platform: Platform, actor: Actor, name: object) -> NewKey:
    if name is not None and (not isinstance(name, str) or len(name) > 100):
        raise InvalidInput("name must be a string of at most 100 characters", field="name")
    now = platform.clock.now()
    with platform.db.write() as session:
        user = scoped.user(session, actor.account_id, actor.user_id)
        new = _new_key(session, user, name or "", now)
        audit.record_by(session, actor, now, "api_key.create", new.key.id,
                        after={"name": new.key.name, "prefix": new.key.prefix})
        return new


def list_api_keys(platform: Platform, actor: Actor) -> list[ApiKey]:
    with platform.db.read() as session:
        stmt = select(ApiKey).where(ApiKey.account_id == actor.account_id)
        if actor.role not in (Role.ADMIN, Role.SUPER_ADMIN):
            stmt = stmt.where(ApiKey.user_id == actor.user_id)
        return list(session.scalars(stmt.order_by(ApiKey.id)))


def revoke_api_key(platform: Platform, actor: Actor, key_id: str) -> ApiKey:
    now = platform.clock.now()
    with platform.db.write() as session:
        key = scoped.api_key(session, actor.account_id, key_id)
        if key.user_id != actor.user_id and actor.role not in (Role.ADMIN, Role.SUPER_ADMIN):
            raise NotFound(f"API key {key_id} not found.")
        if key.revoked_at is None:
            key.revoked_at = now
            audit.record_by(session, actor, now, "api_key.revoke", key.id,
                            before={"name": key.name, "prefix": key.prefix})
    # After the commit: a clear before it could be refilled from the old state.
    platform.auth.clear()
    return key


def account_of(platform: Platform, actor: Actor) -> tuple[User, Account]:
    with platform.db.read() as session:
        return (scoped.user(session, actor.account_id, actor.user_id),
                scoped.account(session, actor.account_id))
