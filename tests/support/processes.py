"""Host processes as the tests see them."""

from __future__ import annotations

from pathlib import Path


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (state Z) or a missing /proc entry counts as dead."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
