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
from typing import Any, Protocol

log = logging.getLogger("tandem.access")

# PostgreSQL NOTIFY channel on which commands that change users directly in the database
# (`tandem user ...`) tell running servers, which then re-read the rules and re-check every
# open connection.
PG_CHANNEL = "tandem_access"
EVENT_NAME = "access"


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
        await self.deliver(change)

    async def deliver(self, change: AccessChange) -> None:
        """To this process's listeners only."""
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

    NAME = EVENT_NAME

    def __init__(self, broker: Broadcaster) -> None:
        super().__init__()
        self._broker = broker
        broker.on_event(self.NAME, self._heard)

    async def publish(self, change: AccessChange) -> None:
        await self.deliver(change)
        if not await self._broker.send_event(self.NAME, change.encode()):
            log.warning("an access change could not be told to other processes yet")

    async def _heard(self, payload: bytes) -> None:
        await self.deliver(AccessChange.decode(payload))


async def announce(change: AccessChange, *, redis_url: str | None, prefix: str, engine: Any) -> str:
    """Tell running servers about a change made outside them (the `tandem user` commands
    write to the database directly): through Redis when it is configured, and with a NOTIFY
    on PostgreSQL. Returns how they were told ("" when neither applies: a server on SQLite
    without Redis sees the change at its next access change or restart)."""
    told = []
    if redis_url:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
        try:
            # The same shape as the broker's events: "e|<origin>|<payload>".
            await client.publish(f"{prefix}:event:{EVENT_NAME}", b"e|cli|" + change.encode())
            told.append("Redis")
        except Exception as exc:
            log.warning("running servers could not be told through Redis: %s", exc)
        finally:
            await client.aclose()
    if engine.dialect.name == "postgresql":
        from sqlalchemy import text

        async with engine.begin() as conn:
            await conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": PG_CHANNEL})
        told.append("PostgreSQL")
    return " and ".join(told)
