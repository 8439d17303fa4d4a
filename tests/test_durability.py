"""Durability: nothing acknowledged is lost across crashes, restarts, compaction and bad data.

Every test runs on SQLite and on PostgreSQL (the `database_url` fixture), against real server
processes where a server is involved, and reads the database directly to check what was kept.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
from conftest import ServerFactory, ServerProcess, upgrade_schema
from pycrdt import Array, Doc, Text
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from client.sync import SyncClient
from server.persistence.compaction import compact
from server.persistence.sql import SqlStore, create_engine
from server.persistence.store import StoredDoc, UpdateRecord
from server.persistence.tables import documents, snapshots, updates

# Bytes that no Yjs decoder accepts (checked in test_garbage_is_not_an_update).
GARBAGE = b"\xff" * 32


# -- helpers -------------------------------------------------------------------------------


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition"
) -> None:
    """Poll `predicate` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def open_store(url: str) -> AsyncIterator[SqlStore]:
    store = SqlStore(create_engine(url))
    try:
        yield store
    finally:
        await store.close()


async def load_stored(url: str, doc_id: str) -> StoredDoc:
    async with open_store(url) as store:
        return await store.load(doc_id)


def doc_of(stored: StoredDoc) -> Doc:
    """A pycrdt document holding everything stored for one document."""
    doc = Doc()
    state = stored.merged()
    if state:
        doc.apply_update(state)
    return doc


@dataclass(frozen=True)
class RowCounts:
    updates: int
    snapshots: int


async def count_rows(engine: AsyncEngine, doc_id: str) -> RowCounts:
    async with engine.connect() as conn:
        n_updates = await conn.scalar(
            select(func.count()).select_from(updates).where(updates.c.doc_id == doc_id)
        )
        n_snapshots = await conn.scalar(
            select(func.count()).select_from(snapshots).where(snapshots.c.doc_id == doc_id)
        )
    return RowCounts(int(n_updates or 0), int(n_snapshots or 0))


async def count_rows_at(url: str, doc_id: str) -> RowCounts:
    engine = create_engine(url)
    try:
        return await count_rows(engine, doc_id)
    finally:
        await engine.dispose()


async def dump_rows(url: str, doc_id: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every stored row of one document, for before/after comparisons."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            result: dict[str, list[tuple[Any, ...]]] = {}
            for name, table, key in (
                ("documents", documents, documents.c.id),
                ("updates", updates, updates.c.seq),
                ("snapshots", snapshots, snapshots.c.id),
            ):
                where = table.c.id if table is documents else table.c.doc_id
                rows = await conn.execute(select(table).where(where == doc_id).order_by(key))
                result[name] = [tuple(row) for row in rows]
            return result
    finally:
        await engine.dispose()


async def readyz(server: ServerProcess) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server.http_url}/readyz", timeout=5)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_persisted(server: ServerProcess, timeout: float = 30.0) -> None:
    """Wait until the server's writer has committed everything it was handed."""
    deadline = time.monotonic() + timeout
    while (await readyz(server))["pending_updates"] != 0:
        if time.monotonic() > deadline:
            pytest.fail("the server did not commit its pending updates in time")
        await asyncio.sleep(0.05)


CLEAN_STOP = "tandem stopped; every update committed: True"


async def stop_cleanly(server: ServerProcess) -> None:
    """SIGTERM; the server must exit having committed every update it was handed."""
    stops = server.log().count(CLEAN_STOP)
    code = await server.stop()
    # uvicorn re-raises the signal it shut down on, so a clean stop may end with -SIGTERM.
    assert code in (0, -signal.SIGTERM), f"exit code {code}"
    assert server.log().count(CLEAN_STOP) == stops + 1, server.log()[-2000:]


async def closed_with(client: SyncClient, timeout: float = 10.0) -> int | None:
    """Run a non-reconnecting client until the server ends its connection; the close code."""
    client.start()
    task = client._task
    assert task is not None
    async with asyncio.timeout(timeout):
        await task
    return client.close_code


def tokens(doc: Doc) -> list[str]:
    return [str(item) for item in doc.get("tokens", type=Array)]


def typed_updates(count: int, width: int = 5) -> tuple[list[bytes], str]:
    """`count` small updates, one per transaction, each appending a token to a Y.Text."""
    doc = Doc()
    text = doc.get("text", type=Text)
    captured: list[bytes] = []
    doc.observe(lambda event: captured.append(event.update))
    for i in range(count):
        text += f"{i:0{width}d},"  # one transaction each
    assert len(captured) == count
    return captured, str(text)


