"""FloodGuard: the token buckets that pace a fast sender, on a clock the test moves."""

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


def test_a_burst_of_two_seconds_worth_passes_and_the_next_message_waits(clock: Clock) -> None:
    guard = FloodGuard(messages_per_second=10, bytes_per_second=0)
    for _ in range(20):
        assert guard.take(1) == 0.0
    # One message over: a tenth of a second to make it up, and the pacing step.
    assert guard.take(1) == pytest.approx(0.1 + flood.PACE_SECONDS)
    assert guard.take(1) == pytest.approx(0.2 + flood.PACE_SECONDS)


def test_the_sustained_rate_never_waits(clock: Clock) -> None:
    guard = FloodGuard(messages_per_second=10, bytes_per_second=1000)
    for _ in range(10_000):  # 1000 seconds at the rate, with 100 bytes each
        clock.now += 0.1
        assert guard.take(100) == 0.0


def test_allowance_comes_back_with_time_but_not_past_the_burst(clock: Clock) -> None:
    guard = FloodGuard(messages_per_second=10, bytes_per_second=0)
    for _ in range(20):
        guard.take(1)
    clock.now += 3600  # an hour of quiet refills two seconds' worth, no more
    for _ in range(20):
        assert guard.take(1) == 0.0
    assert guard.take(1) > 0


def test_bytes_run_dry_on_their_own(clock: Clock) -> None:
    guard = FloodGuard(messages_per_second=0, bytes_per_second=1000)
    assert guard.take(2_000) == 0.0  # one message of two seconds' worth
    assert guard.take(500) == pytest.approx(0.5 + flood.PACE_SECONDS)
    assert guard.describe() == "too much data: at most 1000 bytes a second"
    clock.now += 1
    assert guard.take(499) == 0.0


def test_a_connection_paced_for_longer_than_its_patience_is_closed(clock: Clock) -> None:
    guard = FloodGuard(messages_per_second=10, bytes_per_second=0, patience=30)
    for _ in range(20):
        guard.take(1)
    dry_from = clock.now
    # It keeps sending at twice its rate: paced all along, then closed after 30 s of that.
    with pytest.raises(Flooding, match="too many messages: at most 10 a second, for over 30 s"):
        for _ in range(1000):
            clock.now += 0.05
            guard.take(1)
    assert 30 < clock.now - dry_from < 31


def test_slowing_down_ends_the_count_towards_patience(clock: Clock) -> None:
    guard = FloodGuard(messages_per_second=10, bytes_per_second=0, patience=30)
    for _ in range(25):
        guard.take(1)  # dry
    clock.now += 20
    assert guard.take(1) == 0.0  # a second's worth and more came back: no longer dry
    for _ in range(25):
        guard.take(1)  # dry again, counting from now
    clock.now += 25
    for _ in range(10):
        guard.take(1)  # 25 s later: within its patience


def test_zero_means_no_limit(clock: Clock) -> None:
    guard = FloodGuard(messages_per_second=0, bytes_per_second=0)
    for _ in range(100_000):
        assert guard.take(1 << 20) == 0.0
