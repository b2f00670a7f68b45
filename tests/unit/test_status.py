"""The typed status (``tasks.backup.status``) and the JSON ``walbackup status --json`` prints."""

from __future__ import annotations

import json

from tasks.backup.status import TimelineStatus, status_json
from tasks.core.election import PeerInfo
from tasks.core.lsn import Lsn
from tasks.state.records import PeerRecord, TimelineRecord

SEG = 1 << 24
TTID = "a" * 32 + "/" + "c" * 32
NOW = 1_700_000_000.0


def _record(**changes: object) -> TimelineRecord:
    fields: dict[str, object] = {
        "backup_lsn": Lsn(4 * SEG),
        "timeline_start_lsn": Lsn(SEG),
        "wal_seg_size": SEG,
        "offloader": 2,
        "reason": "elected 2 of [1, 2]",
        "holder": 2,
        "last_error": "",
    }
    fields.update(changes)
    return TimelineRecord(**fields)  # type: ignore[arg-type]


def _peer(node_id: int, commit: int, ts: float, damaged: Lsn | None = None) -> PeerRecord:
    info = PeerInfo(node_id, Lsn(commit), Lsn(SEG), Lsn(4 * SEG), ts, damaged)
    return PeerRecord(info, SEG, Lsn(SEG))


def test_the_json_is_what_status_always_printed() -> None:
    peers = [_peer(2, 9 * SEG, NOW - 0.25), _peer(1, 7 * SEG, NOW - 12.3456, Lsn(5 * SEG))]
    row = TimelineStatus.from_records(TTID, _record(system_id=7301234567890123456), peers, NOW, 5.0)
    expected = {
        "timelines": [
            {
                "timeline": TTID,
                "registered": True,
                "backup_lsn": "0/4000000",
                "commit_lsn": "0/9000000",
                "archived_lsn": "0/4000000",
                "verified_lsn": None,
                "archive_problems": None,
                "lag_bytes": 5 * SEG,
                "offloader": 2,
                "reason": "elected 2 of [1, 2]",
                "lease_holder": 2,
                "timeline_start_lsn": "0/1000000",
                "archive_start_lsn": None,
                "wal_seg_size": SEG,
                "system_id": "7301234567890123456",
                "last_error": None,
                "peers": [
                    {
                        "node_id": 1,
                        "commit_lsn": "0/7000000",
                        "local_start_lsn": "0/1000000",
                        "backup_lsn": "0/4000000",
                        "last_seen_s": 12.346,
                        "alive": False,
                        "damaged_lsn": "0/5000000",
                    },
                    {
                        "node_id": 2,
                        "commit_lsn": "0/9000000",
                        "local_start_lsn": "0/1000000",
                        "backup_lsn": "0/4000000",
                        "last_seen_s": 0.25,
                        "alive": True,
                        "damaged_lsn": None,
                    },
                ],
            }
        ]
    }
    # Same keys, same order, same values: compare the printed text.
    assert json.dumps(status_json([row]), indent=2) == json.dumps(expected, indent=2)
    assert row.commit_lsn == Lsn(9 * SEG) and row.peers[1].damaged_lsn is None


def test_an_unknown_timeline_is_all_nulls() -> None:
    record = _record(
        backup_lsn=None,
        timeline_start_lsn=None,
        wal_seg_size=None,
        offloader=None,
        reason="",
        holder=None,
    )
    row = TimelineStatus.from_records(TTID, record, [], NOW, 5.0)
    assert row.as_dict() == {
        "timeline": TTID,
        "registered": False,
        "backup_lsn": None,
        "commit_lsn": None,
        "archived_lsn": None,
        "verified_lsn": None,
        "archive_problems": None,
        "lag_bytes": None,
        "offloader": None,
        "reason": "",
        "lease_holder": None,
        "timeline_start_lsn": None,
        "archive_start_lsn": None,
        "wal_seg_size": None,
        "system_id": None,
        "last_error": None,
        "peers": [],
    }


def test_a_zero_timeline_start_and_an_error_are_shown_as_before() -> None:
    row = TimelineStatus.from_records(
        TTID, _record(timeline_start_lsn=Lsn(0), last_error="S3 down"), [], NOW, 5.0
    )
    assert row.as_dict()["timeline_start_lsn"] is None
    assert row.as_dict()["last_error"] == "S3 down"
    assert row.registered and row.lag_bytes is None  # no peer: no commit_lsn


def test_lag_is_floored_at_zero_when_backup_is_ahead_of_every_live_peer() -> None:
    row = TimelineStatus.from_records(
        TTID, _record(backup_lsn=Lsn(8 * SEG)), [_peer(1, 6 * SEG, NOW)], NOW, 5.0
    )
    assert row.lag_bytes == 0


def test_archived_lsn_is_the_newest_partial_upload_or_backup_lsn() -> None:
    peers = [_peer(2, 9 * SEG, NOW)]
    tail = Lsn(4 * SEG + 0x1234)
    row = TimelineStatus.from_records(TTID, _record(archived_lsn=tail), peers, NOW, 5.0)
    assert (row.backup_lsn, row.archived_lsn) == (Lsn(4 * SEG), tail)
    assert row.as_dict()["archived_lsn"] == "0/4001234"
    # A partial below backup_lsn (its segment since archived complete) shows backup_lsn.
    old = _record(archived_lsn=Lsn(3 * SEG + 5))
    assert TimelineStatus.from_records(TTID, old, peers, NOW, 5.0).archived_lsn == Lsn(4 * SEG)


def test_a_retained_archive_shows_where_it_starts_and_the_storage_heads_the_json() -> None:
    row = TimelineStatus.from_records(TTID, _record(archive_start_lsn=Lsn(3 * SEG)), [], NOW, 5.0)
    assert row.as_dict()["archive_start_lsn"] == "0/3000000"
    storage = {"url": "s3://bucket/wal", "sse": "aws:kms", "sse_kms_key_id": "alias/wal"}
    document = status_json([row], storage)
    assert list(document) == ["storage", "timelines"]
    assert document["storage"] == storage
