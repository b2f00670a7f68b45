"""The commands that remove archived WAL: ``retain`` (below a point), ``delete`` (all of it).

Both print what they would delete and do it only with ``--yes``; the rules
and the order are ``tasks.core.retention``'s, the work
``tasks.backup.retention``'s.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from tasks.cli.failing import EXIT_INPUT, fail, one_line_errors
from tasks.config import Settings, load_settings
from tasks.core.ids import TenantTimelineId
from tasks.errors import InvalidInput
from tasks.state.redis import RedisState
from tasks.storage import open_storage
from tasks.storage.base import RemoteStorage

TtidArg = Annotated[str, typer.Argument(help="TENANT_ID/TIMELINE_ID", metavar="TTID")]
YesOpt = Annotated[bool, typer.Option("--yes", help="really delete (without it: refuse)")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="only print what would be deleted (exit 0)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _setup(ttid: str) -> tuple[Settings, TenantTimelineId]:
    try:
        return load_settings(), TenantTimelineId.parse(ttid)
    except InvalidInput as exc:
        fail(EXIT_INPUT, str(exc))


def _storage(settings: Settings) -> RemoteStorage:
    return open_storage(
        settings.effective_remote_storage,
        s3_endpoint_url=settings.s3_endpoint_url,
        create=False,
        sse=settings.s3_sse,
        sse_kms_key_id=settings.s3_sse_kms_key_id,
        upload_check=settings.s3_upload_check,
    )


def _confirmed(
    as_json: bool, document: dict[str, Any], lines: list[str], *, yes: bool, dry_run: bool
) -> bool:
    """Go on deleting? ``--dry-run``: print the plan and stop; no ``--yes``:
    print it and refuse (exit 2). Else deletion logs go to stderr."""
    if dry_run or not yes:
        _emit(as_json, document, lines)
        if dry_run:
            return False
        fail(EXIT_INPUT, "refusing to delete without --yes; nothing deleted")
    _log_to_stderr()
    return True


def _log_to_stderr() -> None:
    """The deletion's log line (``walbackup.retention``) goes to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("walbackup.retention")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _counts(plan: Mapping[str, Any]) -> str:
    text = f"{plan['objects']} objects, {plan['bytes']} bytes"
    if plan["segments"]:
        text += f": {plan['segments']} segments ({plan['first_segment']} to {plan['last_segment']})"
    if plan["partials"]:
        text += f", {plan['partials']} partial upload(s)"
    if plan["other"]:
        text += f", {plan['other']} other object(s)"
    return text


def _emit(as_json: bool, document: dict[str, Any], lines: list[str]) -> None:
    if as_json:
        print(json.dumps(document, indent=2))
    else:
        print("\n".join(lines))


