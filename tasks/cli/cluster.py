"""The commands that act on the cluster through Redis: ``trigger``, ``status``, ``forget``."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from tasks.cli.failing import EXIT_INPUT, fail, one_line_errors
from tasks.config import Settings, load_settings
from tasks.core.ids import TenantTimelineId
from tasks.core.urls import redact
from tasks.errors import InvalidInput
from tasks.state.redis import RedisState

TtidsArg = Annotated[list[str], typer.Argument(help="TENANT_ID/TIMELINE_ID ...", metavar="TTID")]

# A CLI command should not sit for Celery's ~30 s publish retries (meant for
# workers riding out a Redis restart): a few quick tries, then one line.
_PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


def _setup(ttids: list[str] | None) -> tuple[Settings, list[str]]:
    try:
        return load_settings(), [str(TenantTimelineId.parse(t)) for t in ttids or []]
    except InvalidInput as exc:
        fail(EXIT_INPUT, str(exc))


def trigger(
    ttids: TtidsArg,
    create: Annotated[
        bool, typer.Option("--create", help="also register timelines no node holds yet")
    ] = False,
) -> None:
    """Back up timelines now: register them and run their election at once.

    A timeline no node has reported is refused unless --create is given (a
    mistyped id would otherwise stay registered).

    Example: walbackup trigger 9f1c…e2/4b7a…01
    """
    settings, ids = _setup(ttids)  # before tasks.app, which reads the settings at import
    from tasks.app import send
    from tasks.names import SHARED_QUEUE, TRIGGER

    with one_line_errors(f"Redis at {settings.redis_where}"):
        state = RedisState.from_url(settings.redis_url, **settings.redis_options)
        unknown = [t for t, known in zip(ids, state.known(ids), strict=True) if not known]
        state.close()
    if unknown and not create:
        fail(
            EXIT_INPUT,
            f"no node holds timeline {', '.join(unknown)}: check the id, "
            "or pass --create to register it anyway",
        )
    with one_line_errors(f"the broker at {redact(settings.effective_broker_url)}"):
        send(TRIGGER, [ids], SHARED_QUEUE, retry_policy=_PUBLISH_RETRY)
    print(f"triggered {len(ids)} timeline(s)")


def forget(
    ttids: TtidsArg,
    force: Annotated[
        bool, typer.Option("--force", help="even while a live node still holds it")
    ] = False,
) -> None:
    """Stop tracking timelines: remove their registration and coordination state.

    The archive and the nodes' WAL are not touched. A timeline a live node
    still holds is refused without --force (its node registers it again on its
    next heartbeat anyway).

    Example: walbackup forget 9f1c…e2/4b7a…01
    """
    from tasks.core.election import is_alive

    settings, ids = _setup(ttids)
    with one_line_errors(f"Redis at {settings.redis_where}"):
        state = RedisState.from_url(settings.redis_url, **settings.redis_options)
        now = state.clock.now()
        for ttid in ids:
            holders = [
                p.peer.node_id
                for p in state.peers(ttid)
                if is_alive(p.peer, now, settings.heartbeat_timeout)
            ]
            if holders and not force:
                fail(EXIT_INPUT, f"timeline {ttid} is held by live node(s) {holders}; see --force")
            state.forget(ttid)
            print(f"forgot {ttid}")
        state.close()


def status(
    ttids: Annotated[
        list[str] | None,
        typer.Argument(help="timelines (default: all registered)", metavar="TTID"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Show each timeline's backup: backup_lsn, archived_lsn (partials included),
    verified_lsn (the scrubber found the archive whole up to there), lag,
    offloader, errors, and every node's view; above them, the remote storage
    and its server-side encryption.

    Exit codes: 0 shown; 2 bad input or setting, or a TTID neither Redis nor
    the archive knows (a mistyped id); 3 Redis unreachable, or the storage,
    when a TTID Redis does not know is looked for in the archive.

    Example: walbackup status --json
    """
    from tasks.backup.status import status_json, timeline_status

    settings, ids = _setup(ttids)
    with one_line_errors(f"Redis at {settings.redis_where}"):
        state = RedisState.from_url(settings.redis_url, **settings.redis_options)
        rows = timeline_status(state, ids, settings.heartbeat_timeout)
        _refuse_unknown(settings, state, ids)
        state.close()
    storage = storage_settings(settings)
    if as_json:
        print(json.dumps(status_json(rows, storage), indent=2))
        return
    header = f"storage: {storage['url']}"
    if settings.effective_remote_storage.startswith("s3://"):
        header += f", server-side encryption: {storage['sse'] or 'the bucket default'}"
        if storage["sse_kms_key_id"]:
            header += f" (KMS key {storage['sse_kms_key_id']})"
    print(header)
    if not rows:
        print("no timelines registered")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "timeline",
        "backup_lsn",
        "archived_lsn",
        "verified_lsn",
        "commit_lsn",
        "lag bytes",
        "offloader",
        "peers (node: commit)",
        "last error / reason",
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
            _text(row.verified_lsn)
            + (f" ({row.archive_problems} problems)" if row.archive_problems else ""),
            _text(row.commit_lsn),
            _text(row.lag_bytes),
            str(row.offloader or "-"),
            peers,
            row.last_error or row.reason or "-",
        )
    # Off a terminal (a pipe, a log), rich would cut lines at 80 columns and
    # with them the ids: print the table at its natural width.
    Console(width=None if sys.stdout.isatty() else 100_000).print(table)


def _refuse_unknown(settings: Settings, state: RedisState, ids: list[str]) -> None:
    """Fail naming the timelines of ``ids`` that neither Redis nor the archive
    knows; the storage is opened only for those Redis does not know."""
    from tasks.archive.verify import not_in_redis
    from tasks.cli.verify import refuse_unknown

    maybe = not_in_redis(state, [TenantTimelineId.parse(t) for t in ids])
    if not maybe:
        return
    from tasks.storage import open_storage

    url = settings.effective_remote_storage
    with one_line_errors(f"the remote storage {redact(url)}"):
        storage = open_storage(url, s3_endpoint_url=settings.s3_endpoint_url, create=False)
    try:
        refuse_unknown(storage, maybe, redis_down=False)
    finally:
        storage.close()


def storage_settings(settings: Settings) -> dict[str, str | None]:
    """The remote storage as ``status`` shows it: its URL and the server-side
    encryption asked for (S3 only; the KMS key id is no secret)."""
    url = settings.effective_remote_storage
    s3 = url.startswith("s3://")
    return {
        "url": redact(url),
        "sse": settings.s3_sse if s3 else None,
        "sse_kms_key_id": settings.s3_sse_kms_key_id if s3 else None,
    }


def _text(value: object | None) -> str:
    """A table cell: ``-`` for unknown."""
    return "-" if value is None else str(value)
