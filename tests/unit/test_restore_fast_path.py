"""The fast path of ``walbackup fetch``: a spool hit loads only a few standard
modules and ``tasks.restore.hit``, whose string checks judge names as the
core's patterns do; and what ``fetch`` accepts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.core import ids, segments
from tasks.errors import InvalidInput
from tasks.restore import exits, hit
from tasks.restore.fetch import FETCHABLE_RE
from tasks.restore.hit import remote_id, spooled_name
from tests.servers import env_without_walbackup

ROOT = Path(__file__).resolve().parents[2]
TTID = "a" * 32 + "/" + "b" * 32
SEGMENT = "000000010000000000000002"

HEAVY = {"celery", "kombu", "redis", "boto3", "botocore", "typer", "rich", "pydantic"}
"""Third-party libraries the hit path must not load."""
OURS_ALLOWED = {
    "tasks",
    "tasks.cli",
    "tasks.cli.main",
    "tasks.restore",
    "tasks.restore.command",
    "tasks.restore.exits",
    "tasks.restore.hit",
}
OS_MODULES = {"os", "os.path", "posixpath", "genericpath", "stat", "_stat", "_collections_abc"}
"""``os`` and what it loads (``site`` loads them all at start-up anyway)."""
STDLIB_ALLOWED = {"__future__", "errno", "fcntl", "mmap", "sys", "time", "zlib"} | OS_MODULES
"""What a hit may import beyond the interpreter's start-up (a module already
loaded then costs nothing): ``re``, ``typing`` or ``pathlib`` would cost it
more than checking and moving the segment does."""
SPOOLED_RE = re.compile(r"([0-9A-F]{24})\.([0-9]+)\.([0-9a-f]{8})")
"""What ``hit.parse_spooled`` accepts, as a pattern."""

# Serve one spooled segment through the console entry's fetch parser, then
# report what the process loaded beyond what the interpreter started with
# (``-S``: not ``site``, whose imports depend on how the package was installed).
_HIT = """
import sys
before = set(sys.modules)
import tasks.cli.main
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
    body = os.urandom(1 << 20)
    (spool / spooled_name(SEGMENT, len(body), zlib.crc32(body))).write_bytes(body)
    dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
    dest.parent.mkdir()
    env = env_without_walbackup() | {
        "WALBACKUP_DATA_DIR": str(data_dir),
        "WALBACKUP_REMOTE_STORAGE": remote,
        "WALBACKUP_WAL_SEG_SIZE": str(len(body)),
    }

    run = subprocess.run(
        [sys.executable, "-S", "-c", _HIT, TTID, SEGMENT, str(dest)],
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
    loaded = set(report["loaded"])
    ours = {m for m in loaded if m.split(".")[0] == "tasks"}
    assert ours <= OURS_ALLOWED, ours - OURS_ALLOWED
    assert loaded - ours <= STDLIB_ALLOWED, loaded - ours - STDLIB_ALLOWED


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


def test_segment_names_are_judged_as_the_core_judges_them() -> None:
    for name in [*NAME_SAMPLES, segments.xlog_file_name(5, 1 << 24, tli=7)]:
        core = _core_accepts_name(name)
        assert hit.is_segment_name(name) == core, name
        partial = name.endswith(segments.PARTIAL_SUFFIX) and _core_accepts_name(
            name.removesuffix(segments.PARTIAL_SUFFIX)
        )
        assert (FETCHABLE_RE.fullmatch(name) is not None) == (core or partial), name


@given(NAME_TEXT)
def test_any_text_is_a_segment_name_for_both_or_neither(name: str) -> None:
    assert hit.is_segment_name(name) == _core_accepts_name(name)
    fetchable = FETCHABLE_RE.fullmatch(name) is not None
    stem = name.removesuffix(segments.PARTIAL_SUFFIX)
    assert fetchable == _core_accepts_name(stem)


@given(NAME_TEXT, st.integers(0, 2**32 - 1))
def test_spool_file_names_hold_exactly_a_segment_name(name: str, crc: int) -> None:
    parsed = hit.parse_spooled(spooled_name(name, 1 << 24, crc))
    assert (parsed is not None) == _core_accepts_name(name)
    if parsed is not None:
        assert parsed == (name, 1 << 24, crc)


# Near misses of a spool file's name: a segment name, a size, a CRC, each
# possibly a character short or long or off, and stray dots and suffixes.
SPOOL_TEXT = st.builds(
    lambda *parts: "".join(parts),
    st.text(alphabet="0123456789ABCDEFa", min_size=23, max_size=25),
    st.sampled_from([".", "", ".."]),
    st.text(alphabet="0123456789a.²", min_size=0, max_size=9),
    st.sampled_from([".", "", "x"]),
    st.text(alphabet="0123456789abcdefA.", min_size=6, max_size=9),
    st.sampled_from(["", "\n", ".tmp", "."]),
)


@given(SPOOL_TEXT)
def test_any_text_is_a_spool_file_name_for_the_pattern_and_the_hit_path_alike(text: str) -> None:
    match = SPOOLED_RE.fullmatch(text)
    expected = None
    if match is not None:
        expected = (match.group(1), int(match.group(2)), int(match.group(3), 16))
    assert hit.parse_spooled(text) == expected


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
    assert hit.is_ttid(text) == _core_accepts_ttid(text)


def test_timeline_id_samples() -> None:
    good = "0123456789abcdef" * 2 + "/" + "fedcba9876543210" * 2
    for text in [good, good.upper(), good + "\n", good[:-1], "../x", TTID, TTID + "/x", ""]:
        assert hit.is_ttid(text) == _core_accepts_ttid(text), text


def test_fetch_help_documents_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    from tasks.cli.main import fetch_main

    assert fetch_main(["--help"]) == 0
    text = capsys.readouterr().out
    for code in (
        exits.EXIT_NOT_FOUND,
        exits.EXIT_INPUT,
        exits.EXIT_STORAGE,
        exits.EXIT_CHECKSUM,
        exits.EXIT_OTHER,
    ):
        assert f" {code} " in text.replace("\n", " "), code
    # PostgreSQL aborts recovery only on a status above 125.
    assert min(exits.EXIT_INPUT, exits.EXIT_STORAGE, exits.EXIT_CHECKSUM, exits.EXIT_OTHER) > 125


def test_fetch_help_into_a_closed_pipe_prints_no_traceback() -> None:
    """``walbackup fetch --help | head``: the reader gone before the write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "tasks.cli", "fetch", "--help"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=30,
        )
    finally:
        os.close(write_end)
    assert (run.returncode, run.stderr) == (0, b"")


def test_a_spool_is_named_after_its_remote_and_endpoint() -> None:
    assert remote_id("s3://wal/p", None) == "s3%3A%2F%2Fwal%2Fp"  # no trailing "%20"
    assert remote_id("s3://wal/p", "http://h:9000") == "s3%3A%2F%2Fwal%2Fp%20http%3A%2F%2Fh%3A9000"
    assert remote_id("s3://" + "w" * 300, None).startswith("sha256-")


@pytest.fixture
def spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TTID's spool under a ``file://`` remote, set in the environment as a
    hit reads it (no segment size: the default)."""
    data_dir, remote = tmp_path / "data", (tmp_path / "remote").as_uri()
    monkeypatch.setenv("WALBACKUP_DATA_DIR", str(data_dir))
    monkeypatch.setenv("WALBACKUP_REMOTE_STORAGE", remote)
    for name in ("CONFIG_FILE", "S3_ENDPOINT_URL", "WAL_SEG_SIZE"):
        monkeypatch.delenv(f"WALBACKUP_{name}", raising=False)
    path = data_dir / "spool" / remote_id(remote, None) / TTID
    path.mkdir(parents=True)
    return path


@pytest.mark.parametrize("left", ["empty", "zeros", "half"])
def test_a_hit_never_serves_a_damaged_spool_file(
    tmp_path: Path, spool: Path, monkeypatch: pytest.MonkeyPatch, left: str
) -> None:
    """A published name holding nothing, zeros or part of the bytes (a
    disk, a crash or another program damaged it): the hit's CRC-32 and size
    checks delete the file and report a miss (the caller then fetches
    directly); the good file beside it is served."""
    monkeypatch.setenv("WALBACKUP_WAL_SEG_SIZE", str(1 << 20))
    body = os.urandom(1 << 20)
    damaged = {"empty": b"", "zeros": bytes(len(body)), "half": body[: len(body) // 2]}[left]
    bad = spool / spooled_name(SEGMENT, len(body), zlib.crc32(body))
    bad.write_bytes(damaged)
    other = "000000010000000000000003"
    (spool / spooled_name(other, len(body), zlib.crc32(body))).write_bytes(body)
    dest = tmp_path / "RECOVERYXLOG"

    assert hit.try_serve(TTID, SEGMENT, str(dest)) is False
    assert not bad.exists() and not dest.exists()
    assert hit.try_serve(TTID, other, str(dest)) is True
    assert dest.read_bytes() == body


def test_the_console_script_never_exits_1_when_it_cannot_load(tmp_path: Path) -> None:
    """A package half-removed or broken under a running recovery: the
    script says so and exits 203 (PostgreSQL stops), never 1 ("not
    archived": recovery would end early) with a traceback."""
    broken = tmp_path / "tasks"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise RuntimeError('half-removed')\n")
    run = subprocess.run(
        [sys.executable, str(ROOT / "bin" / "walbackup"), "fetch", TTID, SEGMENT, "x"],
        env=env_without_walbackup() | {"PYTHONPATH": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == exits.EXIT_OTHER, run.stderr
    assert run.stderr.count("\n") == 1 and "half-removed" in run.stderr


@pytest.mark.parametrize(
    ("setting", "file_setting", "served"),
    [
        (None, None, False),  # the default, 16 MiB
        (str(16 << 20), None, False),
        ("1048576", None, True),
        (None, 1 << 20, True),  # from WALBACKUP_CONFIG_FILE
        ("1 MiB", None, False),  # unsure: the slow path says what is wrong
    ],
)
def test_a_hit_serves_only_a_segment_of_the_configured_size(
    tmp_path: Path,
    spool: Path,
    monkeypatch: pytest.MonkeyPatch,
    setting: str | None,
    file_setting: int | None,
    served: bool,
) -> None:
    """A segment spooled under other settings (1 MiB) is no hit for a call
    whose WALBACKUP_WAL_SEG_SIZE says otherwise: the direct fetch then
    exits 200 naming the sizes, as it would without a spool."""
    if setting is not None:
        monkeypatch.setenv("WALBACKUP_WAL_SEG_SIZE", setting)
    if file_setting is not None:
        config = tmp_path / "walbackup.toml"
        config.write_text(f"wal_seg_size = {file_setting}\n")
        monkeypatch.setenv("WALBACKUP_CONFIG_FILE", str(config))
    body = os.urandom(1 << 20)
    spooled = spool / spooled_name(SEGMENT, len(body), zlib.crc32(body))
    spooled.write_bytes(body)
    dest = tmp_path / "RECOVERYXLOG"

    assert hit.try_serve(TTID, SEGMENT, str(dest)) is served
    assert dest.exists() is served
    assert spooled.exists() is not served  # not deleted: it is no damaged file


def test_the_hit_path_default_seg_size_is_the_settings() -> None:
    from tasks.config import Settings

    assert Settings.model_fields["wal_seg_size"].default == hit.DEFAULT_SEG_SIZE
