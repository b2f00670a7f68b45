"""``walbackup verify``: check that each timeline's archive is whole and as its ledger says."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import redis
import typer

from tasks.archive.ledger_store import LedgerStore
from tasks.archive.verify import (
    Verdict,
    not_in_redis,
    nothing_archived,
    unknown_message,
    verify_timeline,
)
from tasks.cli.failing import EXIT_INPUT, EXIT_UNAVAILABLE, fail, one_line_errors
from tasks.config import load_settings
from tasks.core.ids import TenantTimelineId
from tasks.errors import (
    AccessDenied,
    BucketMissing,
    InvalidInput,
    Permanent,
    StorageUnavailable,
    WalBackupError,
)
from tasks.state.redis import RedisState
from tasks.storage import open_storage
from tasks.storage.base import RemoteStorage

EXIT_PROBLEMS = 1


def verify(
    ttids: Annotated[
        list[str] | None,
        typer.Argument(help="timelines (default: all registered)", metavar="TTID"),
    ] = None,
    deep: Annotated[
        bool, typer.Option("--deep", help="also read every segment back and check its SHA-256")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Check that each timeline's archive is whole: every segment from the
    timeline's start to backup_lsn archived, with the size and checksum the
    ledger recorded when it was uploaded; nothing extra.

    Exit codes: 0 every archive checked is whole; 1 problems (each segment
    named); 2 bad input or setting, or a TTID neither Redis nor the archive
    knows (a mistyped id); 3 Redis or storage unreachable or unusable (a
    missing bucket, refused credentials). With TTIDs given and Redis down,
    the ledger's pages alone give the range.

    Example: walbackup verify --deep 9f1c…e2/4b7a…01
    """
    try:
        settings = load_settings()
        ids = [TenantTimelineId.parse(t) for t in ttids or []]
        storage = open_storage(
            settings.effective_remote_storage,
            s3_endpoint_url=settings.s3_endpoint_url,
            create=False,
        )
    except InvalidInput as exc:
        fail(EXIT_INPUT, str(exc))
    except StorageUnavailable as exc:
        fail(EXIT_UNAVAILABLE, str(exc))
    where = f"Redis at {settings.redis_where}"
    redis_state = RedisState.from_url(settings.redis_url, **settings.redis_options)
    state: RedisState | None = redis_state
    if not ids:
        with one_line_errors(where):
            ids = [TenantTimelineId.parse(t) for t in redis_state.registered()]
    else:
        try:
            redis_state.ping()
        except redis.RedisError as exc:
            print(
                f"walbackup: {where} unreachable ({exc}): checking the ledger alone",
                file=sys.stderr,
            )
            state = None
        with one_line_errors(where):
            refuse_unknown(storage, not_in_redis(state, ids), redis_down=state is None)
    store = LedgerStore(storage)
    verdicts: list[Verdict] = []
    for ttid in ids:
        try:
            verdicts.append(verify_timeline(store, state, ttid, settings.wal_seg_size, deep=deep))
        except (BucketMissing, AccessDenied) as exc:  # the storage's trouble, not the timeline's
            fail(EXIT_UNAVAILABLE, str(exc))
        except Permanent as exc:
            verdicts.append(Verdict(str(ttid), error=str(exc)))
        except (WalBackupError, redis.RedisError, OSError) as exc:
            fail(EXIT_UNAVAILABLE, f"{ttid}: {exc}")
    failed = [v for v in verdicts if not v.ok]
    if as_json:
        print(json.dumps([v.to_json() for v in verdicts], indent=2))
    else:
        _print(verdicts, deep)
    raise typer.Exit(EXIT_PROBLEMS if failed else 0)


def refuse_unknown(storage: RemoteStorage, maybe: list[TenantTimelineId], redis_down: bool) -> None:
    """A named timeline nobody knows is a mistyped id, not an empty archive
    that passes: fail naming those of ``maybe`` (the ones Redis does not
    know, ``not_in_redis``) that have nothing in the archive either; with
    Redis down, only Redis could tell."""
    with one_line_errors(f"the remote storage {storage.url}"):
        unknown = nothing_archived(storage, maybe)
    if unknown and redis_down:
        fail(
            EXIT_UNAVAILABLE,
            f"the archive holds nothing of timeline {', '.join(map(str, unknown))}, and "
            "without Redis it cannot be told whether it is registered",
        )
    if unknown:
        fail(EXIT_INPUT, unknown_message(unknown))


def _print(verdicts: list[Verdict], deep: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    if not verdicts:
        print("no timelines registered")
        return
    table = Table("timeline", "from", "to (backup_lsn)", "segments", "deep", "ahead", "problems")
    lines: list[str] = []
    for v in verdicts:
        if v.error:
            table.add_row(v.ttid, "-", "-", "-", "-", "-", "not verified")
            lines.append(f"{v.ttid}: cannot verify: {v.error}")
            continue
        table.add_row(
            v.ttid,
            str(v.start_lsn or "-"),
            str(v.backup_lsn or "-"),
            str(v.segments),
            str(v.deep_checked) if deep else "-",
            str(v.ahead),
            str(len(v.problems)) if v.problems else "ok",
        )
        if v.note:
            lines.append(f"{v.ttid}: {v.note}")
        lines += [f"{v.ttid} {p.line()}" for p in v.problems]
    Console(width=None if sys.stdout.isatty() else 100_000).print(table)
    for line in lines:
        print(line)
