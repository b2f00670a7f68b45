"""``walbackup simulate`` refuses a bad segment size before it prints a
timeline id as if it wrote it, and writes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.servers import env_without_walbackup


def test_a_bad_seg_size_is_refused_before_anything_is_printed(tmp_path: Path) -> None:
    workdir = tmp_path / "node1"
    run = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "simulate", "--workdir", str(workdir),
         "--seg-size", "1000"],
        env=env_without_walbackup(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stdout == "" and "1000" in run.stderr
    assert not workdir.exists()