# -- 1. kill -9 while ten clients type --------------------------------------------------------


@pytest.mark.chaos
async def test_kill_9_while_ten_clients_type_loses_and_duplicates_nothing(
    database_url: str, make_server: ServerFactory
) -> None:
    doc_id = "chaos-doc"
    server = await make_server(database_url)
    port = server.port
    clients = [SyncClient(server.ws_url, doc_id) for _ in range(10)]
    typed: list[list[str]] = [[] for _ in clients]
    stop_typing = asyncio.Event()

    async def type_tokens(i: int) -> None:
        array = clients[i].doc.get("tokens", type=Array)
        for n in range(3000):  # bounded; stopped by the event long before
            if stop_typing.is_set():
                return
            token = f"c{i}-{n}"
            array.append(token)
            typed[i].append(token)
            await asyncio.sleep(0.01)

    def typed_at_least(counts: list[int], more: int) -> Callable[[], bool]:
        return lambda: all(len(t) >= c + more for t, c in zip(typed, counts, strict=True))

    for client in clients:
        client.start()
    typists: list[asyncio.Task[None]] = []
    try:
        for client in clients:
            await client.wait_synced()
        typists = [asyncio.create_task(type_tokens(i)) for i in range(len(clients))]

        # Typing is under way and reaching the other clients through the server.
        await wait_until(
            lambda: all(len(tokens(c.doc)) >= 200 for c in clients), what="edits to spread"
        )
        server.kill()
        await wait_until(
            lambda: not any(c.connected.is_set() for c in clients), what="clients to notice"
        )
        # Edits made while the server is down stay in the clients' documents.
        offline_from = [len(t) for t in typed]
        await wait_until(typed_at_least(offline_from, 20), what="offline typing")

        await server.start()
        assert server.port == port
        await wait_until(
            lambda: all(c.synced.is_set() for c in clients), timeout=30, what="reconnects"
        )
        online_from = [len(t) for t in typed]
        await wait_until(typed_at_least(online_from, 20), what="typing after the restart")
    finally:
        stop_typing.set()
        await asyncio.gather(*typists)

    try:
        expected = {token for per_client in typed for token in per_client}
        assert len(expected) == sum(len(t) for t in typed)
        await wait_until(
            lambda: all(set(tokens(c.doc)) == expected for c in clients),
            timeout=30,
            what="every client to converge",
        )
        for client in clients:
            seen = tokens(client.doc)
            assert len(seen) == len(expected), "a token is duplicated"
        # Each client's own tokens keep the order it typed them in.
        order = tokens(clients[0].doc)
        for per_client in typed:
            mine = set(per_client)
            assert [t for t in order if t in mine] == per_client
        assert all(tokens(c.doc) == order for c in clients)
    finally:
        for client in clients:
            await client.close()

    async with SyncClient(server.ws_url, doc_id) as fresh:
        await fresh.wait_synced()
        assert tokens(fresh.doc) == order

    await stop_cleanly(server)
    stored = tokens(doc_of(await load_stored(database_url, doc_id)))
    assert len(stored) == len(expected)
    assert stored == order


# -- 2. twenty thousand updates: compaction, and serving from snapshot plus tail -------------


