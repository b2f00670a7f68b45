"""`walbackup demo` end to end, as a user (or CI, without a terminal) runs it."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tasks.core.lsn import Lsn
from tasks.core.segments import SEGMENT_NAME_RE
from tasks.dev.embedded import free_port
from tests.servers import env_without_walbackup

pytestmark = pytest.mark.integration

WALBACKUP = Path(sys.executable).parent / "walbackup"


def _demo_processes(data_dir: Path, redis_port: int) -> dict[int, bytes]:
    """pid -> command line of every process the demo started: the celery ones
    carry WALBACKUP_DATA_DIR in their environment; redis-server rewrites its
    own, so it is known by its port."""
    marker = f"WALBACKUP_DATA_DIR={data_dir}".encode()
    redis_title = f"127.0.0.1:{redis_port}".encode()
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ or (b"redis-server" in cmdline and redis_title in cmdline):
            found[int(proc.name)] = cmdline
    return found


def _alive(pid: int, cmdline: bytes) -> bool:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes() == cmdline
    except OSError:
        return False


class Demo:
    """``walbackup demo ARGS`` running, its output collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [str(WALBACKUP), "demo", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        stdout = self.proc.stdout
        assert stdout is not None
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(stdout.readline, "")))
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, prefix: str, timeout: float = 90) -> str:
        """The first output line starting with ``prefix``."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines if line.startswith(prefix)]
            if found:
                return found[0]
            assert self.proc.poll() is None, self.output
            assert time.monotonic() < deadline, f"no {prefix!r} line\n{self.output}"
            time.sleep(0.2)

    def finish(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(60)
        self.reader.join(10)


def test_demo_runs_checks_the_backup_and_leaves_nothing_behind(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    # no WALBACKUP_REDIS_URL: a private Redis
    demo = Demo(["--duration", "15", "--data-dir", str(data_dir)], env_without_walbackup())
    children: dict[int, bytes] = {}
    try:
        demo.wait_for("timeline:")
        match = re.search(r"redis: redis://127\.0\.0\.1:(\d+)/0 +\(private\)", demo.output)
        assert match, demo.output
        children = _demo_processes(data_dir, int(match.group(1)))
        assert demo.proc.wait(timeout=120) == 0, demo.output
    finally:
        demo.finish()
    output = demo.output

    # Redis, three nodes, beat and Flower were running, and none survived.
    assert len(children) == 6, children
    assert not [pid for pid, cmd in children.items() if _alive(pid, cmd)], output
    assert not _demo_processes(data_dir, int(match.group(1)))

    assert re.search(r"^flower: http://127\.0\.0\.1:\d+$", output, re.MULTILINE), output
    progress = re.findall(r"(\d+)/(\d+) segments backed up", output)
    assert progress, output
    done, written = map(int, progress[-1])
    assert done == written >= 10, output  # 3 timelines at 1 segment/s for 15 s
    assert "caught up" in output
    assert re.search(r"verdict: OK - all \d+ complete segments of 3 timelines", output), output
    assert (data_dir / "logs" / "node1.log").exists()
    # The demo runs with WAL removal on: the nodes dropped archived segments.
    assert "on nodes" in output
    for node in ("node1", "node2", "node3"):
        held = [p for p in (data_dir / node).rglob("*") if SEGMENT_NAME_RE.fullmatch(p.name)]
        assert len(held) < written, (node, len(held), written)
    # Piped, nothing is wrapped or cut: whole paths and LSNs.
    assert f"data dir: {data_dir.resolve()}  (node1-3/, remote/, redis/, logs/)\n" in output
    assert not re.search(r"\b[0-9A-F]+/[0-9A-F]*…", output), output


def test_an_unreachable_redis_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    url = f"redis://:s3cretpw@127.0.0.1:{free_port()}/0"
    env = env_without_walbackup() | {"WALBACKUP_REDIS_URL": url}
    demo = Demo(["--duration", "2", "--data-dir", str(data_dir)], env)
    try:
        assert demo.proc.wait(timeout=60) != 0
    finally:
        demo.finish()

    shown = url.replace(":s3cretpw@", "***@")
    last = demo.lines[-1]
    assert last.startswith(f"walbackup demo: cannot reach Redis at {shown}: "), demo.output
    assert "s3cretpw" not in demo.output and "Traceback" not in demo.output, demo.output
    assert not _demo_processes(data_dir, 0)


def test_the_cli_reaches_the_demo_and_retain_is_no_loss(tmp_path: Path) -> None:
    """The demo's export line points the CLI at its cluster; segments `walbackup
    retain` deletes during the demo do not fail its check."""
    data_dir = tmp_path / "demo"
    demo = Demo(
        ["--duration", "10", "--rate", "2", "--timelines", "1", "--data-dir", str(data_dir)],
        env_without_walbackup(),
    )
    try:
        ttid = demo.wait_for("timeline:").split()[1]
        words = shlex.split(demo.wait_for("  export "))
        env = env_without_walbackup() | dict(w.split("=", 1) for w in words[1:])
        deadline = time.monotonic() + 60
        while True:  # retain keeps the segment of backup_lsn and one below it
            status = json.loads(
                subprocess.run(
                    [str(WALBACKUP), "status", "--json", ttid],
                    env=env,
                    capture_output=True,
                    check=True,
                    text=True,
                ).stdout
            )
            backup_lsn = status["timelines"][0]["backup_lsn"]
            if backup_lsn is not None and Lsn.parse(backup_lsn) >= Lsn(0x500000):
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        assert status["storage"]["url"] == (data_dir.resolve() / "remote").as_uri()
        retain = [str(WALBACKUP), "retain", ttid, "--before", "0/300000", "--yes"]
        subprocess.run(retain, env=env, capture_output=True, check=True)
        assert demo.proc.wait(timeout=120) == 0, demo.output
    finally:
        demo.finish()

    assert "2 segments below the archive's start (deleted by walbackup retain) not checked" in (
        demo.output
    )
    assert "verdict: OK" in demo.output
    fetched = tmp_path / "seg"
    fetch = [str(WALBACKUP), "fetch", ttid, "000000010000000000000004", str(fetched)]
    subprocess.run(fetch, env=env, check=True)
    assert fetched.stat().st_size == 1 << 20
