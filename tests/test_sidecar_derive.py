"""What the sidecar derives from real update rows: messages and mentions, editing bursts,
malformed boards (nothing for the junk, and the sidecar goes on), and a task projection that
matches the boards after random concurrent edits."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pycrdt import Array, Doc, Map, Text
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.persistence import migrate
from server.persistence.sql import SqlStore, create_engine
from server.persistence.store import UpdateRecord
from server.persistence.tables import events, notifications, task_index, updates, watches
from server.settings import Settings
from server.sidecar.service import Sidecar
from shared.board import (
    add_task,
    assign_task,
    complete_task,
    delete_task,
    move_task,
    read_board,
    set_due,
)
from shared.discussion import post_message


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


class Writer:
    """One document whose changes are appended to the update log, each with its author."""

    def __init__(self, store: SqlStore, doc_id: str, kind: str) -> None:
        self.store = store
        self.doc_id = doc_id
        self.kind = kind
        self.doc: Doc[Any] = Doc()

    async def create(self, author: str) -> None:
        await self.change(author, lambda d: d.get("meta", type=Map).update({"kind": self.kind}))

    async def change(self, author: str, edit: Any) -> Any:
        before = self.doc.get_state()
        result = edit(self.doc)
        await self.store.append(
            [UpdateRecord(self.doc_id, self.doc.get_update(before), "client", author)]
        )
        return result


async def notes(engine: AsyncEngine) -> list[tuple[str, str, str | None]]:
    """(kind, recipient, actor) of every notification, in order."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(events.c.kind, notifications.c.user_name, events.c.actor)
            .join(notifications, notifications.c.event_id == events.c.id)
            .order_by(notifications.c.id)
        )
        return [(r.kind, r.user_name, r.actor) for r in rows]


async def started(engine: AsyncEngine, **settings: Any) -> Sidecar:
    sidecar = Sidecar(engine, Settings(database_url=str(engine.url), **settings))
    await sidecar.processor.step()
    return sidecar


async def test_messages_and_mentions_reach_the_participants(engine: AsyncEngine) -> None:
    store = SqlStore(engine)
    talk = Writer(store, "launch-talk", "discussion")
    await talk.create("王小明")  # the discussion's owner takes part from the start
    sidecar = await started(engine)
    await talk.change("周婷", lambda d: post_message(d, "周婷", "直播间几点开始?"))
    await sidecar.processor.step()
    assert await notes(engine) == [("message", "王小明", "周婷")]
    # A reply that mentions someone: the mention for them, the message for the others.
    await talk.change(
        "王小明", lambda d: post_message(d, "王小明", "@刘洋 八点, 请确认", mentions=["刘洋"])
    )
    # A client writing someone else's name as author: the stored row's author counts.
    await talk.change("刘洋", lambda d: post_message(d, "王小明", "确认 👍"))
    await sidecar.processor.step()
    assert (await notes(engine))[1:] == [
        ("mentioned", "刘洋", "王小明"),
        ("message", "周婷", "王小明"),
        ("message", "周婷", "刘洋"),
        ("message", "王小明", "刘洋"),
    ]
    await store.close()


async def test_a_document_edited_in_bursts_is_news_once_a_burst(engine: AsyncEngine) -> None:
    store = SqlStore(engine)
    plan = Writer(store, "campaign-plan", "doc")
    await plan.create("王晓雯")
    async with engine.begin() as conn:
        await conn.execute(
            insert(watches).values(
                user_name="吴浩", doc_id="campaign-plan", created_at=datetime.now(UTC)
            )
        )
    sidecar = await started(engine, edit_burst_seconds=1.0)

    def typing(word: str) -> Any:
        return lambda d: d.get("text", type=Text).insert(len(d.get("text", type=Text)), word)

    for word in ("预算", "渠道", "时间表"):
        await plan.change("李俊杰", typing(word))
    await plan.change("王晓雯", typing("。"))  # her own edit: news to the watcher only
    await sidecar.processor.step()
    assert sorted(await notes(engine)) == [
        ("doc_changed", "吴浩", "李俊杰"),
        ("doc_changed", "吴浩", "王晓雯"),
        ("doc_changed", "王晓雯", "李俊杰"),
    ]
    for word in ("备注", "链接"):  # the same bursts go on: nothing new
        await plan.change("李俊杰", typing(word))
    await sidecar.processor.step()
    assert len(await notes(engine)) == 3
    await asyncio.sleep(1.2)  # a pause longer than the burst window: a new burst
    await plan.change("李俊杰", typing("附录"))
    await sidecar.processor.step()
    assert sorted((await notes(engine))[3:]) == [
        ("doc_changed", "吴浩", "李俊杰"),
        ("doc_changed", "王晓雯", "李俊杰"),
    ]
    await store.close()


