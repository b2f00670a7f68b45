"""The fast path of ``walbackup fetch``: a spool hit loads only the standard
library and stdlib-only modules of ours, and the copies it keeps of the core's
formats (``tasks.restore.formats``) stay equal to the originals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.core import ids, segments
from tasks.errors import InvalidInput
from tasks.restore import formats
from tasks.restore.spool import SPOOLED_RE, remote_id, spooled_name
from tasks.storage import base
from tests.servers import env_without_walbackup

ROOT = Path(__file__).resolve().parents[2]
TTID = "a" * 32 + "/" + "b" * 32
SEGMENT = "000000010000000000000002"

HEAVY = {"celery", "kombu", "redis", "boto3", "botocore", "typer", "rich", "pydantic"}
"""Third-party libraries the hit path must not load."""
OURS_ALLOWED = {"tasks", "tasks.fsutil", "tasks.cli", "tasks.cli.main", "tasks.restore"}

# Serve one spooled segment through the console entry's fetch parser, then
# report what the process loaded beyond what the interpreter started with.
_HIT = """
import sys
before = set(sys.modules)
import tasks.cli.main
import tasks.restore.spool
code = tasks.cli.main.fetch_main(sys.argv[1:])
loaded = sorted(set(sys.modules) - before)
everything = sorted(sys.modules)
import json
print(json.dumps({"code": code, "loaded": loaded, "everything": everything}))
"""


def test_a_spool_hit_loads_only_the_standard_library_and_the_fast_modules(
    tmp_path: Path,
) -> None:
    data_dir, remote = tmp_path / "data", (tmp_path / "remote").as_uri()
    spool = data_dir / "spool" / remote_id(remote, None) / TTID
    spool.mkdir(parents=True)
    body = os.urandom(4096)
    (spool / spooled_name(SEGMENT, len(body), zlib.crc32(body))).write_bytes(body)
    dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
    dest.parent.mkdir()
    env = env_without_walbackup() | {
        "WALBACKUP_DATA_DIR": str(data_dir),
        "WALBACKUP_REMOTE_STORAGE": remote,
    }

    run = subprocess.run(
        [sys.executable, "-c", _HIT, TTID, SEGMENT, str(dest)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["code"] == 0, run.stderr
    assert dest.read_bytes() == body  # served from the spool: nothing else has it
    assert not list(spool.glob(f"{SEGMENT}.*"))  # moved, not copied
    everything = set(report["everything"])
    assert not {m for m in everything if m.split(".")[0] in HEAVY}
    assert "tasks.config" not in everything
    ours = {m for m in report["loaded"] if m.split(".")[0] == "tasks"}
    extra = {m for m in ours if m not in OURS_ALLOWED and not m.startswith("tasks.restore.")}
    assert extra == set()
    assert "tasks.restore.prefetch" not in ours  # the prefetcher is the miss path's
    third_party = {
        m
        for m in report["loaded"]
        if m.split(".")[0] != "tasks" and m.split(".")[0] not in sys.stdlib_module_names
    }
    assert third_party == set()


# -- the deliberate copies ------------------------------------------------------

NAME_SAMPLES = [
    "000000010000000000000001",
    "FFFFFFFFFFFFFFFFFFFFFFFF",
    "0000000100000000000000FF",
    "0000000100000000000000ff",
    "00000001000000000000001",
    "0000000100000000000000011",
    "000000010000000000000001.partial",
    "000000010000000000000001.PARTIAL",
    "000000010000000000000001\n",
    " 000000010000000000000001",
    "00000001000000000000000G",
    "０00000010000000000000001",
    "../../etc/passwd",
    "",
]
# Near misses are the interesting texts: mostly hex, about 24 long, with or
# without a suffix.
NAME_TEXT = st.builds(
    str.__add__,
    st.text(alphabet="0123456789ABCDEFaG", min_size=23, max_size=25),
    st.sampled_from(["", ".partial", ".PARTIAL", ".partial.partial", "\n", ".", "/"]),
)


def _core_accepts_name(name: str) -> bool:
    return segments.SEGMENT_NAME_RE.fullmatch(name) is not None


def _core_accepts_ttid(text: str) -> bool:
    try:
        ids.TenantTimelineId.parse(text)
    except InvalidInput:
        return False
    return True


def test_the_copied_constants_equal_the_core_ones() -> None:
    assert formats.SEGMENT_RE.pattern == segments.SEGMENT_NAME_RE.pattern
    assert formats.TTID_RE.pattern == f"{ids._HEX32.pattern}/{ids._HEX32.pattern}"
    assert formats.PARTIAL_SUFFIX == segments.PARTIAL_SUFFIX
    assert formats.CHUNK_BYTES == base.CHUNK_BYTES


def test_segment_names_are_judged_as_the_core_judges_them() -> None:
    for name in [*NAME_SAMPLES, segments.xlog_file_name(5, 1 << 24, tli=7)]:
        core = _core_accepts_name(name)
        assert (formats.SEGMENT_RE.fullmatch(name) is not None) == core, name
        partial = name.endswith(segments.PARTIAL_SUFFIX) and _core_accepts_name(
            name.removesuffix(segments.PARTIAL_SUFFIX)
        )
        assert (formats.FETCHABLE_RE.fullmatch(name) is not None) == (core or partial), name


@given(NAME_TEXT)
def test_any_text_is_a_segment_name_for_both_or_neither(name: str) -> None:
    assert (formats.SEGMENT_RE.fullmatch(name) is not None) == _core_accepts_name(name)
    fetchable = formats.FETCHABLE_RE.fullmatch(name) is not None
    stem = name.removesuffix(segments.PARTIAL_SUFFIX)
    assert fetchable == _core_accepts_name(stem)


@given(NAME_TEXT, st.integers(0, 2**32 - 1))
def test_spool_file_names_hold_exactly_a_segment_name(name: str, crc: int) -> None:
    match = SPOOLED_RE.fullmatch(spooled_name(name, 1 << 24, crc))
    assert (match is not None) == _core_accepts_name(name)
    if match is not None:
        assert (match.group(1), int(match.group(2)), int(match.group(3), 16)) == (
            name,
            1 << 24,
            crc,
        )


HEX32 = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)


@st.composite
def ttid_texts(draw: st.DrawFn) -> str:
    """A valid ``TENANT/TIMELINE``, or one with a character replaced, added or removed."""
    text = draw(HEX32) + "/" + draw(HEX32)
    edit = draw(st.sampled_from(["none", "replace", "insert", "delete"]))
    if edit == "none":
        return text
    i = draw(st.integers(0, len(text) if edit == "insert" else len(text) - 1))
    char = draw(st.sampled_from("0af/AFg\n.\\"))
    if edit == "replace":
        return text[:i] + char + text[i + 1 :]
    if edit == "insert":
        return text[:i] + char + text[i:]
    return text[:i] + text[i + 1 :]


@given(ttid_texts())
def test_timeline_ids_are_judged_as_the_core_judges_them(text: str) -> None:
    assert (formats.TTID_RE.fullmatch(text) is not None) == _core_accepts_ttid(text)


def test_timeline_id_samples() -> None:
    good = "0123456789abcdef" * 2 + "/" + "fedcba9876543210" * 2
    for text in [good, good.upper(), good + "\n", good[:-1], "../x", TTID, TTID + "/x", ""]:
        assert (formats.TTID_RE.fullmatch(text) is not None) == _core_accepts_ttid(text), text


def test_fetch_help_documents_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    from tasks.cli.main import fetch_main
    from tasks.restore import fetch

    assert fetch_main(["--help"]) == 0
    text = capsys.readouterr().out
    for code in (
        fetch.EXIT_NOT_FOUND,
        fetch.EXIT_INPUT,
        fetch.EXIT_STORAGE,
        fetch.EXIT_CHECKSUM,
        fetch.EXIT_OTHER,
    ):
        assert f" {code} " in text.replace("\n", " "), code
    # PostgreSQL aborts recovery only on a status above 125.
    assert min(fetch.EXIT_INPUT, fetch.EXIT_STORAGE, fetch.EXIT_CHECKSUM, fetch.EXIT_OTHER) > 125


def test_a_spool_is_named_after_its_remote_and_endpoint() -> None:
    assert remote_id("s3://wal/p", None) == "s3%3A%2F%2Fwal%2Fp"  # no trailing "%20"
    assert remote_id("s3://wal/p", "http://h:9000") == "s3%3A%2F%2Fwal%2Fp%20http%3A%2F%2Fh%3A9000"
    assert remote_id("s3://" + "w" * 300, None).startswith("sha256-")