async def test_20000_updates_are_compacted_and_served_from_snapshot_plus_tail(
    database_url: str, make_server: ServerFactory
) -> None:
    doc_id = "long-history"
    count = 20_000
    threshold = 50
    server = await make_server(
        database_url,
        TANDEM_COMPACT_AFTER_UPDATES=str(threshold),
        TANDEM_COMMIT_DELAY_MS="5",
    )
    expected = "".join(f"{i:05d}," for i in range(count))
    async with (
        SyncClient(server.ws_url, doc_id) as typist,
        SyncClient(server.ws_url, doc_id) as observer,
    ):
        await typist.wait_synced()
        await observer.wait_synced()
        text = typist.doc.get("text", type=Text)
        seen = observer.doc.get("text", type=Text)
        for i in range(count):
            text += f"{i:05d},"  # one transaction, one update message
            if i % 100 == 99:
                await asyncio.sleep(0.002)  # paced: about 200 bursts of 100 keystrokes
        assert str(text) == expected
        # The observer only sees an edit after the server applied it and queued it to store.
        await wait_until(lambda: len(seen) == len(expected), timeout=60, what="replication")
        assert str(seen) == expected
    await wait_persisted(server)
    await stop_cleanly(server)  # also waits for running compactions

    rows = await count_rows_at(database_url, doc_id)
    assert rows.snapshots >= 1, "compaction never ran"
    # Compaction starts at `threshold` rows; rows committed while the last one ran may stay.
    assert rows.updates < 2 * threshold, rows
    stored = await load_stored(database_url, doc_id)
    assert stored.snapshot is not None
    assert len(stored.updates) == rows.updates
    assert str(doc_of(stored).get("text", type=Text)) == expected

    await server.start()  # the room is loaded from the snapshot and the tail
    assert (await readyz(server))["rooms"] == 0
    async with SyncClient(server.ws_url, doc_id) as fresh:
        await fresh.wait_synced(timeout=30)
        assert str(fresh.doc.get("text", type=Text)) == expected


