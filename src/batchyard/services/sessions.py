"""People in the console: invites, passwords, sign-in with a failure limit, sessions.

A session is a server-side row keyed by the SHA-256 of the cookie's secret; it carries
its own CSRF token and ends after 12 idle hours or at sign-out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from batchyard.domain.roles import Role
from batchyard.errors import InvalidInput, LimitExceeded, NotAuthenticated, NotFound
from batchyard.services import audit
from batchyard.services.context import Actor, Platform
from batchyard.services.passwords import dummy_hash, hash_password, verify_password
from batchyard.store import scoped
from batchyard.store.models import Account, Invite, SignInFailure, User, WebSession

IDLE_LIMIT = timedelta(hours=12)
INVITE_LIFETIME = timedelta(hours=72)
FAILURE_WINDOW = timedelta(seconds=60)
MAX_FAILURES = 10
# last_seen_at is written at most this often, so reading pages does not write every time.
_SEEN_PRECISION = timedelta(seconds=60)
MIN_PASSWORD = 8


class TooManySignIns(LimitExceeded):
    """Too many failed sign-ins in the last minute; wait a minute and try again."""

    code = "too_many_sign_ins"


@dataclass(frozen=True)
class NewSession:
    secret: str
    csrf_token: str


@dataclass(frozen=True)
class Identity:
    """Who a console request comes from: a user of an account, or the operator."""

    actor: Actor | None
    operator: bool
    csrf_token: str
    name: str


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def validate_password(password: object, field: str = "password") -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise InvalidInput(f"The password must be at least {MIN_PASSWORD} characters.",
                           field=field)
    if len(password) > 1000:
        raise InvalidInput("The password may be at most 1,000 characters.", field=field)
    return password


def create_invite(platform: Platform, account_id: str, user_id: str) -> str:
    """A one-time token for the invite link; only its hash is kept."""
    token = secrets.token_urlsafe(32)
    now = platform.clock.now()
    with platform.db.write() as session:
        user = scoped.user(session, account_id, user_id)
        session.add(Invite(token_hash=_digest(token), user_id=user.id, account_id=account_id,
                           created_at=now, expires_at=now + INVITE_LIFETIME))
        audit.record(session, account_id=account_id, actor="operator", at=now,
                     action="user.invite", target=user.id, after={"email": user.email})
    return token


def invite_email(platform: Platform, token: str) -> str:
    """The e-mail address an unused, unexpired invite is for (404 otherwise)."""
    now = platform.clock.now()
    with platform.db.read() as session:
        row = session.execute(select(Invite, User.email).join(User, User.id == Invite.user_id)
                              .where(Invite.token_hash == _digest(token))).one_or_none()
    if row is None or row[0].used_at is not None or row[0].expires_at <= now:
        raise NotFound("This invite link is unknown, used or expired; ask for a new one.")
    return str(row[1])


def accept_invite(platform: Platform, token: str, password: object,
                  client: str) -> NewSession:
    """Set the invited person's password (the link then stops working) and sign them in."""
    password = validate_password(password)
    now = platform.clock.now()
    with platform.db.write() as session:
        invite = session.get(Invite, _digest(token), with_for_update=True)
        if invite is None or invite.used_at is not None or invite.expires_at <= now:
            raise NotFound("This invite link is unknown, used or expired; ask for a new one.")
        invite.used_at = now
        user = session.get_one(User, invite.user_id)
        user.password_hash = hash_password(password)
        audit.record(session, account_id=user.account_id, actor=user.email, at=now,
                     action="user.password_set", target=user.id)
        return _open(session, user, now, client)


def change_password(platform: Platform, actor: Actor, current: object, new: object) -> None:
    new_password = validate_password(new, "new_password")
    now = platform.clock.now()
    with platform.db.write() as session:
        user = scoped.user(session, actor.account_id, actor.user_id)
        if user.password_hash is not None and not _verify(user.password_hash, current):
            raise InvalidInput("The current password is not right.", field="current_password")
        user.password_hash = hash_password(new_password)
        # Every other session of this person ends: a changed password locks out a thief.
        session.execute(delete(WebSession).where(WebSession.user_id == user.id))
        audit.record_by(session, actor, now, "user.password_change", user.id)


def _verify(password_hash: str, password: object) -> bool:
    if not isinstance(password, str):
        return False
    return verify_password(password_hash, password)


def _failures(session: Session, key: str, now: datetime) -> tuple[int, datetime | None]:
    count, latest = session.execute(
        select(func.count(), func.max(SignInFailure.at)).where(
            SignInFailure.key == key, SignInFailure.at > now - FAILURE_WINDOW)).one()
    return int(count), latest


