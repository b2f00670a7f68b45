"""The commands for trying walbackup without a cluster: ``simulate`` and ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tasks.cli.failing import EXIT_INPUT, fail


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
    """Write simulated WAL: the same segments into several node WORKDIRs (.partial, then renamed).

    Example: walbackup simulate --workdir var/node1 --workdir var/node2 --segments 20
    """
    import secrets

    from tasks.core.ids import TenantTimelineId
    from tasks.core.segments import validate_seg_size
    from tasks.dev.simulate import simulate as run
    from tasks.errors import InvalidInput

    try:
        validate_seg_size(seg_size)  # before any id is printed as if written
        ids = [TenantTimelineId.parse(t) for t in ttids or []] or [
            TenantTimelineId(secrets.token_hex(16), secrets.token_hex(16)) for _ in range(timelines)
        ]
        for t in ids:
            print(t)
        done = run(list(workdirs), ids, segments, seg_size, rate=rate, start_segno=start_segno)
    except InvalidInput as exc:
        fail(EXIT_INPUT, str(exc))
    print(f"wrote {done} segment files")


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
    """Try walbackup: Redis, 3 nodes, beat and Flower on simulated WAL, checked at the end.

    Example: walbackup demo --duration 30
    """
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
        fail(EXIT_INPUT, str(exc))
    raise typer.Exit(code)
