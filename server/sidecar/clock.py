"""The sidecar's sense of time: the system clock, or a manual one that tests move."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current moment, timezone-aware (UTC)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait this long by this clock (a manual clock returns when it is moved far enough)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that stands still until `advance` or `set` moves it (tests of reminders)."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._moved = asyncio.Event()

    def now(self) -> datetime:
        return self._now

    def set(self, moment: datetime) -> None:
        self._now = moment
        self._moved.set()
        self._moved = asyncio.Event()

    def advance(self, delta: timedelta) -> None:
        self.set(self._now + delta)

    async def sleep(self, seconds: float) -> None:
        # Sleeping on a manual clock waits for the next move, but never longer than a real
        # tenth of a second, so a loop that also watches the database keeps turning.
        moved = self._moved
        try:
            await asyncio.wait_for(moved.wait(), timeout=min(max(seconds, 0.0), 0.1))
        except TimeoutError:
            pass
