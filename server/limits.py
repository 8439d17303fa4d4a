"""Sliding-window limits on failures, in memory: "at most N in the last W seconds" per key.

Used for sign-in: each failed attempt is recorded under the account and under the client
address; once a key has `limit` failures within the window, further attempts under it are
refused until the oldest failure leaves the window. The state is per process (a restart
forgets it), which is enough to make guessing passwords impractically slow.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("tandem.limits")

# Keys with no failure in the window are dropped after this many recorded failures, so that
# a stream of distinct keys (addresses, made-up user names) cannot grow the table for ever.
_SWEEP_EVERY = 1024


class SlidingWindow:
    """At most `limit` events per key within `window` seconds; limit 0 means no limit."""

    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "limit",
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.name = name
        self._events: dict[str, deque[float]] = {}
        # Keys refused and logged, with when that refusal ends: one log line per episode.
        self._logged_until: dict[str, float] = {}
        self._recorded = 0

    def _recent(self, key: str, now: float) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        while events and events[0] <= now - self.window:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may try again; 0 when it may now."""
        if self.limit <= 0:
            return 0.0
        now = self.clock()
        events = self._recent(key, now)
        if events is None or len(events) < self.limit:
            return 0.0
        wait = events[0] + self.window - now
        if self._logged_until.get(key, -math.inf) <= now:
            self._logged_until[key] = now + wait
            log.warning(
                "%s: %s had %d failures within %gs; refused for %.0fs",
                self.name,
                key,
                len(events),
                self.window,
                wait,
            )
        return wait

    def record(self, key: str) -> None:
        """Count one failure for `key` now."""
        if self.limit <= 0:
            return
        now = self.clock()
        events = self._recent(key, now)
        if events is None:
            events = self._events[key] = deque()
        events.append(now)
        if len(events) > self.limit:
            events.popleft()  # only the newest `limit` decide when the key may try again
        self._recorded += 1
        if self._recorded % _SWEEP_EVERY == 0:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        for key in list(self._events):
            self._recent(key, now)
        for key, until in list(self._logged_until.items()):
            if until <= now:
                del self._logged_until[key]

    def __len__(self) -> int:
        """How many keys have failures on record (in the window or not yet swept)."""
        return len(self._events)
