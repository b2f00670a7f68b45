"""tasks.fsutil: a file appears complete or not at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tasks.fsutil import atomic_write, temp_path, write_atomically


def test_write_atomically_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "state"
    dest.write_bytes(b"old")
    write_atomically(dest, b"new")
    assert dest.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["state"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "seg"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(dest) as out:
        out.write(b"half")
        raise RuntimeError("disk trouble")
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["seg"]


def test_an_explicit_temp_is_used_and_must_not_exist(tmp_path: Path) -> None:
    dest, tmp = tmp_path / "seg", tmp_path / ".tmp.seg"
    with atomic_write(dest, tmp=tmp, durable=False) as out:
        assert tmp.exists() and not dest.exists()
        out.write(b"x")
    assert dest.read_bytes() == b"x" and not tmp.exists()
    tmp.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError), atomic_write(dest, tmp=tmp):
        pass
    assert dest.read_bytes() == b"x"
    assert tmp.read_bytes() == b"someone else's"


def test_temp_paths_are_hidden_unique_and_beside_dest(tmp_path: Path) -> None:
    a, b = temp_path(tmp_path / "f"), temp_path(tmp_path / "f")
    assert a != b and a.parent == b.parent == tmp_path
    assert a.name.startswith(".f.") and a.name.endswith(".tmp")


def test_a_missing_directory_is_reported_with_the_destination_not_the_temp(
    tmp_path: Path,
) -> None:
    """The temp name is ours; the user only knows the name they gave."""
    dest = tmp_path / "missing" / "x"
    with pytest.raises(FileNotFoundError) as raised, atomic_write(dest):
        pass
    assert raised.value.filename == str(dest)
    assert str(raised.value) == f"[Errno 2] No such file or directory: '{dest}'"


def test_a_temp_file_left_by_a_killed_process_with_our_pid_is_no_obstacle(
    tmp_path: Path,
) -> None:
    """A fetch killed mid-write left ``.DEST.PID.0.tmp`` in pg_wal; the next
    fetch PostgreSQL ran under the same PID met that name and exited 203,
    which stops recovery. The child below is both: it leaves its own first
    name, then writes."""
    dest = tmp_path / "000000010000000000000001"
    script = (
        "import os, sys; from pathlib import Path; from tasks.fsutil import atomic_write\n"
        "dest = Path(sys.argv[1])\n"
        "dest.with_name(f'.{dest.name}.{os.getpid()}.0.tmp').write_bytes(b'half')\n"
        "with atomic_write(dest) as out: out.write(b'whole')\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(dest)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert dest.read_bytes() == b"whole"
