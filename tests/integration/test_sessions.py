"""Console sign-in on a real database: invites, passwords, sessions, the failure limit."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from batchyard.domain.clock import FixedClock
from batchyard.errors import InvalidInput, NotAuthenticated, NotFound
from batchyard.services import accounts, sessions
from batchyard.services.context import Platform
from batchyard.store.models import Account

PASSWORD = "correct horse battery"


def invited(platform: Platform, account: Account, role: str = "admin") -> tuple[str, str]:
    user, _key = accounts.create_user(platform, account.id, {
        "email": f"{role}-{id(object())}@example.com", "role": role})
    return user.email, sessions.create_invite(platform, account.id, user.id)


def test_an_invite_sets_a_password_once_and_signs_in(
        platform: Platform, make_account: Callable[..., Account]) -> None:
    email, token = invited(platform, make_account())
    assert sessions.invite_email(platform, token) == email
    with pytest.raises(InvalidInput, match="at least 8"):
        sessions.accept_invite(platform, token, "short", "1.2.3.4")
    new = sessions.accept_invite(platform, token, PASSWORD, "1.2.3.4")
    who = sessions.identify(platform, new.secret)
    assert who.actor is not None and who.actor.email == email and who.csrf_token == new.csrf_token
    with pytest.raises(NotFound):
        sessions.accept_invite(platform, token, "another password", "1.2.3.4")
    assert sessions.identify(platform, sessions.sign_in(
        platform, email.upper(), PASSWORD, "1.2.3.4").secret).actor is not None


def test_an_invite_expires_after_72_hours(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Account]) -> None:
    _email, token = invited(platform, make_account())
    clock.advance(hours=72)
    with pytest.raises(NotFound, match="expired"):
        sessions.accept_invite(platform, token, PASSWORD, "1.2.3.4")


def test_a_session_ends_after_12_idle_hours_and_at_sign_out(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Account]) -> None:
    _email, token = invited(platform, make_account())
    new = sessions.accept_invite(platform, token, PASSWORD, "1.2.3.4")
    clock.advance(hours=11)
    sessions.identify(platform, new.secret)  # activity moves the idle window
    clock.advance(hours=11)
    sessions.identify(platform, new.secret)
    clock.advance(hours=12, seconds=1)
    with pytest.raises(NotAuthenticated, match="12 idle hours"):
        sessions.identify(platform, new.secret)
    other = sessions.sign_in(platform, _email, PASSWORD, "1.2.3.4")
    sessions.sign_out(platform, other.secret)
    with pytest.raises(NotAuthenticated):
        sessions.identify(platform, other.secret)


def test_changing_the_password_ends_every_session_and_needs_the_current_one(
        platform: Platform, make_account: Callable[..., Account]) -> None:
    email, token = invited(platform, make_account())
    first = sessions.accept_invite(platform, token, PASSWORD, "1.2.3.4")
    actor = sessions.identify(platform, first.secret).actor
    assert actor is not None
    with pytest.raises(InvalidInput, match="current password"):
        sessions.change_password(platform, actor, "wrong", "a new password")
    sessions.change_password(platform, actor, PASSWORD, "a new password")
    with pytest.raises(NotAuthenticated):
        sessions.identify(platform, first.secret)
    with pytest.raises(NotAuthenticated):
        sessions.sign_in(platform, email, PASSWORD, "1.2.3.4")
    sessions.sign_in(platform, email, "a new password", "1.2.3.4")


def test_failures_are_limited_per_email_and_per_client_and_wait_a_minute(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Account]) -> None:
    email, token = invited(platform, make_account())
    sessions.accept_invite(platform, token, PASSWORD, "9.9.9.9")
    for _ in range(9):
        with pytest.raises(NotAuthenticated):
            sessions.sign_in(platform, email, "wrong", f"10.0.0.{_}")
    with pytest.raises(sessions.TooManySignIns) as tenth:
        sessions.sign_in(platform, email, "wrong", "10.0.0.99")
    assert tenth.value.extra["retry_after"] == 60
    clock.advance(seconds=30)
    with pytest.raises(sessions.TooManySignIns, match="wait 30 seconds"):
        sessions.sign_in(platform, email, PASSWORD, "10.0.0.100")
    clock.advance(seconds=31)
    sessions.sign_in(platform, email, PASSWORD, "10.0.0.100")
    # Per client: ten wrong e-mails from one address lock that address, not the person.
    for number in range(9):
        with pytest.raises(NotAuthenticated):
            sessions.sign_in(platform, f"nobody{number}@example.com", "x", "6.6.6.6")
    with pytest.raises(sessions.TooManySignIns):
        sessions.sign_in(platform, "nobody@example.com", "x", "6.6.6.6")
    with pytest.raises(sessions.TooManySignIns):
        sessions.sign_in(platform, email, PASSWORD, "6.6.6.6")
    sessions.sign_in(platform, email, PASSWORD, "7.7.7.7")


def test_the_operator_signs_in_with_the_operator_token_only(platform: Platform) -> None:
    with pytest.raises(NotAuthenticated):
        sessions.operator_sign_in(platform, "guess", "the-token", "1.2.3.4")
    who = sessions.identify(platform, sessions.operator_sign_in(
        platform, "the-token", "the-token", "1.2.3.4").secret)
    assert who.operator and who.actor is None
