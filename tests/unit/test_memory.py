"""tasks.memory: arenas limited unless MALLOC_ARENA_MAX says otherwise; trims rate-limited."""

from __future__ import annotations

import pytest

from tasks import memory


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.fixture
def libc(monkeypatch: pytest.MonkeyPatch) -> FakeLibc:
    fake = FakeLibc()
    monkeypatch.setattr(memory, "_libc", lambda: fake)
    monkeypatch.setattr(memory, "_last_trim", 0.0)
    return fake


def test_arenas_limited_unless_the_environment_says(
    libc: FakeLibc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    memory.limit_arenas()
    assert libc.calls == [("mallopt", memory.M_ARENA_MAX, memory.NODE_ARENAS)]
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    memory.limit_arenas()
    assert len(libc.calls) == 1


def test_trim_at_most_once_per_interval(libc: FakeLibc) -> None:
    memory.trim(min_interval_s=60)
    memory.trim(min_interval_s=60)
    assert libc.calls == [("malloc_trim", 0)]
    memory.trim(min_interval_s=0)
    assert len(libc.calls) == 2


def test_glibc_is_found_here() -> None:
    libc = memory._libc()
    assert libc is not None  # this machine runs glibc: both calls are real here
    assert libc.malloc_trim(0) in (0, 1)
