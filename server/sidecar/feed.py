"""The change feed: the update log read in order, from a checkpoint, by the sidecar.

`ChangeFeed` is the interface; `SqlFeed` reads the `updates` table. (Scale-out adds a Redis
stream read through a consumer group behind the same interface.)

Rows are read by `seq`. On SQLite one writer at a time assigns and commits seqs, so a seq
that is missing was deleted (compaction merged it into a snapshot, which the processor reads
instead). On PostgreSQL a seq is taken when a row is inserted and becomes visible when its
transaction commits, so a lower seq can appear after a higher one: the feed stops in front
of a missing seq until it has been missing for `gap_wait` seconds (a rolled-back insert
leaves a gap for good).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.persistence.append import FEED_CHANNEL
from server.persistence.listen import listen
from server.persistence.tables import updates

log = logging.getLogger("tandem.sidecar")


@dataclass(frozen=True, slots=True)
class Change:
    """One stored update."""

    seq: int
    doc_id: str
    data: bytes
    author: str | None
    created_at: datetime


class ChangeFeed(Protocol):
    async def read(self, after: int, limit: int) -> list[Change]:
        """Changes with a position after `after`, oldest first, at most `limit`."""
        ...

    async def wait(self, timeout: float) -> None:
        """Return when new changes may be there (woken) or after `timeout` seconds."""
        ...

    def nudge(self) -> None:
        """New changes were committed (called in the writing process)."""
        ...

    async def close(self) -> None: ...


class SqlFeed:
    """The update log of a SQL database. PostgreSQL wakes it with LISTEN/NOTIFY (the
    appender notifies at commit); otherwise it is nudged in-process or polls."""

    def __init__(self, engine: AsyncEngine, *, gap_wait: float | None = None) -> None:
        self.engine = engine
        postgres = engine.dialect.name == "postgresql"
        self.gap_wait = gap_wait if gap_wait is not None else (5.0 if postgres else 0.0)
        self._woken = asyncio.Event()
        self._gaps: dict[int, float] = {}  # a missing seq -> when it was first seen missing
        self._listener: Any = None
        self._listening = postgres

    async def read(self, after: int, limit: int) -> list[Change]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        updates.c.seq,
                        updates.c.doc_id,
                        updates.c.data,
                        updates.c.author,
                        updates.c.created_at,
                    )
                    .where(updates.c.seq > after)
                    .order_by(updates.c.seq)
                    .limit(limit)
                )
            ).all()
        changes: list[Change] = []
        expected = after + 1
        now = time.monotonic()
        for row in rows:
            if row.seq != expected and self.gap_wait > 0 and after > 0:
                first_seen = self._gaps.setdefault(expected, now)
                if now - first_seen < self.gap_wait:
                    break  # a lower seq may still commit: wait for it a little
            changes.append(
                Change(
                    seq=row.seq,
                    doc_id=row.doc_id,
                    data=row.data,
                    author=row.author,
                    created_at=_aware(row.created_at),
                )
            )
            expected = row.seq + 1
        if changes:
            last = changes[-1].seq
            self._gaps = {seq: seen for seq, seen in self._gaps.items() if seq > last}
        return changes

    async def wait(self, timeout: float) -> None:
        if self._listening and self._listener is None:
            await self._listen()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), timeout)
        self._woken.clear()

    def nudge(self) -> None:
        self._woken.set()

    async def _listen(self) -> None:
        """A connection of its own that LISTENs; without it the feed polls."""
        self._listener = await listen(self.engine, FEED_CHANNEL, self._woken.set)
        if self._listener is None:
            self._listening = False

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
