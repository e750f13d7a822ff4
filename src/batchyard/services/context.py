"""What every use case needs: who acts, the database, the clock, the secret box."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from batchyard.domain.clock import Clock
from batchyard.domain.roles import Permission, Role, check
from batchyard.errors import FeatureDisabled, Forbidden
from batchyard.services.authcache import AuthCache
from batchyard.services.revisions import RevisionCache
from batchyard.services.secrets import SecretBox
from batchyard.store.db import Database


@dataclass(frozen=True)
class Actor:
    """A user of an account acting through an API key or a session."""

    user_id: str
    email: str
    role: Role
    account_id: str
    batch_jobs_enabled: bool = True
    super_admin_only: bool = False

    def require(self, permission: Permission) -> None:
        """Roles first, then the account switches that close batch jobs to this user."""
        if not self.batch_jobs_enabled:
            raise FeatureDisabled()
        if self.super_admin_only and self.role is not Role.SUPER_ADMIN:
            raise Forbidden("This account restricts batch jobs to super admins.")
        check(self.role, permission)


@dataclass
class Platform:
    db: Database
    clock: Clock
    secrets: SecretBox
    revisions: RevisionCache = field(default_factory=RevisionCache)
    auth: AuthCache = field(default_factory=AuthCache)
    # Called after an execution is queued, so an in-process worker wakes at once.
    on_queued: Callable[[], None] = field(default=lambda: None)
    # Called after a cancel is requested, so an in-process worker can kill at once.
    on_cancel: Callable[[str], None] = field(default=lambda _execution_id: None)
    # Called after a publish/unpublish/delete, so a sleeping scheduler looks again.
    on_schedule_change: Callable[[], None] = field(default=lambda: None)
    # Called after a transaction wrote outbox rows, so the delivery loop sends them now.
    on_delivery: Callable[[], None] = field(default=lambda: None)
