"""The demo account that ``make run`` prepares, so a newcomer has something to invoke."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from batchyard.domain.roles import Role
from batchyard.errors import NotAuthenticated
from batchyard.services import accounts, jobs, sessions
from batchyard.services.context import Actor, Platform
from batchyard.store.models import Account, Job

DEMO_ACCOUNT = "demo"
DEMO_EMAIL = "demo@example.com"
DEMO_JOB = "hello-world"
DEMO_MAIN = '''\
"""A demo batch job: greets, logs through the SDK and writes a report."""
import os

from helper import LS


def main(event):
    name = event["body"].get("name", "world")
    print(f"Hello, {name}! (source: {event['source']}, attempt {event['retry_attempt']})")
    LS.log.info("greeted", {"name": name})
    with open(os.path.join(os.environ["OUTPUT_DIR"], "report.txt"), "w") as report:
        report.write(f"Hello, {name}!\\n")
'''


@dataclass(frozen=True)
class Demo:
    account_id: str
    job_id: str
    api_key: str
    # A fresh one-time invite of the demo user at every start: the console's way in.
    invite_token: str


def demo_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("main.py", DEMO_MAIN)
    return buffer.getvalue()


def ensure_demo(platform: Platform, data_dir: Path) -> Demo:
    """Create the demo account, admin user and published job once; reuse them afterwards.

    The demo key is kept in the data folder (demo only) so that every start can print it.
    """
    key_file = data_dir / "demo-api-key"
    if key_file.exists():
        try:
            actor = accounts.authenticate(platform, key_file.read_text().strip())
            with platform.db.read() as session:
                job = session.scalars(select(Job).where(
                    Job.account_id == actor.account_id, Job.name == DEMO_JOB,
                    Job.deleted_at.is_(None))).first()
            if job is not None:
                return Demo(actor.account_id, job.id, key_file.read_text().strip(),
                            sessions.create_invite(platform, actor.account_id, actor.user_id))
        except NotAuthenticated:
            pass
    with platform.db.read() as session:
        existing = session.scalars(select(Account).where(Account.name == DEMO_ACCOUNT)).first()
    account = existing or accounts.create_account(
        platform, {"name": DEMO_ACCOUNT, "batch_jobs_enabled": True})
    user, key = accounts.create_user(platform, account.id, {
        "email": f"demo+{account.id[-6:]}@example.com" if existing else DEMO_EMAIL,
        "role": "admin"})
    actor = Actor(user_id=user.id, email=user.email, role=Role.ADMIN, account_id=account.id)
    job = jobs.create_job(platform, actor, {"name": DEMO_JOB,
                                            "description": "Greets and writes report.txt"})
    jobs.upload_code(platform, actor, job.id, demo_zip())
    jobs.set_schedule(platform, actor, job.id, {"type": "none"})
    jobs.update_settings(platform, actor, job.id, {"timeout_minutes": 5})
    jobs.publish(platform, actor, job.id)
    key_file.write_text(key)
    key_file.chmod(0o600)
    return Demo(account.id, job.id, key,
                sessions.create_invite(platform, account.id, user.id))