async def test_junk_in_a_board_makes_no_notification_and_stops_nothing(
    engine: AsyncEngine,
) -> None:
    store = SqlStore(engine)
    board = Writer(store, "junk-board", "board")
    await board.create("ops")
    sidecar = await started(engine)

    def junk(doc: Doc[Any]) -> None:
        tasks = doc.get("tasks", type=Map)
        tasks["not-a-map"] = "just text"
        tasks["numbers"] = Map({"title": 42, "assignee": 7, "status": "sideways", "due": "soon"})
        tasks["array"] = Array([1, 2, 3])
        tasks["deep"] = Map({"title": "深", "assignee": Map({"name": "王小明"}), "due": 5})
        tasks["watchers"] = Map({"title": "w", "watchers": "王小明", "status": None})
        # Longer than any column holds (PostgreSQL refuses what does not fit).
        tasks["x" * 300] = Map({"title": "long id", "assignee": "周婷"})
        tasks["long"] = Map(
            {
                "title": "长" * 5000,
                "assignee": "y" * 300,
                "department": "z" * 100,
                "due": "2026-12-01" + " " * 60,
                "created_by": "c" * 300,
                "watchers": Array(["w" * 300, "王小明"]),
                "status": "in_progress",
            }
        )

    await board.change("ops", junk)
    await sidecar.processor.step()
    await sidecar.reminders.step()
    assert await notes(engine) == []
    # The sidecar goes on: the next real change is news.
    task = await board.change("ops", lambda d: add_task(d, "正常任务", assignee="周婷"))
    await board.change("ops", lambda d: assign_task(d, "numbers", "刘洋"))
    await sidecar.processor.step()
    assert sorted(await notes(engine)) == [("assigned", "刘洋", "ops"), ("assigned", "周婷", "ops")]
    async with engine.connect() as conn:
        rows = {r.task_id: r for r in await conn.execute(select(task_index))}
    assert rows[task].assignee == "周婷"
    assert rows["numbers"].due_at is None and rows["numbers"].status == "todo"
    await store.close()


async def test_the_task_list_matches_the_boards_after_random_edits(engine: AsyncEngine) -> None:
    rng = random.Random(17)
    store = SqlStore(engine)
    people = ["王小明", "周婷", "刘洋", None]
    boards = [Writer(store, f"board-{i}", "board") for i in range(3)]
    for board in boards:
        await board.create("ops")
    sidecar = await started(engine)
    # Three writers per board, editing their own copies and exchanging updates out of order.
    copies = {
        b.doc_id: [Doc(client_id=100 * i + j + 1) for j in range(3)] for i, b in enumerate(boards)
    }
    for board in boards:
        for copy in copies[board.doc_id]:
            copy.apply_update(board.doc.get_update())
    for step in range(600):
        board = rng.choice(boards)
        copy = rng.choice(copies[board.doc_id])
        before = copy.get_state()
        board_now, _ = read_board(copy)
        ids = [t.id for t in board_now.tasks]
        action = rng.random()
        if not ids or action < 0.25:
            add_task(copy, f"任务 {step} 🚀", assignee=rng.choice(people))
        elif action < 0.45:
            assign_task(copy, rng.choice(ids), rng.choice(people))
        elif action < 0.6:
            move_task(copy, rng.choice(ids), rng.choice(["todo", "in_progress", "done"]))
        elif action < 0.75:
            set_due(copy, rng.choice(ids), f"2026-12-{rng.randint(1, 28):02d}")
        elif action < 0.85:
            complete_task(copy, rng.choice(ids))
        else:
            delete_task(copy, rng.choice(ids))
        update = copy.get_update(before)
        author = f"writer-{copies[board.doc_id].index(copy)}"
        await store.append([UpdateRecord(board.doc_id, update, "client", author)])
        for other in copies[board.doc_id]:
            if other is not copy and rng.random() < 0.5:
                other.apply_update(update)
        if step % 50 == 0:
            await sidecar.processor.step()
    await sidecar.processor.step()
    await sidecar.processor.step()
    async with engine.connect() as conn:
        projected = {
            (r.doc_id, r.task_id): (r.title, r.status, r.assignee, r.due, r.priority)
            for r in await conn.execute(select(task_index))
        }
    expected = {}
    for board in boards:
        stored = await store.load(board.doc_id)
        merged = Doc()
        merged.apply_update(stored.merged())
        content, _ = read_board(merged)
        for task in content.tasks:
            expected[(board.doc_id, task.id)] = (
                task.title,
                task.status,
                task.assignee,
                task.due,
                task.priority,
            )
    assert len(expected) > 20
    assert projected == expected
    await store.close()


async def test_a_change_that_always_breaks_the_derivation_is_skipped_alone(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever goes wrong with one change (here a task the derivation cannot take), the
    sidecar narrows the failure down to it, skips it, and goes on with the others."""
    import server.sidecar.processor as processor
    from server.sidecar.clock import ManualClock

    real = processor.task_facts

    def breaks_on_poison(task: Any, *args: Any) -> Any:
        if task.title == "毒":
            raise RuntimeError("this task cannot be derived")
        return real(task, *args)

    monkeypatch.setattr(processor, "task_facts", breaks_on_poison)
    store = SqlStore(engine)
    board = Writer(store, "poisoned", "board")
    await board.create("ops")
    sidecar = Sidecar(
        engine,
        Settings(database_url=str(engine.url)),
        clock=ManualClock(datetime(2026, 12, 1, tzinfo=UTC)),
    )
    await sidecar.processor.step()
    for title, who in (("备货", "王小明"), ("毒", "周婷"), ("发货", "刘洋")):
        await board.change("ops", lambda d, t=title, w=who: add_task(d, t, assignee=w))
    async with engine.connect() as conn:
        last = (await conn.execute(select(func.max(updates.c.seq)))).scalar_one()
    running = asyncio.create_task(sidecar.processor.run())
    try:
        async with asyncio.timeout(30):
            while sidecar.processor.checkpoint != last:
                await asyncio.sleep(0.05)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert sorted(await notes(engine)) == [
        ("assigned", "刘洋", "ops"),
        ("assigned", "王小明", "ops"),
    ]
    assert any("breaks the sidecar every time; skipped" in r.message for r in caplog.records)
    await store.close()
