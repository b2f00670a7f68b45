"""Do the nodes agree on a segment's bytes? The pure rule behind SPEC §4 "Agreement".

Each node publishes the SHA-256 of every complete segment it holds above
backup_lsn. Before uploading, the offloader compares its own digest with those
of the other live nodes holding the segment: it uploads only when ``required``
copies (its own included) are equal. Fewer live holders than ``required`` lower
the bar to all of them, so a lone node still archives.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum


class Decision(Enum):
    UPLOAD = "upload"
    """Enough copies equal ours."""
    OUTVOTED = "outvoted"
    """Enough other copies agree on different bytes: ours is damaged."""
    WAIT = "wait"
    """Not decided until the missing digests arrive."""
    SPLIT = "split"
    """Every digest is in and no bytes have enough copies."""


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision
    needed: int
    agreeing: tuple[int, ...]
    """Other nodes whose copy equals ours."""
    differing: tuple[int, ...]
    """Other nodes whose copy differs from ours."""
    pending: tuple[int, ...]
    """Holders whose digest is not published yet."""


def judge(own: str, holders: Sequence[int], published: Mapping[int, str], required: int) -> Verdict:
    """``own``: our digest; ``holders``: the other live nodes holding the
    segment; ``published``: their digests so far; ``required``: copies that
    must be equal, ours included (at least 1)."""
    needed = max(1, min(required, 1 + len(holders)))
    agreeing = tuple(n for n in holders if published.get(n) == own)
    differing = tuple(n for n in holders if n in published and published[n] != own)
    pending = tuple(n for n in holders if n not in published)
    if 1 + len(agreeing) >= needed:
        decision = Decision.UPLOAD
    else:
        others = Counter(published[n] for n in differing)
        if others and max(others.values()) >= needed:
            decision = Decision.OUTVOTED
        elif pending:
            decision = Decision.WAIT
        else:
            decision = Decision.SPLIT
    return Verdict(decision, needed, agreeing, differing, pending)
