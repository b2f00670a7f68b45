"""The ``walbackup`` commands (typer): fetch, trigger, status, simulate, demo.

Imports are local to each command, so each pays only for what it uses; the
fast path of ``fetch`` does not come through here (``tasks.cli.main``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer

HELP = """walbackup: PostgreSQL WAL from a cluster of nodes to object storage, on Celery.

Workers run as `celery -A tasks worker`; these commands trigger backups, show
their status, read WAL back (`fetch`, PostgreSQL's restore_command) and run a
local demo."""

cli = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP)


def _bad_input(message: str) -> NoReturn:
    """Print ``walbackup: MESSAGE`` on stderr and exit as ``fetch`` does on bad input (2)."""
    from tasks.restore.fetch import EXIT_INPUT, fail

    raise typer.Exit(fail(EXIT_INPUT, message))


@cli.command()
def fetch(
    ttid: Annotated[str, typer.Argument(help="TENANT_ID/TIMELINE_ID")],
    segment: Annotated[str, typer.Argument(help="WAL segment name (%f)")],
    dest: Annotated[str, typer.Argument(help="destination path (%p), or - for stdout")],
    offset: Annotated[int, typer.Option(help="start at this byte offset")] = 0,
) -> None:
    """Restore one segment from remote storage (restore_command = 'walbackup fetch TTID %f %p').

    Exit codes: 0 written in full, 1 not found, 2 bad input, 3 storage unavailable, 4 other,
    5 checksum mismatch (the stored object is corrupt; no DEST file is created)."""
    from tasks.restore.fetch import run_fetch

    raise typer.Exit(run_fetch(ttid, segment, dest, offset))


@cli.command()
def trigger(
    ttids: Annotated[list[str], typer.Argument(help="TENANT_ID/TIMELINE_ID ...")],
) -> None:
    """Register timelines as needing backup and run their election now."""
    from tasks.core.ids import TenantTimelineId
    from tasks.errors import InvalidInput

    try:
        ids = [str(TenantTimelineId.parse(t)) for t in ttids]
    except InvalidInput as exc:
        _bad_input(str(exc))
    from tasks.app import app
    from tasks.names import SHARED_QUEUE, TRIGGER

    app.send_task(TRIGGER, args=[ids], queue=SHARED_QUEUE)
    print(f"triggered {len(ids)} timeline(s)")


@cli.command()
def status(
    ttids: Annotated[
        list[str] | None, typer.Argument(help="timelines (default: all registered)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Per timeline: each peer's commit_lsn, backup_lsn, archived_lsn (partials included),
    offloader and reason, lag."""
    from tasks.backup.status import status_json, timeline_status
    from tasks.config import load_settings
    from tasks.core.ids import TenantTimelineId
    from tasks.errors import InvalidInput
    from tasks.state.redis import RedisState

    try:
        settings = load_settings()
        ids = [str(TenantTimelineId.parse(t)) for t in ttids or []]
    except InvalidInput as exc:
        _bad_input(str(exc))
    rows = timeline_status(RedisState.from_url(settings.redis_url), ids, settings.heartbeat_timeout)
    if as_json:
        print(json.dumps(status_json(rows), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "timeline",
        "backup_lsn",
        "archived_lsn",
        "commit_lsn",
        "lag bytes",
        "offloader",
        "peers (node: commit)",
    )
    for row in rows:
        peers = ", ".join(
            f"{p.node_id}: {p.commit_lsn}{'' if p.alive else ' (dead)'}"
            + (f" (damaged at {p.damaged_lsn})" if p.damaged_lsn is not None else "")
            for p in row.peers
        )
        table.add_row(
            row.timeline,
            _text(row.backup_lsn),
            _text(row.archived_lsn),
            _text(row.commit_lsn),
            _text(row.lag_bytes),
            str(row.offloader or "-"),
            peers,
        )
    Console().print(table)


def _text(value: object | None) -> str:
    """A table cell: ``-`` for unknown."""
    return "-" if value is None else str(value)


@cli.command()
def simulate(
    workdirs: Annotated[list[Path], typer.Option("--workdir", help="a node WORKDIR (repeat)")],
    ttids: Annotated[
        list[str] | None, typer.Option("--ttid", help="timeline to write (repeat)")
    ] = None,
    timelines: Annotated[int, typer.Option(help="random timelines to make when no --ttid")] = 2,
    segments: Annotated[int, typer.Option(help="segments per timeline")] = 10,
    seg_size: Annotated[int, typer.Option(help="wal_seg_size in bytes")] = 16 << 20,
    rate: Annotated[
        float | None, typer.Option(help="segments/s per timeline (default: flat out)")
    ] = None,
    start_segno: Annotated[int, typer.Option(help="first segment number")] = 1,
) -> None:
    """Write the same WAL segments into several node WORKDIRs (.partial, then renamed)."""
    import secrets

    from tasks.core.ids import TenantTimelineId
    from tasks.dev.simulate import simulate as run
    from tasks.errors import InvalidInput

    try:
        ids = [TenantTimelineId.parse(t) for t in ttids or []] or [
            TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16)) for _ in range(timelines)
        ]
        for t in ids:
            print(t)
        done = run(list(workdirs), ids, segments, seg_size, rate=rate, start_segno=start_segno)
    except InvalidInput as exc:
        _bad_input(str(exc))
    print(f"wrote {done} segment files")


@cli.command()
def demo(
    duration: Annotated[
        float | None, typer.Option(help="stop after this many seconds of WAL (default: Ctrl-C)")
    ] = None,
    timelines: Annotated[int, typer.Option(help="timelines to write")] = 3,
    rate: Annotated[float, typer.Option(help="segments/s per timeline")] = 1.0,
    data_dir: Annotated[
        Path | None, typer.Option(help="where nodes, remote storage and logs go (default: new)")
    ] = None,
    seg_size: Annotated[int, typer.Option(help="wal_seg_size in bytes")] = 1 << 20,
) -> None:
    """Run Redis, 3 nodes, beat and Flower locally on simulated WAL; check the backup at the end."""
    from tasks.dev.demo.run import run_demo
    from tasks.errors import InvalidInput

    try:
        code = run_demo(
            duration=duration,
            timelines=timelines,
            rate=rate,
            data_dir=data_dir,
            seg_size=seg_size,
        )
    except InvalidInput as exc:
        _bad_input(str(exc))
    raise typer.Exit(code)