def sign_in(platform: Platform, email: object, password: object, client: str) -> NewSession:
    """A session for a right e-mail and password; at most MAX_FAILURES wrong tries a minute
    per e-mail and per client address, then a wait of a minute."""
    address = email.strip().lower() if isinstance(email, str) else ""
    keys = [f"email:{address}"[:300], f"client:{client}"[:300]]
    now = platform.clock.now()
    with platform.db.write() as session:
        for key in keys:
            count, latest = _failures(session, key, now)
            if count >= MAX_FAILURES and latest is not None:
                _refuse(latest, now)
        user = session.scalars(select(User).where(User.email == address)).first()
        good = _verify(user.password_hash if user and user.password_hash else dummy_hash(),
                       password) and user is not None and user.password_hash is not None
        if good and user is not None:
            session.execute(delete(SignInFailure).where(SignInFailure.key == keys[0]))
            return _open(session, user, now, client)
        # Failures older than the window count for nothing: the table holds one minute.
        session.execute(delete(SignInFailure).where(SignInFailure.at <= now - FAILURE_WINDOW))
        for key in keys:
            session.add(SignInFailure(key=key, at=now))
        session.flush()
        counts = [_failures(session, key, now)[0] for key in keys]
    if max(counts) >= MAX_FAILURES:
        raise TooManySignIns(
            f"That was the {MAX_FAILURES}th failed sign-in within a minute; wait "
            f"{int(FAILURE_WINDOW.total_seconds())} seconds before trying again.",
            retry_after=int(FAILURE_WINDOW.total_seconds()))
    raise NotAuthenticated("The e-mail address or the password is not right.")


def _refuse(latest: datetime, now: datetime) -> None:
    wait = max(1, int((latest + FAILURE_WINDOW - now).total_seconds() + 0.999))
    raise TooManySignIns(f"Too many failed sign-ins within a minute; wait {wait} seconds "
                         "before trying again.", retry_after=wait)


def _open(session: Session, user: User, now: datetime, client: str) -> NewSession:
    secret = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    # Sessions idle past the limit are gone for good: delete them while signing in.
    session.execute(delete(WebSession).where(WebSession.last_seen_at < now - IDLE_LIMIT))
    session.add(WebSession(
        id_hash=_digest(secret), user_id=user.id, account_id=user.account_id,
        operator=False, csrf_token=csrf, created_at=now, last_seen_at=now,
        client=client[:100]))
    return NewSession(secret, csrf)


def operator_sign_in(platform: Platform, token: object, expected: str,
                     client: str) -> NewSession:
    if not isinstance(token, str) or not hmac.compare_digest(token.encode(),
                                                              expected.encode()):
        raise NotAuthenticated("That is not the operator token.")
    now = platform.clock.now()
    secret = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    with platform.db.write() as session:
        session.add(WebSession(id_hash=_digest(secret), user_id=None, account_id=None,
                               operator=True, csrf_token=csrf, created_at=now,
                               last_seen_at=now, client=client[:100]))
    return NewSession(secret, csrf)


def identify(platform: Platform, secret: str) -> Identity:
    """The session's person; NotAuthenticated when unknown, signed out or idle too long."""
    now = platform.clock.now()
    digest = _digest(secret)
    with platform.db.read() as session:
        row = session.get(WebSession, digest)
        if row is None:
            raise NotAuthenticated("Please sign in.")
        found = None
        if not row.operator:
            found = session.execute(select(User, Account).join(
                Account, Account.id == User.account_id).where(
                User.id == row.user_id)).one_or_none()
        idle = now - row.last_seen_at
    if idle > IDLE_LIMIT or (not row.operator and found is None):
        sign_out(platform, secret)
        raise NotAuthenticated("Your session ended after 12 idle hours; please sign in again.")
    if idle > _SEEN_PRECISION:
        with platform.db.write() as session:
            session.get_one(WebSession, digest).last_seen_at = now
    if row.operator:
        return Identity(None, True, row.csrf_token, "operator")
    assert found is not None
    user, account = found
    actor = Actor(user_id=user.id, email=user.email, role=Role(user.role),
                  account_id=account.id, batch_jobs_enabled=account.batch_jobs_enabled,
                  super_admin_only=account.super_admin_only)
    return Identity(actor, False, row.csrf_token, user.email)


def sign_out(platform: Platform, secret: str) -> None:
    with platform.db.write() as session:
        session.execute(delete(WebSession).where(WebSession.id_hash == _digest(secret)))
