"""The sidecar as a whole: the feed processor, the reminders, webhooks and e-mail, each a
task of its own, over one database. `tandem sidecar` runs it alone; `tandem serve` runs it
in the server's process unless `--no-sidecar` (TANDEM_SIDECAR=0).

However many of them share a database, one runs at a time: `start` joins the election
(server/leases.py) and the work starts once this process holds the sidecar's lock; the
others stand by. A sidecar that stood down and is elected again starts afresh from the
database (the checkpoint moved on meanwhile), as a new process would."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from server.access import AccessControl
from server.leases import Election, sidecar_lock
from server.settings import Settings
from server.sidecar.clock import Clock, SystemClock
from server.sidecar.feed import ChangeFeed, SqlFeed
from server.sidecar.processor import Processor
from server.sidecar.reminders import Reminders
from server.sidecar.webhooks import WebhookSender

log = logging.getLogger("tandem.sidecar")

# The access rules and people are read again this often: they change in the server.
ACCESS_REFRESH_SECONDS = 5.0
EMBEDDED_POLL_SECONDS = 5.0


class Sidecar:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        *,
        clock: Clock | None = None,
        feed: ChangeFeed | None = None,
        access: AccessControl | None = None,
    ) -> None:
        """`access`: the server's own access rules when in its process (they are reloaded
        at each change there); a sidecar of its own reads them again every few seconds."""
        self.engine = engine
        self.settings = settings
        self.clock = clock or SystemClock()
        self.feed = feed or SqlFeed(engine)
        open_workspace = settings.secret is None and settings.jwks_url is None
        self.shared_access = access is not None
        self.access = access or AccessControl(engine, enabled=not open_workspace)
        self.listeners: list[Callable[[list[int]], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.election = Election(sidecar_lock(engine), self._begin, self._halt)
        self._build()

    def _build(self) -> None:
        engine, settings = self.engine, self.settings
        self.processor = Processor(engine, self.feed, settings, self.access, self.clock)
        if self.shared_access:
            # In the server's process: its commits and uploads wake the feed (`changed`),
            # so polling is only a fallback and an idle server does no work for it.
            self.processor.poll_seconds = max(self.processor.poll_seconds, EMBEDDED_POLL_SECONDS)
        self.reminders = Reminders(engine, settings, self.access, self.clock)
        self.webhooks = WebhookSender(engine, settings, self.clock)
        self.email = _email_sender(engine, settings, self.clock)
        self.processor.on_notified = self._notified
        self.reminders.on_notified = self._notified
        self.processor.on_tasks_changed = self.reminders.nudge
        self._ran = False

    def _notified(self, ids: list[int]) -> None:
        self.webhooks.nudge()
        if self.email is not None:
            self.email.nudge()
        for listener in self.listeners:
            listener(ids)

    def changed(self) -> None:
        """New updates were committed in this process: read the feed now."""
        self.feed.nudge()

    @property
    def leading(self) -> bool:
        """Whether the sidecar runs in this process (not standing by)."""
        return self.election.leading

    def start(self) -> None:
        """Join the election: the sidecar runs while this process holds its lock."""
        self.election.begin()

    def _begin(self) -> None:
        if self._ran:
            self._build()
        self._ran = True
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.processor.run(), name="sidecar-feed"),
            loop.create_task(self.reminders.run(), name="sidecar-reminders"),
            loop.create_task(self.webhooks.run(), name="sidecar-webhooks"),
        ]
        if not self.shared_access:
            self._tasks.append(loop.create_task(self._refresh_access(), name="sidecar-access"))
        if self.email is not None:
            self._tasks.append(loop.create_task(self.email.run(), name="sidecar-email"))
        log.info("sidecar running (feed, reminders, webhooks%s)", ", e-mail" if self.email else "")

    async def _refresh_access(self) -> None:
        while True:
            await asyncio.sleep(ACCESS_REFRESH_SECONDS)
            self.access.changed()

    async def stop(self) -> None:
        await self.election.close()

    async def _halt(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self.feed.close()
        close = getattr(self.webhooks, "close", None)
        if close is not None:
            await close()

    async def serve_forever(self) -> None:
        try:
            await self.election.begin()
        finally:
            await self.stop()


def _email_sender(engine: AsyncEngine, settings: Settings, clock: Clock) -> Any:
    if not settings.smtp_host:
        return None
    from server.sidecar.email import EmailSender

    return EmailSender(engine, settings, clock)
