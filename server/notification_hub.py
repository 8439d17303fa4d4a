"""Notifications reaching open streams in this server process.

One reader per process looks for notifications newer than the last it saw (woken at once by
a sidecar in the same process, otherwise every poll interval while anyone is listening) and
hands each to the streams of its user. A stream that falls far behind is ended; its client
reconnects with Last-Event-ID and misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.notifications import notification_json
from server.persistence.listen import listen
from server.persistence.tables import events, notifications

log = logging.getLogger("tandem.notifications")

QUEUE = 1000  # notifications waiting for one slow stream before it is ended
BATCH = 1000

Item = dict[str, Any] | None  # None: the stream fell behind and ends


def joined() -> Any:
    """Notifications with their events' columns (as `notification_json` reads them)."""
    return select(
        notifications.c.id,
        notifications.c.event_id,
        notifications.c.user_name,
        notifications.c.kind,
        notifications.c.doc_id,
        notifications.c.created_at,
        notifications.c.read_at,
        events.c.task_id,
        events.c.message_id,
        events.c.actor,
        events.c.data,
    ).join(events, events.c.id == notifications.c.event_id)


async def newest_id(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.max(notifications.c.id)))).scalar() or 0)


class NotificationHub:
    def __init__(self, engine: AsyncEngine, *, poll_seconds: float = 0.25) -> None:
        self.engine = engine
        self.poll_seconds = poll_seconds
        self._streams: dict[str, set[asyncio.Queue[Item]]] = {}
        self._woken = asyncio.Event()
        self._last: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._listener: Any = None  # the LISTEN connection (PostgreSQL); False: failed

    def nudge(self, _ids: object = None) -> None:
        self._woken.set()

    async def subscribe(self, user: str) -> tuple[asyncio.Queue[Item], int]:
        """A queue of `user`'s new notifications, and the id after which it starts."""
        if self._last is None:
            async with self.engine.connect() as conn:
                self._last = await newest_id(conn)
        queue: asyncio.Queue[Item] = asyncio.Queue(QUEUE)
        self._streams.setdefault(user, set()).add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return queue, self._last

    def unsubscribe(self, user: str, queue: asyncio.Queue[Item]) -> None:
        queues = self._streams.get(user)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._streams[user]

    async def _listen(self) -> None:
        """On PostgreSQL, a sidecar's NOTIFY wakes the reader at once (else it polls)."""
        if self.engine.dialect.name != "postgresql" or self._listener is not None:
            return
        from server.sidecar.emit import NOTIFICATIONS_CHANNEL

        self._listener = await listen(self.engine, NOTIFICATIONS_CHANNEL, self._woken.set)
        if self._listener is None:
            self._listener = False  # tried once: polling from now on

    async def _run(self) -> None:
        await self._listen()
        while self._streams:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self.poll_seconds)
            self._woken.clear()
            try:
                await self._read()
            except Exception as exc:
                log.warning("notifications could not be read: %s", exc)
                await asyncio.sleep(1.0)

    async def _read(self) -> None:
        last = self._last or 0
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    joined()
                    .where(notifications.c.id > last)
                    .order_by(notifications.c.id)
                    .limit(BATCH)
                )
            ).all()
        for row in rows:
            for queue in list(self._streams.get(row.user_name, ())):
                try:
                    queue.put_nowait(notification_json(row))
                except asyncio.QueueFull:
                    self._end(row.user_name, queue)
            self._last = row.id
        if len(rows) == BATCH:
            self._woken.set()

    def _end(self, user: str, queue: asyncio.Queue[Item]) -> None:
        self.unsubscribe(user, queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)

    async def close(self) -> None:
        self._streams.clear()
        if self._listener:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
