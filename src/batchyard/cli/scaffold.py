"""``batchyard init NAME``: a new project folder, ready to run, test and deploy."""

from __future__ import annotations

import json
from pathlib import Path

MAIN_PY = '''\
"""{name}: a batchyard job. Run it here with `batchyard run`, ship it with
`batchyard deploy --publish`."""

import os

from helper import LS


def main(event):
    LS.log.info("Job started", {{"body": event.get("body")}})
    greeting = LS.settings.GREETING
    output = os.environ.get("OUTPUT_DIR", "output")
    os.makedirs(output, exist_ok=True)
    # Files written to the output folder become the execution's artifacts.
    with open(os.path.join(output, "report.txt"), "w") as report:
        report.write(f"{{greeting}}, {{event.get('body', {{}}).get('name', 'world')}}\\n")
    LS.log.info("Report written", {{"file": "report.txt"}})
'''

CONFIG = '''\
# The job as batchyard deploys it. Docs: `batchyard --help`.
[job]
name = "{name}"
description = ""

[settings]
timeout_minutes = 5
retries = 0
concurrency = "forbid"

# type = "none" (invoked over the API only), "daily", "weekly", "monthly" or "cron".
[schedule]
type = "none"
# type = "daily"
# times = ["06:00"]
# timezone = "UTC"

# Variables (LS.settings.NAME). A secret one is written { secret = true }: its value
# comes from the environment variable of the same name or from .secrets.toml (git-ignored).
[variables]
GREETING = "Hello"
# API_TOKEN = { secret = true }
'''

TEST_PY = '''\
"""Runs main() locally through the platform's own runtime: `python -m pytest`."""

import subprocess
import sys
from pathlib import Path


def test_main_runs_and_writes_its_report():
    project = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "batchyard.cli.main", "run"],
                          cwd=project, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (project / "output" / "report.txt").read_text().startswith("Hello")
'''

GITIGNORE = """.secrets.toml
.batchyard/
output/
deliverables/
__pycache__/
.venv/
"""

IGNORE = """# Left out of the package (besides .venv, __pycache__, .git and output/):
tests/
"""


def create(root: Path, name: str) -> list[str]:
    root.mkdir(parents=True)
    files = {
        "main.py": MAIN_PY.format(name=name),
        "requirements.txt": "# One package per line, e.g. requests==2.32.3\n",
        "batchyard.toml": CONFIG.replace("{name}", name),
        "event.json": json.dumps({"body": {"name": "batchyard"},
                                  "query_string_parameters": {}}, indent=2) + "\n",
        ".gitignore": GITIGNORE,
        ".batchyardignore": IGNORE,
        "tests/test_main.py": TEST_PY,
    }
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return sorted(files)
