"""FloodGuard: how many messages and bytes one connection may send, as two token buckets.

Each bucket holds ten seconds' worth at the sustained rate, so bursts (a paste, a reconnect's
sync step 2, a script's quick edits) pass untouched. A client that keeps sending faster runs
its buckets dry and is then slowed down, not refused: `take` answers how long to stop reading
its socket for the buckets to refill, and TCP holds the sender back meanwhile (session.py).
An import script or a provider replaying an offline session loses nothing and costs the room
no more than its share. What pacing cannot make honest is still closed with 1008: a
connection that keeps its buckets dry for longer than `patience` seconds.
"""

from __future__ import annotations

import time

from server.rooms.room import RejectedFrame

BURST_SECONDS = 2.0
# A connection over its allowance pauses until its deficit is refilled and this much more.
PACE_SECONDS = 0.05
# A rate of 0 means no limit: a rate so high no bucket ever runs dry (and, unlike infinity,
# one that times a zero interval gives zero rather than NaN).
_UNLIMITED = 1e18


class Flooding(RejectedFrame):
    """The connection sent more than its allowance (closed with 1008, policy violation)."""

    def __init__(self, reason: str) -> None:
        super().__init__(1008, reason)


class FloodGuard:
    __slots__ = (
        "_byte_cap",
        "_byte_rate",
        "_bytes",
        "_dry_since",
        "_last",
        "_message_cap",
        "_message_rate",
        "_messages",
        "patience",
    )

    def __init__(
        self, messages_per_second: float, bytes_per_second: float, patience: float = 300.0
    ) -> None:
        self._message_rate = messages_per_second if messages_per_second > 0 else _UNLIMITED
        self._byte_rate = bytes_per_second if bytes_per_second > 0 else _UNLIMITED
        self._messages = self._message_cap = self._message_rate * BURST_SECONDS
        self._bytes = self._byte_cap = self._byte_rate * BURST_SECONDS
        self._last = time.monotonic()
        # When the buckets last ran dry with no second's worth refilled since; None: not dry.
        self._dry_since: float | None = None
        self.patience = patience if patience > 0 else _UNLIMITED

    def take(self, size: int) -> float:
        """Count one message of `size` bytes: 0.0 while within the allowance, else the
        seconds to stop reading for the buckets to refill. Raises Flooding once the
        connection has stayed over its allowance for `patience` seconds."""
        now = time.monotonic()
        elapsed, self._last = now - self._last, now
        # Refill, up to the cap, then take (comparisons: this runs for every frame).
        messages = self._messages + elapsed * self._message_rate
        if messages > self._message_cap:
            messages = self._message_cap
        self._messages = messages = messages - 1
        size_left = self._bytes + elapsed * self._byte_rate
        if size_left > self._byte_cap:
            size_left = self._byte_cap
        self._bytes = size_left = size_left - size
        if messages >= 0 and size_left >= 0:
            if self._dry_since is not None and messages >= self._message_rate:
                self._dry_since = None  # it slowed down: a second's worth came back
            return 0.0
        if self._dry_since is None:
            self._dry_since = now
        elif now - self._dry_since > self.patience:
            raise Flooding(self.describe() + f", for over {self.patience:g} s")
        # Until the deficit is made up, and a little more: paced in steps of PACE_SECONDS,
        # not one pause per message.
        return max(-messages / self._message_rate, -size_left / self._byte_rate) + PACE_SECONDS

    def describe(self) -> str:
        """Which allowance the connection is over, for a close reason."""
        if self._messages < 0:
            return f"too many messages: at most {self._message_rate:g} a second"
        return f"too much data: at most {self._byte_rate:g} bytes a second"
