"""FloodGuard: the token buckets behind the 1008 close, on a clock the test moves."""

from __future__ import annotations

import pytest

from server.rooms import flood
from server.rooms.flood import FloodGuard, Flooding


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(flood.time, "monotonic", fake)
    return fake


def test_a_burst_of_ten_seconds_worth_passes_and_one_more_does_not(clock: Clock) -> None:
    guard = FloodGuard(messages_per_second=10, bytes_per_second=0)
    for _ in range(100):
        guard.take(1)
    with pytest.raises(Flooding, match="too many messages: at most 10 a second"):
        guard.take(1)


def test_the_sustained_rate_never_runs_dry(clock: Clock) -> None:
    guard = FloodGuard(messages_per_second=10, bytes_per_second=1000)
    for _ in range(10_000):  # 1000 seconds at the rate, with 100 bytes each
        clock.now += 0.1
        guard.take(100)


def test_allowance_comes_back_with_time_but_not_past_the_burst(clock: Clock) -> None:
    guard = FloodGuard(messages_per_second=10, bytes_per_second=0)
    for _ in range(100):
        guard.take(1)
    clock.now += 3600  # an hour of quiet refills ten seconds' worth, no more
    for _ in range(100):
        guard.take(1)
    with pytest.raises(Flooding):
        guard.take(1)


def test_bytes_run_dry_on_their_own(clock: Clock) -> None:
    guard = FloodGuard(messages_per_second=0, bytes_per_second=1000)
    guard.take(10_000)  # one message of ten seconds' worth
    with pytest.raises(Flooding, match="too much data: at most 1000 bytes a second"):
        guard.take(1)
    clock.now += 1
    guard.take(999)


def test_zero_means_no_limit(clock: Clock) -> None:
    guard = FloodGuard(messages_per_second=0, bytes_per_second=0)
    for _ in range(100_000):
        guard.take(1 << 20)
