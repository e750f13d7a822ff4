"""Roles and what each may do (SPEC §1)."""

from __future__ import annotations

from enum import StrEnum

from batchyard.errors import Forbidden, InvalidInput


class Role(StrEnum):
    SUPER_ADMIN = "super_admin"
    ADMIN = "admin"
    DEVELOPER = "developer"
    VIEWER = "viewer"


class Permission(StrEnum):
    READ = "read"
    WRITE = "write"          # create/edit jobs, code, settings, variables, schedule, invoke, cancel
    PUBLISH = "publish"      # publish, unpublish, delete


_GRANTS = {
    Role.SUPER_ADMIN: {Permission.READ, Permission.WRITE, Permission.PUBLISH},
    Role.ADMIN: {Permission.READ, Permission.WRITE, Permission.PUBLISH},
    Role.DEVELOPER: {Permission.READ, Permission.WRITE},
    Role.VIEWER: {Permission.READ},
}


def check(role: Role, permission: Permission) -> None:
    if permission not in _GRANTS[role]:
        verb = {Permission.WRITE: "change anything",
                Permission.PUBLISH: "publish, unpublish or delete jobs",
                Permission.READ: "read"}[permission]
        raise Forbidden(f"The {role.value} role cannot {verb}.")


def parse_role(value: object) -> Role:
    try:
        return Role(str(value))
    except ValueError:
        raise InvalidInput(f"role must be one of {', '.join(r.value for r in Role)}",
                           field="role") from None
