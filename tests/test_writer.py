"""The group-commit writer and the room registry, over the in-memory store."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import Silent, small_updates
from prometheus_client import REGISTRY
from pycrdt import Doc, Map, Text

from server.origin import Origin
from server.persistence.memory import MemoryStore
from server.persistence.store import UpdateRecord
from server.persistence.writer import Writer
from server.rooms.peer import Peer
from server.rooms.registry import LoadFailed, Registry

WS = Origin("ws", "ana")


def text_of(state: bytes) -> str:
    doc: Doc[Any] = Doc()
    doc.apply_update(state)
    return str(doc.get("text", type=Text))


@contextlib.asynccontextmanager
async def committing(writer: Writer) -> AsyncIterator[Writer]:
    """The writer with its commit loop running, stopped on the way out."""
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        task.cancel()


@pytest.fixture
async def writer() -> Any:
    store = MemoryStore()
    w = Writer(store, delay=0.01, compact_after_updates=10_000)
    task = asyncio.create_task(w.run())
    yield w
    task.cancel()


async def test_group_commit_merges_a_burst_into_few_rows(writer: Writer) -> None:
    updates = small_updates(300)
    for update in updates:
        writer.add("plan", update, WS)
    writer.add("plan", updates[0], Origin("rest", "bo"))
    await writer.flush("plan", timeout=5)
    store = writer.store
    assert isinstance(store, MemoryStore)
    rows = store.rows["plan"]
    assert len(rows) <= 4  # one row per (document, origin, author) per commit
    assert {(r.origin, r.author) for _, r in rows} == {("ws", "ana"), ("rest", "bo")}
    stored = await store.load("plan")
    assert text_of(stored.merged()) == "".join(f"{i % 10}" for i in range(300))


async def test_a_lone_update_is_committed_at_once_a_stream_waits_for_the_window() -> None:
    store = MemoryStore()
    w = Writer(store, delay=0.5)
    async with committing(w):
        first, *stream = small_updates(6)
        w.add("plan", first, WS)
        # Alone after a quiet spell: committed by `add` itself, not half a second on.
        assert len(store.rows["plan"]) == 1 and w.pending() == 0
        await w.flush("plan", timeout=0.2)
        for update in stream:
            w.add("plan", update, WS)
            await asyncio.sleep(0.01)
        # A stream: it gathers in the window, then goes in one transaction, as one row.
        await asyncio.sleep(0.1)
        assert w.pending("plan") == 5 and len(store.rows["plan"]) == 1
        await w.flush("plan", timeout=2)
        assert len(store.rows["plan"]) == 2
        assert text_of((await store.load("plan")).merged()) == "012345"


async def test_a_burst_of_full_batches_is_committed_without_waiting_a_window_each() -> None:
    store = MemoryStore()
    w = Writer(store, delay=1, max_batch=10)
    async with committing(w):
        await asyncio.sleep(0)  # the commit loop waits for work
        updates = small_updates(35)
        w.add("plan", updates[0], WS)  # alone: committed at once
        for update in updates[1:]:
            w.add("plan", update, WS)
        # 34 queued: three full batches go at once, only the last 4 wait for the window.
        await asyncio.sleep(0.2)
        assert w.pending("plan") == 4
        await w.flush("plan", timeout=10)
        assert text_of((await store.load("plan")).merged()) == "".join(
            f"{i % 10}" for i in range(35)
        )


async def test_flush_ends_the_commit_window_early() -> None:
    store = MemoryStore()
    w = Writer(store, delay=30)
    async with committing(w):
        first, *stream = small_updates(4)
        w.add("plan", first, WS)  # alone: committed at once
        for update in stream:
            w.add("plan", update, WS)  # a stream: waits in a 30 s window
        await asyncio.sleep(0.05)
        assert w.pending("plan") == 3
        await w.flush("plan", timeout=2)  # does not wait the window out
        assert text_of((await store.load("plan")).merged()) == "0123"
        # The loop goes on: the next stream waits in a window of its own again.
        w.add("plan", small_updates(5)[4], WS)
        await asyncio.sleep(0.05)
        assert w.pending("plan") == 1


async def test_a_lone_update_the_store_cannot_take_now_is_queued_and_committed() -> None:
    store = MemoryStore()
    store.fail_appends = True  # down when the update comes: `add` queues it
    w = Writer(store, delay=0.5)
    async with committing(w):
        (only,) = small_updates(1)
        w.add("plan", only, WS)
        assert w.pending("plan") == 1 and "plan" not in store.rows
        store.fail_appends = False
        await w.flush("plan", timeout=5)
        assert text_of((await store.load("plan")).merged()) == "0"


async def test_updates_that_do_not_merge_are_stored_apart(writer: Writer) -> None:
    # Not a pycrdt update: merging fails, and the rows are stored one each, not dropped.
    writer.add("plan", b"\x01\x02\x03", WS)
    writer.add("plan", b"\x04\x05\x06", WS)
    await writer.flush("plan", timeout=5)
    store = writer.store
    assert isinstance(store, MemoryStore)
    assert [r.data for _, r in store.rows["plan"]] == [b"\x01\x02\x03", b"\x04\x05\x06"]


async def test_failed_commit_is_retried_and_flush_waits(writer: Writer) -> None:
    store = writer.store
    assert isinstance(store, MemoryStore)
    store.fail_appends = True
    for update in small_updates(5):
        writer.add("plan", update, WS)
    with pytest.raises(TimeoutError):
        await writer.flush("plan", timeout=0.3)
    assert writer.pending("plan") == 5
    assert not writer.healthy
    # The batch being retried is still uncommitted, and /metrics says so.
    assert REGISTRY.get_sample_value("tandem_persist_pending") == 5
    store.fail_appends = False
    await writer.flush("plan", timeout=5)
    assert writer.pending("plan") == 0 and writer.healthy
    assert REGISTRY.get_sample_value("tandem_persist_pending") == 0
    assert text_of((await store.load("plan")).merged()) == "01234"


async def test_compaction_triggers_after_threshold() -> None:
    store = MemoryStore()
    writer = Writer(store, delay=0.001, max_batch=1, compact_after_updates=20)
    task = asyncio.create_task(writer.run())
    writer.track("plan", 0, 0)
    try:
        for update in small_updates(50):
            writer.add("plan", update, WS)
        await writer.flush("plan", timeout=5)
        await writer.close(timeout=5)
    finally:
        task.cancel()
    assert "plan" in store.snapshots
    assert len(store.rows["plan"]) < 20
    assert text_of((await store.load("plan")).merged()) == "".join(f"{i % 10}" for i in range(50))


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.loads = 0
        self.gate = asyncio.Event()

    async def load(self, doc_id: str) -> Any:
        self.loads += 1
        await self.gate.wait()
        return await super().load(doc_id)


async def test_concurrent_joins_share_one_load() -> None:
    store = CountingStore()
    await store.append([])
    writer = Writer(store)
    registry = Registry(store, writer, grace=0.05)
    joins = [asyncio.create_task(registry.acquire("plan")) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert store.loads == 1 and not any(j.done() for j in joins)
    store.gate.set()
    rooms = await asyncio.gather(*joins)
    assert all(room is rooms[0] for room in rooms)
    for _ in rooms:
        registry.release("plan")
    await asyncio.sleep(0.2)
    assert "plan" not in registry.rooms  # unloaded after the grace period


async def test_a_deletion_during_a_load_marks_the_room_it_produces() -> None:
    """The load may have read the document just before the deletion was committed: the
    room it produces is marked deleted all the same, and a connected peer is closed."""
    store = CountingStore()
    registry = Registry(store, Writer(store), grace=0.05)
    joining = asyncio.create_task(registry.acquire("plan", warm=False))
    await asyncio.sleep(0.01)
    registry.deleted("plan", "document was deleted")  # no room yet: the load is under way
    store.gate.set()
    room = await joining
    assert room.deleted
    closed: list[tuple[int, str]] = []
    peer = Peer(Silent())
    peer.close = lambda code, reason: closed.append((code, reason))
    room.join(peer)
    registry.deleted("plan", "document was deleted")  # the room is loaded now
    assert closed == [(4404, "document was deleted")]
    registry.release("plan")


async def test_failed_load_leaves_no_room_and_can_be_retried() -> None:
    store = MemoryStore()
    store.fail_loads = True
    registry = Registry(store, Writer(store), grace=0.05)
    with pytest.raises(LoadFailed):
        await registry.acquire("plan")
    assert registry.rooms == {}
    store.fail_loads = False
    room = await registry.acquire("plan")
    assert registry.rooms == {"plan": room}
    registry.release("plan")


async def test_room_with_unsaved_updates_stays_loaded() -> None:
    store = MemoryStore()
    writer = Writer(store, delay=0.01)
    task = asyncio.create_task(writer.run())
    registry = Registry(store, writer, grace=0.01)
    try:
        room = await registry.acquire("plan")
        store.fail_appends = True
        room.apply_update(small_updates(1)[0], WS)
        registry.release("plan")
        await asyncio.sleep(0.3)
        assert "plan" in registry.rooms  # the update is not committed yet
        store.fail_appends = False
        await writer.flush("plan", timeout=5)
        assert text_of((await store.load("plan")).merged()) == "0"
    finally:
        await registry.close()
        task.cancel()


async def test_unloading_a_room_folds_its_update_rows_into_a_snapshot() -> None:
    store = MemoryStore()
    writer = Writer(store, delay=0.001, max_batch=1, settle_after_updates=5)
    task = asyncio.create_task(writer.run())
    registry = Registry(store, writer, grace=0.01)
    try:
        room = await registry.acquire("plan")
        for update in small_updates(8):
            room.apply_update(update, WS)
        await writer.flush("plan", timeout=5)
        assert len(store.rows["plan"]) == 8 and "plan" not in store.snapshots
        registry.release("plan")
        for _ in range(100):
            await asyncio.sleep(0.02)
            if "plan" not in registry.rooms:
                break
        assert "plan" not in registry.rooms
        await writer.close(timeout=5)  # waits for the compaction the unload started
        assert "plan" in store.snapshots and not store.rows["plan"]
        assert text_of((await store.load("plan")).merged()) == "01234567"

        # A small tail is left as it is: loading it costs less than a snapshot.
        room = await registry.acquire("plan")
        room.apply_update(small_updates(9)[8], WS)
        registry.release("plan")
        await asyncio.sleep(0.3)
        assert "plan" not in registry.rooms
        assert len(store.rows["plan"]) == 1
        assert text_of((await store.load("plan")).merged()) == "012345678"
    finally:
        await registry.close()
        task.cancel()


async def test_a_sync_session_may_get_a_cold_room_and_others_a_built_one() -> None:
    store = MemoryStore()
    writer = Writer(store, delay=0.01)
    await store.append([])
    doc: Doc[Any] = Doc()
    doc.get("text", type=Text).insert(0, "stored")
    await store.append([UpdateRecord("plan", doc.get_update(), "ws", None)])
    registry = Registry(store, writer, grace=0.05)
    room = await registry.acquire("plan", warm=False)
    assert room.cold
    assert await registry.acquire("plan") is room and not room.cold
    registry.release("plan")
    registry.release("plan")
    await registry.close()


async def test_server_side_edit_reaches_peers_and_log() -> None:
    store = MemoryStore()
    writer = Writer(store, delay=0.01)
    task = asyncio.create_task(writer.run())
    registry = Registry(store, writer, grace=0.05)
    try:
        async with registry.use("plan") as room:
            room.edit(Origin("rest", "bo"), lambda doc: doc.get("text", type=Text).insert(0, "hi"))
        await writer.flush("plan", timeout=5)
        ((_, row),) = store.rows["plan"]
        assert (row.origin, row.author) == ("rest", "bo")
        assert text_of(row.data) == "hi"
    finally:
        await registry.close()
        task.cancel()


def map_updates(n: int) -> list[bytes]:
    """One update per new map entry: what merges slowest in one call."""
    doc: Doc[Any] = Doc(client_id=9)
    out: list[bytes] = []
    doc.observe(lambda event: out.append(event.update))
    entries = doc.get("log", type=Map)
    for i in range(n):
        entries[f"k{i}"] = i
    return out


async def test_a_big_batch_is_merged_without_holding_the_event_loop() -> None:
    """pycrdt's merge holds the GIL and grows faster than linearly with the number of
    updates (4000 map entries take about 150 ms in one call): a burst's batch is merged in
    steps, so the event loop never waits long for the commit, and the row is the same."""
    updates = map_updates(4000)
    writer = Writer(MemoryStore(), delay=0.01, compact_after_updates=10_000)
    gaps: list[float] = []
    loop = asyncio.get_running_loop()

    async def tick() -> None:
        while True:
            before = loop.time()
            await asyncio.sleep(0.001)
            gaps.append(loop.time() - before)

    async with committing(writer):
        for update in updates:
            writer.add("burst", update, WS)
        ticking = asyncio.create_task(tick())
        await asyncio.sleep(0.005)
        gaps.clear()
        await writer.flush("burst", timeout=30)
        ticking.cancel()
    store = writer.store
    assert isinstance(store, MemoryStore)
    stored: Doc[Any] = Doc()
    stored.apply_update((await store.load("burst")).merged())
    assert dict(stored.get("log", type=Map)) == {f"k{i}": i for i in range(4000)}
    assert len(store.rows["burst"]) <= 2  # the first alone, at once; the rest merged
    assert max(gaps) < 0.05, f"the event loop waited {max(gaps) * 1000:.0f} ms"
