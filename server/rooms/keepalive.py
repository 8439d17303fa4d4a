"""Keep-alive pings of every connection on one timer.

uvicorn schedules each connection's next ping with a timer of its own: about 0.6 KB per idle
connection (the timer, its callback, the bound method). `PingWheel` keeps, per tenth of a
second, the set of connections whose ping falls due in it, and one timer for the earliest:
a connection then costs a set entry and a small slot object (bench/idle_profile.py).
"""

from __future__ import annotations

import asyncio
import math
import weakref
from typing import Any, Protocol


class Pinged(Protocol):
    def send_keepalive_ping(self) -> None: ...


TICKS_PER_SECOND = 10


class Slot:
    """A connection's place on the wheel; `cancel` as a timer handle's (uvicorn calls it)."""

    __slots__ = ("protocol", "tick", "wheel")

    def __init__(self, wheel: PingWheel, tick: int, protocol: Pinged) -> None:
        self.wheel = wheel
        self.tick = tick
        self.protocol = protocol

    def cancel(self) -> None:
        self.wheel.remove(self.tick, self.protocol)


class PingWheel:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.due: dict[int, set[Pinged]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None

    def schedule(self, protocol: Pinged, delay: float) -> Slot:
        """Ping `protocol` in `delay` seconds (rounded up to the next tick)."""
        tick = math.ceil((self.loop.time() + delay) * TICKS_PER_SECOND)
        members = self.due.get(tick)
        if members is None:
            members = self.due[tick] = set()
        members.add(protocol)
        if self._timer_at is None or tick < self._timer_at:
            self._arm(tick)
        return Slot(self, tick, protocol)

    def remove(self, tick: int, protocol: Pinged) -> None:
        members = self.due.get(tick)
        if members is not None:
            members.discard(protocol)
            if not members:
                del self.due[tick]

    def _arm(self, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = tick
        self._timer = self.loop.call_at(tick / TICKS_PER_SECOND, self._fire)

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        now = self.loop.time() * TICKS_PER_SECOND
        for tick in sorted(t for t in self.due if t <= now + 0.5):
            for protocol in self.due.pop(tick):
                protocol.send_keepalive_ping()
        if self.due:
            self._arm(min(self.due))


_wheels: weakref.WeakKeyDictionary[Any, PingWheel] = weakref.WeakKeyDictionary()


def wheel_for(loop: asyncio.AbstractEventLoop) -> PingWheel:
    wheel = _wheels.get(loop)
    if wheel is None:
        wheel = _wheels[loop] = PingWheel(loop)
    return wheel
