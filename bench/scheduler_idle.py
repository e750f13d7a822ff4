"""An idle scheduler: 100,000 published schedules, nothing due for an hour.

Target (issue 3): < 1% of a core over 60 s. The loop asks for the earliest
`next_fire_at` (an index lookup) and sleeps until then, at most 30 s at a time;
it never scans the schedules while idle.
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import update

sys.path.insert(0, str(Path(__file__).parent))
from scheduler_fire import seed

from batchyard.domain.clock import SystemClock
from batchyard.runtime.loops.scheduler_loop import SchedulerLoop
from batchyard.services.context import Platform
from batchyard.services.secrets import SecretBox
from batchyard.store.db import Database
from batchyard.store.models import Job

SCHEDULES = 100_000
SECONDS = 60.0


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        db = Database(f"sqlite:///{folder}/idle.sqlite3")
        db.migrate()
        seed(db, SCHEDULES)
        with db.write() as session:
            session.execute(update(Job).values(
                next_fire_at=datetime.now(UTC) + timedelta(hours=1)))
        platform = Platform(db=db, clock=SystemClock(),
                            secrets=SecretBox(Fernet.generate_key()))
        loop = SchedulerLoop(platform)
        loop.start()
        time.sleep(1)  # its first look
        cpu_before, wall_before = time.process_time(), time.monotonic()
        time.sleep(SECONDS)
        cpu = time.process_time() - cpu_before
        wall = time.monotonic() - wall_before
        loop.stop()
    print(f"idle scheduler, {SCHEDULES} schedules, nothing due for an hour: "
          f"{cpu * 1000:.0f} ms CPU in {wall:.0f} s = {100 * cpu / wall:.3f}% of a core "
          "(target < 1%)")


if __name__ == "__main__":
    main()