async def test_store_compacts_20000_rows_and_keeps_a_pending_update(database_url: str) -> None:
    doc_id = "store-level"
    ups, typed_text = typed_updates(20_000)

    # A second author edits on top of an update ("HELD") that never reaches the log before
    # compaction; the edit depending on it ("DEP") is stored and stays pending until it does.
    other = Doc()
    other.apply_update(ups[0])
    other_text = other.get("text", type=Text)
    other_updates: list[bytes] = []
    other.observe(lambda event: other_updates.append(event.update))
    other_text.insert(0, "HELD ")
    other_text.insert(5, "DEP ")
    held, dependent = other_updates

    # Out of causal order: each pair of neighbours swapped, the dependent edit in the middle.
    ordered = list(ups)
    for i in range(0, len(ordered) - 1, 2):
        ordered[i], ordered[i + 1] = ordered[i + 1], ordered[i]
    ordered.insert(len(ordered) // 2, dependent)
    records = [UpdateRecord(doc_id, data, "ws", "writer") for data in ordered]

    source = Doc()
    for data in (*ups, held, dependent):
        source.apply_update(data)
    full_text = str(source.get("text", type=Text))
    assert full_text.startswith("HELD DEP 00000,") and len(full_text) == len(typed_text) + 9

    await upgrade_schema(database_url)
    async with open_store(database_url) as store:
        for i in range(0, len(records), 1000):
            await store.append(records[i : i + 1000])
        assert await count_rows(store.engine, doc_id) == RowCounts(len(records), 0)

        result = await compact(store, doc_id)
        assert result is not None
        assert result.merged_rows == len(records)
        assert await count_rows(store.engine, doc_id) == RowCounts(0, 1)

        stored = await store.load(doc_id)
        assert stored.snapshot is not None and stored.updates == []
        # Without HELD, DEP cannot be integrated yet: the document shows the typed text only.
        assert str(doc_of(stored).get("text", type=Text)) == typed_text

        # A second compaction with nothing new does nothing.
        assert await compact(store, doc_id) is None

        # HELD arrives late: the snapshot still carries DEP, so both show up.
        await store.append([UpdateRecord(doc_id, held, "ws", "other")])
        restored = doc_of(await store.load(doc_id))
        assert str(restored.get("text", type=Text)) == full_text
        empty = Doc().get_update()
        assert source.get_update(restored.get_state()) == empty
        assert restored.get_update(source.get_state()) == empty

        # And it survives another compaction, now with nothing pending.
        result = await compact(store, doc_id)
        assert result is not None and result.merged_rows == 1
        assert await count_rows(store.engine, doc_id) == RowCounts(0, 2)
        again = doc_of(await store.load(doc_id))
        assert str(again.get("text", type=Text)) == full_text


# -- 3. graceful shutdown flushes the group-commit window ------------------------------------


async def test_sigterm_commits_updates_still_in_the_commit_window(
    database_url: str, make_server: ServerFactory
) -> None:
    doc_id = "shutdown"
    server = await make_server(database_url, TANDEM_COMMIT_DELAY_MS="2000")
    edits = [f"edit-{i}" for i in range(50)]
    client = SyncClient(server.ws_url, doc_id, reconnect=False)
    observer = SyncClient(server.ws_url, doc_id, reconnect=False)
    async with client, observer:
        await client.wait_synced()
        await observer.wait_synced()
        array = client.doc.get("tokens", type=Array)
        for edit in edits:
            array.append(edit)
        await wait_until(lambda: tokens(observer.doc) == edits, what="the server to apply")
        # Applied and queued. The first edit came alone and was committed at once; the
        # rest came in a stream and wait in the window, which is two seconds long.
        assert (await readyz(server))["pending_updates"] > 0
        assert (await count_rows_at(database_url, doc_id)).updates <= 1
        # SIGTERM with clients still connected.
        await stop_cleanly(server)
    assert tokens(doc_of(await load_stored(database_url, doc_id))) == edits


# -- 4. a load that fails never writes a blank state ------------------------------------------


def test_garbage_is_not_an_update() -> None:
    with pytest.raises(ValueError):
        Doc().apply_update(GARBAGE)


async def seed(url: str, doc_id: str, words: list[str], *, compact_after: int) -> None:
    """Store one update row per word, compacting after the first `compact_after` rows."""
    doc = Doc()
    array = doc.get("tokens", type=Array)
    captured: list[bytes] = []
    doc.observe(lambda event: captured.append(event.update))
    async with open_store(url) as store:
        for n, word in enumerate(words, start=1):
            array.append(word)
            await store.append([UpdateRecord(doc_id, captured[-1], "ws", "seed")])
            if n == compact_after:
                assert await compact(store, doc_id) is not None


@pytest.mark.parametrize("damage", ["snapshot", "snapshot-with-tail", "update", "truncated"])
async def test_a_document_that_fails_to_load_is_refused_and_left_untouched(
    database_url: str, make_server: ServerFactory, damage: str
) -> None:
    broken, healthy = "broken", "healthy"
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    await upgrade_schema(database_url)
    await seed(database_url, broken, words, compact_after=5 if damage == "snapshot" else 3)
    await seed(database_url, healthy, words, compact_after=3)

    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            if damage.startswith("snapshot"):
                changed = await conn.execute(
                    update(snapshots).where(snapshots.c.doc_id == broken).values(state=GARBAGE)
                )
            else:
                tail = await conn.scalar(
                    select(func.min(updates.c.seq)).where(updates.c.doc_id == broken)
                )
                data = await conn.scalar(select(updates.c.data).where(updates.c.seq == tail))
                assert tail is not None and data is not None
                bad = GARBAGE if damage == "update" else bytes(data)[: len(data) // 2]
                changed = await conn.execute(
                    update(updates).where(updates.c.seq == tail).values(data=bad)
                )
            assert changed.rowcount == 1
    finally:
        await engine.dispose()
    before = await dump_rows(database_url, broken)
    assert bool(before["updates"]) == (damage != "snapshot")

    server = await make_server(database_url)
    for _ in range(2):  # a failed load is not cached as an empty room
        refused = SyncClient(server.ws_url, broken, reconnect=False)
        refused.doc.get("tokens", type=Array).append("written offline")
        assert await closed_with(refused) == 1011
        assert not refused.synced.is_set()
    assert (await readyz(server))["rooms"] == 0

    async with (
        SyncClient(server.ws_url, healthy) as client,
        SyncClient(server.ws_url, healthy) as observer,
    ):
        await client.wait_synced()
        await observer.wait_synced()
        assert tokens(client.doc) == words
        client.doc.get("tokens", type=Array).append("zeta")
        await wait_until(lambda: tokens(observer.doc) == [*words, "zeta"], what="the edit")
    await wait_persisted(server)
    await stop_cleanly(server)

    assert await dump_rows(database_url, broken) == before
    assert tokens(doc_of(await load_stored(database_url, healthy))) == [*words, "zeta"]


async def test_the_quiet_main_loop_keeps_the_date_fresh_and_stops_on_sigterm(
    server: ServerProcess,
) -> None:
    # The server's main loop ticks once a second (not uvicorn's ten): the Date header must
    # still move on, and SIGTERM must still stop it cleanly.
    dates = []
    async with httpx.AsyncClient() as http:
        for _ in range(2):
            response = await http.get(f"{server.http_url}/readyz")
            dates.append(parsedate_to_datetime(response.headers["date"]))
            await asyncio.sleep(2.2)
    assert abs((datetime.now(UTC) - dates[1]).total_seconds()) < 5
    assert 1 <= (dates[1] - dates[0]).total_seconds() <= 4
    await stop_cleanly(server)
