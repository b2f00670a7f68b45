"""The ``walbackup`` command group (typer): ``fetch`` here, the others from ``cluster``/``tools``.

The fast path of ``fetch`` (PostgreSQL's restore_command) does not come
through here: ``tasks.cli.main`` parses it without typer.
"""

from __future__ import annotations

from typing import Annotated

import typer

from tasks.cli.archive import delete, retain
from tasks.cli.cluster import forget, status, trigger
from tasks.cli.tools import demo, simulate
from tasks.cli.verify import verify

HELP = """walbackup: PostgreSQL WAL from a cluster of nodes to object storage, on Celery.

Workers run as `celery -A tasks worker`; these commands trigger backups, show
their status, read WAL back (`fetch`, PostgreSQL's restore_command), remove
archived WAL (`retain`, `delete`) and run a local demo."""

cli = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP, rich_markup_mode=None)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"walbackup {version('walbackup')}")
        raise typer.Exit()


@cli.callback()
def _options(
    show_version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = None,
) -> None:
    """Options before the command (``--version``)."""


@cli.command()
def fetch(
    ttid: Annotated[str, typer.Argument(help="TENANT_ID/TIMELINE_ID")],
    segment: Annotated[str, typer.Argument(help="WAL segment name (%f)")],
    dest: Annotated[str, typer.Argument(help="destination path (%p), or - for stdout")],
    offset: Annotated[int, typer.Option(help="start at this byte offset")] = 0,
) -> None:
    """Restore one WAL file from the archive, as PostgreSQL's restore_command.

    Example: restore_command = 'walbackup fetch 9f1c…e2/4b7a…01 %f %p'

    Exit codes: 0 restored; 1 not in the archive; above 125 (PostgreSQL then
    stops recovery instead of ending it early): 200 bad input or setting,
    201 storage unreachable or missing, 202 checksum mismatch (DEST not
    created), 203 other."""
    from tasks.restore.command import fetch as fetch_file

    raise typer.Exit(fetch_file(ttid, segment, dest, offset))


for command in (trigger, status, forget, verify, retain, delete, simulate, demo):
    cli.command()(command)
