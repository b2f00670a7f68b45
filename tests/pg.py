"""A real PostgreSQL for tests: initdb, a server on a Unix socket, pg_receivewal, psql.

PostgreSQL refuses to run as root, so when the tests run as root every
PostgreSQL program runs as the ``postgres`` user (``setpriv``) in a directory
that user owns (``PgHome``). ``pg_bin()`` is ``None`` when the binaries are
absent: tests then skip, saying so.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin")


def pg_bin() -> Path | None:
    """Where initdb, postgres and pg_receivewal are, if anywhere."""
    for d in PG_BIN_DIRS:
        if (Path(d) / "pg_receivewal").exists():
            return Path(d)
    found = shutil.which("pg_receivewal")
    return Path(found).parent if found else None


def as_postgres() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]


class PgHome:
    """A directory the PostgreSQL user owns, with its programs run as that user."""

    def __init__(self) -> None:
        bin_dir = pg_bin()
        assert bin_dir is not None
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="walbackup-pg-"))
        self.root.chmod(0o755)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.procs: list[subprocess.Popen[bytes]] = []

    def mkdir(self, name: str) -> Path:
        path = self.root / name
        self.run(["mkdir", "-p", str(path)], program=False)
        return path

    def command(self, args: list[str], *, program: bool = True) -> list[str]:
        exe = str(self.bin / args[0]) if program else args[0]
        return [*as_postgres(), exe, *args[1:]]

    def run(
        self, args: list[str], *, program: bool = True, env: dict[str, str] | None = None
    ) -> str:
        done = subprocess.run(
            self.command(args, program=program),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=self.root,
            env=env,
        )
        if done.returncode != 0:
            raise AssertionError(f"{args[0]} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        out = (self.root / log).open("ab")
        proc = subprocess.Popen(
            self.command(args), stdout=out, stderr=subprocess.STDOUT, cwd=self.root
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def close(self) -> None:
        self.stop_all()
        shutil.rmtree(self.root, ignore_errors=True)


class Postgres:
    """One server, listening only on a Unix socket in its home."""

    def __init__(self, home: PgHome, name: str, *, wal_seg_mb: int = 1) -> None:
        self.home = home
        self.data = home.root / name
        self.socket_dir = home.mkdir(f"{name}-sock")
        self.wal_seg_mb = wal_seg_mb
        self.proc: subprocess.Popen[bytes] | None = None

    def initdb(self) -> None:
        self.home.run(
            ["initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
             f"--wal-segsize={self.wal_seg_mb}", "--no-sync"]
        )  # fmt: skip
        self.configure(
            "listen_addresses = ''\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
            "wal_level = replica\nmax_wal_senders = 8\nfsync = off\n"
            # No replication slots: keep WAL for a pg_receivewal that lags.
            "wal_keep_size = '512MB'\n"
        )

    def configure(self, text: str) -> None:
        conf = self.data / "postgresql.conf"
        self.home.run(["sh", "-c", f"cat >> {conf} <<'EOF'\n{text}EOF"], program=False)

    def start(self) -> None:
        self.proc = self.home.spawn(["postgres", "-D", str(self.data)], f"{self.data.name}.log")
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(AssertionError):
                self.sql("SELECT 1")
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.home.root / f"{self.data.name}.log").read_text(errors="replace")
                raise AssertionError(f"postgres did not start:\n{log[-3000:]}")
            time.sleep(0.2)

    def sql(self, query: str) -> str:
        return self.home.run(
            ["psql", "-h", str(self.socket_dir), "-U", "postgres", "-d", "postgres",
             "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", query]
        ).strip()  # fmt: skip

    def receivewal(self, dest: Path) -> subprocess.Popen[bytes]:
        """``pg_receivewal`` into ``dest`` (which it must be able to write)."""
        return self.home.spawn(
            ["pg_receivewal", "-h", str(self.socket_dir), "-U", "postgres", "-D", str(dest),
             "--no-loop", "--synchronous", "-n"],
            f"receivewal-{dest.parent.parent.parent.name}-{dest.name}.log",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self.home.run(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"])
        if self.proc is not None:
            self.proc.wait(timeout=30)


@contextlib.contextmanager
def pg_home() -> Iterator[PgHome]:
    home = PgHome()
    try:
        yield home
    finally:
        home.close()
