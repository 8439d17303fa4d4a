"""Reminders with a manual clock: 24 h and 1 h before a task is due and once overdue, once
each; a new due date reschedules them, a finished task cancels them, a restart repeats
nothing. The sidecar reads real update rows from the database, as in production."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pycrdt import Doc, Map
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.persistence import migrate
from server.persistence.sql import SqlStore, create_engine
from server.persistence.store import UpdateRecord
from server.persistence.tables import events, notifications, task_index
from server.settings import Settings
from server.sidecar.clock import ManualClock
from server.sidecar.service import Sidecar
from shared.board import add_task, complete_task, set_due

START = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
DUE = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


class Board:
    """A board document whose every change is appended to the update log."""

    def __init__(self, store: SqlStore, doc_id: str) -> None:
        self.store = store
        self.doc_id = doc_id
        self.doc: Doc[Any] = Doc()

    async def create(self, author: str) -> None:
        await self.change(author, lambda d: d.get("meta", type=Map).update({"kind": "board"}))

    async def change(self, author: str, edit: Any) -> Any:
        before = self.doc.get_state()
        result = edit(self.doc)
        update = self.doc.get_update(before)
        await self.store.append([UpdateRecord(self.doc_id, update, "client", author)])
        return result


async def reminders_of(engine: AsyncEngine) -> list[tuple[str, str | None, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(events.c.kind, events.c.task_id, notifications.c.user_name)
            .join(notifications, notifications.c.event_id == events.c.id)
            .where(events.c.kind.in_(("due_soon", "due_imminent", "overdue")))
            .order_by(events.c.id)
        )
        return [(r.kind, r.task_id, r.user_name) for r in rows]


async def test_reminders_fire_once_each_and_follow_the_due_date(engine: AsyncEngine) -> None:
    clock = ManualClock(START)
    settings = Settings(database_url=str(engine.url), sidecar_poll_ms=50)
    store = SqlStore(engine)
    board = Board(store, "launch-board")
    await board.create("ops")
    sidecar = Sidecar(engine, settings, clock=clock)
    await sidecar.processor.step()  # first start: indexes what is there

    iso = DUE.isoformat().replace("+00:00", "Z")
    kept = await board.change("ops", lambda d: add_task(d, "直播彩排", assignee="王小明", due=iso))
    moved = await board.change("ops", lambda d: add_task(d, "海报终稿", assignee="周婷", due=iso))
    done = await board.change("ops", lambda d: add_task(d, "报价单", assignee="刘洋", due=iso))
    await sidecar.processor.step()
    async with engine.connect() as conn:
        rows = (await conn.execute(select(task_index).order_by(task_index.c.title))).all()
    assert {r.task_id: r.due_at.replace(tzinfo=UTC) for r in rows} == {
        kept: DUE,
        moved: DUE,
        done: DUE,
    }

    reminders = sidecar.reminders
    assert await reminders.step() == DUE - timedelta(hours=24)  # when to look next
    assert await reminders_of(engine) == []

    clock.set(DUE - timedelta(hours=24) + timedelta(minutes=1))
    await reminders.step()
    await reminders.step()
    soon = await reminders_of(engine)
    assert sorted(soon) == sorted(
        [("due_soon", kept, "王小明"), ("due_soon", moved, "周婷"), ("due_soon", done, "刘洋")]
    )

    # Moved two days later: its reminders start again from the new date. Finished: none.
    later = DUE + timedelta(days=2)
    await board.change(
        "周婷", lambda d: set_due(d, moved, later.isoformat().replace("+00:00", "Z"))
    )
    await board.change("刘洋", lambda d: complete_task(d, done))
    await sidecar.processor.step()

    clock.set(DUE - timedelta(minutes=59))
    await reminders.step()
    clock.set(DUE + timedelta(minutes=1))
    await reminders.step()
    await reminders.step()
    fired = await reminders_of(engine)
    assert fired[3:] == [("due_imminent", kept, "王小明"), ("overdue", kept, "王小明")]

    # A restarted sidecar knows the schedule from the database and repeats nothing.
    restarted = Sidecar(engine, settings, clock=clock)
    await restarted.processor.step()
    await restarted.reminders.step()
    assert await reminders_of(engine) == fired

    clock.set(later - timedelta(hours=23))
    await restarted.reminders.step()
    clock.set(later + timedelta(hours=1))
    await restarted.reminders.step()
    assert (await reminders_of(engine))[len(fired) :] == [
        ("due_soon", moved, "周婷"),
        ("overdue", moved, "周婷"),
    ]
    await store.close()


async def test_a_date_without_a_time_is_due_at_the_end_of_that_day(engine: AsyncEngine) -> None:
    clock = ManualClock(START)
    settings = Settings(database_url=str(engine.url), timezone="Asia/Shanghai")
    store = SqlStore(engine)
    board = Board(store, "dates")
    await board.create("ops")
    sidecar = Sidecar(engine, settings, clock=clock)
    await sidecar.processor.step()
    await board.change("ops", lambda d: add_task(d, "盘点", assignee="王小明", due="2026-12-02"))
    await sidecar.processor.step()
    async with engine.connect() as conn:
        due_at = (await conn.execute(select(task_index.c.due_at))).scalar_one()
    # The end of 2 December in Shanghai is 16:00 UTC that day.
    assert due_at.replace(tzinfo=UTC) == datetime(2026, 12, 2, 16, 0, tzinfo=UTC)
    await store.close()
