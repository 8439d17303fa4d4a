"""FloodGuard: how many messages and bytes one connection may send, as two token buckets.

Each bucket holds ten seconds' worth at the sustained rate, so bursts (a paste, a reconnect's
sync step 2, a script's quick edits) pass, and only a client that keeps sending faster than
the rate runs dry.
"""

from __future__ import annotations

import time

from server.rooms.room import RejectedFrame

BURST_SECONDS = 10.0
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
        "_last",
        "_message_cap",
        "_message_rate",
        "_messages",
    )

    def __init__(self, messages_per_second: float, bytes_per_second: float) -> None:
        self._message_rate = messages_per_second if messages_per_second > 0 else _UNLIMITED
        self._byte_rate = bytes_per_second if bytes_per_second > 0 else _UNLIMITED
        self._messages = self._message_cap = self._message_rate * BURST_SECONDS
        self._bytes = self._byte_cap = self._byte_rate * BURST_SECONDS
        self._last = time.monotonic()

    def take(self, size: int) -> None:
        """Count one message of `size` bytes. Raises Flooding when over the allowance."""
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
        self._bytes = size_left - size
        if messages < 0:
            raise Flooding(f"too many messages: at most {self._message_rate:g} a second")
        if self._bytes < 0:
            raise Flooding(f"too much data: at most {self._byte_rate:g} bytes a second")
