"""Roles and what each may do."""

from __future__ import annotations

import pytest

from batchyard.domain.roles import Permission, Role, check, parse_role
from batchyard.errors import Forbidden, InvalidInput

R, W, P = Permission.READ, Permission.WRITE, Permission.PUBLISH
MATRIX = {
    Role.SUPER_ADMIN: {R: True, W: True, P: True},
    Role.ADMIN: {R: True, W: True, P: True},
    Role.DEVELOPER: {R: True, W: True, P: False},
    Role.VIEWER: {R: True, W: False, P: False},
}


@pytest.mark.parametrize(("role", "permission", "allowed"), [
    (role, permission, allowed)
    for role, grants in MATRIX.items() for permission, allowed in grants.items()])
def test_check(role: Role, permission: Permission, allowed: bool) -> None:
    if allowed:
        check(role, permission)
    else:
        with pytest.raises(Forbidden) as caught:
            check(role, permission)
        assert role.value in caught.value.message
        assert caught.value.status == 403


def test_developer_is_told_what_it_cannot_do() -> None:
    with pytest.raises(Forbidden, match="publish, unpublish or delete"):
        check(Role.DEVELOPER, Permission.PUBLISH)


@pytest.mark.parametrize("role", list(Role))
def test_parse_role(role: Role) -> None:
    assert parse_role(role.value) is role


@pytest.mark.parametrize("value", ["owner", "ADMIN", "", None])
def test_parse_unknown_role(value: object) -> None:
    with pytest.raises(InvalidInput, match="role must be one of") as caught:
        parse_role(value)
    assert caught.value.extra["field"] == "role"
