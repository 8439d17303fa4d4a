"""Access changes, told to every process that serves connections.

A grant removed, a user downgraded or disabled, a token or share link revoked, a document
deleted: each is published as an `AccessChange`, and every subscriber (the rules cache, the
enforcer that re-checks open connections) hears it. `LocalAccessEvents` delivers within this
process; `SharedAccessEvents` also tells every other process through the Redis broker
(server/rooms/broker.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("tandem.access")


@dataclass(frozen=True, slots=True)
class AccessChange:
    """What changed. `rules`: grants, folders, documents' placement or users, so every
    connection is checked again; `revoked`: these token ids (share links included) are void;
    `deleted`: these documents were deleted (their connections close with 4404)."""

    rules: bool = True
    revoked: frozenset[str] = field(default_factory=frozenset)
    deleted: frozenset[str] = field(default_factory=frozenset)

    def encode(self) -> bytes:
        return json.dumps(
            {"rules": self.rules, "revoked": sorted(self.revoked), "deleted": sorted(self.deleted)}
        ).encode()

    @classmethod
    def decode(cls, payload: bytes) -> AccessChange:
        value = json.loads(payload)
        return cls(
            rules=bool(value.get("rules", True)),
            revoked=frozenset(map(str, value.get("revoked", ()))),
            deleted=frozenset(map(str, value.get("deleted", ()))),
        )


Listener = Callable[[AccessChange], Awaitable[None]]


class AccessEvents(Protocol):
    async def publish(self, change: AccessChange) -> None: ...
    def subscribe(self, listener: Listener) -> None: ...


class LocalAccessEvents:
    """Delivers each change to this process's listeners, in the order they subscribed."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def publish(self, change: AccessChange) -> None:
        for listener in self._listeners:
            try:
                await listener(change)
            except Exception:
                # One listener's failure must not keep the change from the others.
                log.exception("an access change could not be applied")


class Broadcaster(Protocol):
    """The part of the Redis broker that carries process-wide events."""

    def on_event(self, name: str, handler: Callable[[bytes], Awaitable[None]]) -> None: ...
    async def send_event(self, name: str, payload: bytes) -> bool: ...


class SharedAccessEvents(LocalAccessEvents):
    """Delivers each change here, then to every other process through the broker. A change
    published while Redis is unreachable reaches the others when it answers again: each
    process then re-reads revocations and re-checks every connection (`recheck`)."""

    NAME = "access"

    def __init__(self, broker: Broadcaster) -> None:
        super().__init__()
        self._broker = broker
        broker.on_event(self.NAME, self._heard)

    async def publish(self, change: AccessChange) -> None:
        await super().publish(change)
        if not await self._broker.send_event(self.NAME, change.encode()):
            log.warning("an access change could not be told to other processes yet")

    async def _heard(self, payload: bytes) -> None:
        await super().publish(AccessChange.decode(payload))
