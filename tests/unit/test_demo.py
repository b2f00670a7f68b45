"""`walbackup demo`'s own logic: the final check, the CLI hints, failures, plain output."""

from __future__ import annotations

import io
import shlex
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tasks.archive.retained import marker_key
from tasks.config import load_settings
from tasks.core.ids import TenantTimelineId
from tasks.core.lsn import Lsn
from tasks.core.retention import marker_bytes
from tasks.core.segments import xlog_file_name
from tasks.dev.demo import run
from tasks.dev.demo.hints import cli_env, usage_lines
from tasks.dev.demo.processes import Cluster
from tasks.dev.demo.verify import report, verify
from tasks.dev.demo.writer import Writer
from tasks.dev.embedded import free_port
from tasks.dev.simulate import iter_segment_blocks
from tasks.storage import open_storage, segment_key

SEG = 1 << 20
TTID = TenantTimelineId("ab" * 16, "cd" * 16)
WIDE = 1000


def _written(segments: int) -> Writer:
    """A writer that has completed segments 1..``segments`` of ``TTID``."""
    return Writer([], [TTID], SEG, 1.0, last_segno={str(TTID): segments})


def _archive(root: Path, segnos: list[int], wrong: tuple[int, ...] = ()) -> str:
    url = root.as_uri()
    storage = open_storage(url)
    for segno in segnos:
        data = b"".join(iter_segment_blocks(TTID, segno, SEG))
        if segno in wrong:
            data = data[:-1] + b"\xff"
        storage.put_bytes(segment_key(TTID, xlog_file_name(segno, SEG)), data)
    return url


def test_verify_starts_where_retain_moved_the_archive_start(tmp_path: Path) -> None:
    url = _archive(tmp_path, [3, 4, 5])  # 1 and 2 deleted by `walbackup retain`
    open_storage(url).put_bytes(marker_key(TTID), marker_bytes(Lsn(3 * SEG), SEG))

    verdict = verify(url, [TTID], SEG, _written(5))

    assert (verdict.checked, verdict.missing, verdict.ok) == (3, [], True)
    assert verdict.retained == 2


def test_verify_names_failed_segments_in_full(tmp_path: Path) -> None:
    url = _archive(tmp_path, [1, 2], wrong=(2,))
    out = io.StringIO()

    verdict = verify(url, [TTID], SEG, _written(3))
    code = report(Console(file=out, width=WIDE), verdict, 1, tmp_path / "logs")

    assert code == 1
    names = [f"{TTID} {xlog_file_name(n, SEG)}" for n in (3, 2)]
    assert (verdict.missing, verdict.different) == ([names[0]], [names[1]])
    assert [line.strip() for line in out.getvalue().splitlines()[1:3]] == names


def test_cli_env_points_the_cli_at_the_demo_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = Cluster(tmp_path / "demo dir", threading.Event())
    cluster.redis_url = "redis://127.0.0.1:6390/0"
    words = shlex.split(cli_env(cluster, 4 * SEG, private_redis=True))

    assert words[0] == "export"
    env = dict(word.split("=", 1) for word in words[1:])
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.redis_url == cluster.redis_url
    assert settings.effective_remote_storage == cluster.remote_url
    assert settings.data_dir == cluster.root
    assert settings.wal_seg_size == 4 * SEG


def test_hints_leave_out_an_external_redis_url(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, threading.Event())
    cluster.redis_url = "redis://:s3cretpw@redis.example:6379/0"

    text = "\n".join(usage_lines(cluster, SEG, private_redis=False))

    assert "s3cretpw" not in text
    assert "WALBACKUP_REDIS_URL=" not in text
    assert f"WALBACKUP_REMOTE_STORAGE={cluster.remote_url}" in text


def _demo(tmp_path: Path, out: io.StringIO) -> int:
    return run.run_demo(
        duration=1,
        timelines=1,
        rate=1.0,
        data_dir=tmp_path / "demo",
        seg_size=SEG,
        console=Console(file=out, width=WIDE),
    )


def test_unreachable_redis_is_one_line_on_stderr_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://:s3cretpw@127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("WALBACKUP_REDIS_URL", url)
    out = io.StringIO()

    assert _demo(tmp_path, out) != 0

    shown = url.replace(":s3cretpw@", "***@")
    err = capsys.readouterr().err
    assert "s3cretpw" not in out.getvalue() + err
    assert f"redis: {shown}" in out.getvalue().splitlines()
    assert err.count("\n") == 1
    assert err.startswith(f"walbackup demo: cannot reach Redis at {shown}: ")


def test_any_failure_stops_every_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[subprocess.Popen[bytes]] = []

    def failing_run(view: run.View, *args: Any, **kwargs: Any) -> None:
        view.cluster.children.spawn("sleeper", ["sleep", "60"], {}, tmp_path)
        started.append(view.cluster.children.procs["sleeper"])
        raise RuntimeError("a bug")

    monkeypatch.setattr(run, "_run", failing_run)
    try:
        with pytest.raises(RuntimeError, match="a bug"):
            _demo(tmp_path, io.StringIO())
        assert started[0].poll() is not None
    finally:
        for proc in started:
            proc.kill()
            proc.wait()


def test_plain_output_is_not_wrapped(capsys: pytest.CaptureFixture[str]) -> None:
    console = run.demo_console()
    path = "/very/long/path" * 20

    console.print(f"data dir: {path}")

    assert capsys.readouterr().out == f"data dir: {path}\n"