def retain(
    ttid: TtidArg,
    before: Annotated[
        str, typer.Option("--before", help="X/X (an LSN) or a segment name", metavar="POINT")
    ],
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a timeline's archived segments wholly below POINT, and their partial uploads.

    --before X/X keeps the segment holding that LSN; --before SEGMENT keeps that
    segment. Never reaches the segment holding backup_lsn nor the
    WALBACKUP_RETAIN_KEEP_SEGMENTS (default 1) segments below it: a POINT above
    that is refused, nothing deleted. The new start of the archive is recorded
    first (the object TENANT/TIMELINE/_retained and Redis), then the segments
    are deleted lowest first; a rerun finishes an interrupted one.

    Example: walbackup retain 9f1c…e2/4b7a…01 --before 0/9000000 --yes

    Exit codes: 0 done (or --dry-run); 2 refused (no --yes, POINT too high,
    backup_lsn unknown) or bad input; 3 Redis or remote storage unusable.
    """
    from tasks.backup.retention import plan_retain
    from tasks.backup.retention import retain as run

    settings, parsed = _setup(ttid)
    with one_line_errors(f"Redis at {settings.redis_where}"):
        storage, state = (
            _storage(settings),
            RedisState.from_url(settings.redis_url, **settings.redis_options),
        )
        plan = plan_retain(
            storage,
            state,
            parsed,
            before,
            settings.retain_keep_segments,
            settings.wal_seg_size,
        )
        described = plan.describe()
        document: dict[str, Any] = {"storage": storage.url, "plan": described, "deleted": None}
        lines = [
            f"timeline {parsed} in {storage.url}: backup_lsn {plan.backup_lsn}; segments "
            f"from {described['kept_from']} on are kept",
            f"{'deleting' if yes and not dry_run else 'would delete'} {_counts(described)}; "
            f"the archive then starts at {plan.archive_start}",
        ]
        if not _confirmed(as_json, document, lines, yes=yes, dry_run=dry_run):
            return
        done = run(storage, state, plan)
        document["deleted"] = done.as_dict(plan.seg_size)
        lines.append(f"deleted {done.objects} objects ({done.bytes} bytes) of timeline {parsed}")
        _emit(as_json, document, lines)


def delete(
    ttid: TtidArg, yes: YesOpt = False, dry_run: DryRunOpt = False, as_json: JsonOpt = False
) -> None:
    """Delete a timeline's whole archive (every object under TENANT/TIMELINE/) and its Redis state.

    Refused while a live node holds the timeline: remove its directory from
    every node's WORKDIR (or stop those nodes) first, or they go on backing it
    up. Objects are deleted lowest segment first, metadata last, and the
    Redis state (as `walbackup forget`) only at the end: an interrupted run
    leaves an archive missing its start, never one that looks whole but ends
    early; run it again to finish.

    Example: walbackup delete 9f1c…e2/4b7a…01 --yes

    Exit codes: 0 done (or --dry-run, which shows the plan even while a live
    node holds it, naming the node); 2 refused (no --yes, a live node holds
    it, objects written meanwhile) or bad input; 3 Redis or remote storage
    unusable.
    """
    from tasks.backup.retention import delete_timeline, plan_delete, refuse_live

    settings, parsed = _setup(ttid)
    with one_line_errors(f"Redis at {settings.redis_where}"):
        storage, state = (
            _storage(settings),
            RedisState.from_url(settings.redis_url, **settings.redis_options),
        )
        plan = plan_delete(
            storage, state, parsed, settings.heartbeat_timeout, settings.wal_seg_size
        )
        if plan.live_nodes and not dry_run:
            raise refuse_live(parsed, plan.live_nodes)
        described = plan.describe()
        document: dict[str, Any] = {"storage": storage.url, "plan": described, "deleted": None}
        lines = [
            f"timeline {parsed} in {storage.url}: "
            f"{'deleting' if yes and not dry_run else 'would delete'} {_counts(described)}"
        ]
        if plan.live_nodes:
            lines.append(
                f"live node(s) {plan.live_nodes} hold it: delete is refused until its "
                "directory is removed from their WORKDIR (or they are stopped)"
            )
        if plan.dead_nodes:
            lines.append(
                f"node(s) {plan.dead_nodes} held it and stopped: remove its directory from "
                "them before they return, or they upload it again"
            )
        if not _confirmed(as_json, document, lines, yes=yes, dry_run=dry_run):
            return
        result = delete_timeline(storage, state, plan, settings.heartbeat_timeout)
        document["deleted"] = result.deleted.as_dict(plan.seg_size)
        lines.append(
            f"deleted {result.deleted.objects} objects ({result.deleted.bytes} bytes) of "
            f"timeline {parsed}" + ("; its Redis state is forgotten" if result.complete else "")
        )
        _emit(as_json, document, lines)
        if result.leftover:
            fail(
                EXIT_INPUT,
                f"{result.leftover} objects were written under the timeline meanwhile: is a "
                "node backing it up? Redis state kept; run delete again",
            )
        if result.live_nodes:
            fail(
                EXIT_INPUT,
                f"node(s) {result.live_nodes} hold the timeline now: Redis state kept; "
                "remove it from them and run delete again",
            )
