"""Reminders before a task is due and once it is overdue.

The schedule is never kept only in memory: it is the task projection (`task_index`: due
moment, status, assignee), so a restarted sidecar knows it at once. A reminder is an event
whose key names the task, the stage, the due date and the assignee, so each fires once; a
new due date or a new assignee makes new keys (the reminders are rescheduled), and a task
that is done is no longer looked at (its reminders are cancelled).

Only the latest stage that applies fires: a task created 30 minutes before it is due gets
the last reminder, not the first one as well.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.access import AccessControl
from server.persistence.tables import documents, task_index
from server.settings import Settings
from server.sidecar.clock import Clock, SystemClock
from server.sidecar.derive import NewEvent
from server.sidecar.emit import emit, writing

log = logging.getLogger("tandem.sidecar")

LONGEST_NAP = 30.0  # seconds: the projection may have changed meanwhile


class Reminders:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        access: AccessControl,
        clock: Clock | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.access = access
        self.clock = clock or SystemClock()
        self.first = timedelta(hours=settings.remind_first_hours)
        self.last = timedelta(hours=settings.remind_last_hours)
        self.base_url = (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip(
            "/"
        )
        self._woken = asyncio.Event()
        self._fired: set[str] = set()  # keys known to be stored (saves looking them up)
        self.on_notified: Any = None

    def stage(self, due_at: datetime, now: datetime) -> str | None:
        if now >= due_at:
            return "overdue"
        if now >= due_at - self.last:
            return "due_imminent"
        if now >= due_at - self.first:
            return "due_soon"
        return None

    async def step(self) -> datetime | None:
        """Fire what is due now; returns when the next reminder falls due (None: none)."""
        now = self.clock.now()
        horizon = now + self.first
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        task_index.c.doc_id,
                        task_index.c.task_id,
                        task_index.c.title,
                        task_index.c.assignee,
                        task_index.c.due,
                        task_index.c.due_at,
                        documents.c.title.label("board_title"),
                    )
                    .join(documents, documents.c.id == task_index.c.doc_id)
                    .where(
                        task_index.c.due_at.is_not(None),
                        task_index.c.assignee.is_not(None),
                        task_index.c.status != "done",
                        task_index.c.due_at <= horizon,
                        documents.c.deleted_at.is_(None),
                    )
                )
            ).all()
            upcoming = (
                await conn.execute(
                    select(task_index.c.due_at)
                    .where(
                        task_index.c.due_at.is_not(None),
                        task_index.c.assignee.is_not(None),
                        task_index.c.status != "done",
                        task_index.c.due_at > horizon,
                    )
                    .order_by(task_index.c.due_at)
                    .limit(1)
                )
            ).scalar()
        new: list[NewEvent] = []
        next_due: datetime | None = None if upcoming is None else _aware(upcoming) - self.first
        for row in rows:
            due_at = _aware(row.due_at)
            stage = self.stage(due_at, now)
            following = _next_stage_at(due_at, now, self.last)
            if following is not None and (next_due is None or following < next_due):
                next_due = following
            if stage is None:
                continue
            key = f"{stage}:{row.doc_id}:{row.task_id}:{row.due}:{row.assignee}"
            if key in self._fired:
                continue
            new.append(
                NewEvent(
                    key=key,
                    kind=stage,
                    doc_id=row.doc_id,
                    task_id=row.task_id,
                    actor=None,
                    created_at=now,
                    recipients={row.assignee},
                    data={
                        "title": row.title,
                        "board_title": row.board_title,
                        "due": row.due,
                        "due_at": due_at.isoformat(),
                        "summary": _summary(stage, row.title, due_at),
                        "url": f"{self.base_url}/api/docs/{row.doc_id}/tasks/{row.task_id}",
                    },
                )
            )
        if new:
            async with writing(self.engine), self.engine.begin() as conn:
                made = await emit(conn, new, self.access)
            self._fired.update(e.key for e in new)
            if len(self._fired) > 100_000:
                self._fired.clear()
            if made and self.on_notified is not None:
                self.on_notified(made)
        return next_due

    async def run(self) -> None:
        while True:
            try:
                next_due = await self.step()
            except Exception:
                log.exception("reminders failed; trying again")
                next_due = None
            nap = LONGEST_NAP
            if next_due is not None:
                nap = min(nap, max((next_due - self.clock.now()).total_seconds(), 0.05))
            await self._nap(nap)

    def nudge(self) -> None:
        """Tasks changed (a new due date, say): look again now, not after the nap."""
        self._woken.set()

    async def _nap(self, seconds: float) -> None:
        woken = asyncio.ensure_future(self._woken.wait())
        slept = asyncio.ensure_future(self.clock.sleep(seconds))
        try:
            await asyncio.wait({woken, slept}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            slept.cancel()
            self._woken.clear()


def _next_stage_at(due_at: datetime, now: datetime, last: timedelta) -> datetime | None:
    """When the next stage of a task inside the horizon begins."""
    for moment in (due_at - last, due_at):
        if moment > now:
            return moment
    return None


def _summary(stage: str, title: str, due_at: datetime) -> str:
    when = due_at.strftime("%Y-%m-%d %H:%M UTC")
    if stage == "overdue":
        return f"“{title}” is overdue (due {when})"
    return f"“{title}” is due {when}"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
