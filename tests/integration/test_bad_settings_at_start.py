"""A Celery process (worker, beat) with a bad setting stops at start with one
line naming the variable (README "Configuration"), not Celery's "Unable to
load celery application" and a traceback; exit 2, as the CLI's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("command", "name", "value"),
    [
        ("worker", "WALBACKUP_PARALLEL_JOBS", "x"),
        ("worker", "WALBACKUP_S3_ENDPOINT_URL", "notaurl"),
        ("beat", "WALBACKUP_REMOTE_STORAGE", "s3://"),
        ("worker", "WALBACKUP_REDIS_URL", "redis://u:secret@127.0.0.1:notaport/0"),
    ],
)
def test_a_bad_setting_stops_a_celery_process_with_one_line(
    command: str, name: str, value: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALBACKUP_")}
    env[name] = value
    run = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", command],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"walbackup: invalid configuration: {name}:")
    assert "secret" not in run.stderr + run.stdout
