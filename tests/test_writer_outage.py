"""The writer while the database is down: updates wait in a bounded queue, the outage is
logged once, and a retried commit is stored once.

The stores fail for real: an SQLite database whose folder is moved away (no connection to it
can be opened until it is back), or a real store whose commit goes through but whose answer
is lost, as when a connection drops during COMMIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import upgrade_schema
from helpers import Silent, small_updates
from pycrdt import Doc, Text
from sqlalchemy import text

from server.origin import Origin
from server.persistence.sql import SqlStore, create_engine
from server.persistence.store import StoredDoc, UpdateRecord
from server.persistence.writer import RECORD_OVERHEAD, Writer
from server.rooms.peer import Peer
from server.rooms.registry import Registry
from server.rooms.room import RejectedFrame
from shared.protocol import encode_sync_step2, encode_update

WS = Origin("ws", "ana")


class Outage:
    """Makes an SQLite database unreachable for real: its folder is moved away, so opening a
    connection fails ("unable to open database file") until it is moved back."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.away = folder.with_name(folder.name + ".away")

    def start(self) -> None:
        self.folder.rename(self.away)

    def end(self) -> None:
        self.away.rename(self.folder)


@contextlib.asynccontextmanager
async def sqlite_store(tmp_path: Path) -> AsyncIterator[tuple[SqlStore, Outage, str]]:
    """A migrated SQLite store whose update-log connections are not opened yet."""
    folder = tmp_path / "db"
    url = f"sqlite+aiosqlite:///{folder / 'tandem.db'}"
    await upgrade_schema(url)
    store = SqlStore(create_engine(url))
    try:
        yield store, Outage(folder), url
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def committing(writer: Writer) -> AsyncIterator[Writer]:
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def text_of(stored: StoredDoc) -> str:
    doc: Doc[Any] = Doc()
    state = stored.merged()
    if state:
        doc.apply_update(state)
    return str(doc.get("text", type=Text))


async def rows_of(url: str, doc_id: str) -> list[bytes]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(
                text("SELECT data FROM updates WHERE doc_id = :d ORDER BY seq"), {"d": doc_id}
            )
            return [bytes(row[0]) for row in result]
    finally:
        await engine.dispose()


def persistence_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "tandem.persistence" and r.levelno == level
    ]


async def test_an_outage_keeps_updates_in_order_logs_once_and_stores_them_when_it_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tandem.persistence")
    updates = small_updates(40)
    async with sqlite_store(tmp_path) as (store, outage, url):
        writer = Writer(store, delay=0.01)
        async with committing(writer):
            outage.start()
            # Typing spread over 1.5 s: the commit fails and is retried several times.
            for update in updates:
                writer.add("plan", update, WS)
                await asyncio.sleep(1.5 / len(updates))
            assert not writer.healthy and writer.state() == "retrying"
            assert writer.uncommitted() == len(updates)
            assert writer.pending_bytes() == sum(len(u) + RECORD_OVERHEAD for u in updates)
            with pytest.raises(TimeoutError):
                await writer.flush("plan", timeout=0.2)
            outage.end()
            await writer.flush("plan", timeout=10)
            assert writer.healthy and writer.state() == "ok"
            assert writer.uncommitted() == 0 and writer.pending_bytes() == 0
        assert text_of(await store.load("plan")) == "".join(f"{i % 10}" for i in range(40))
    # Every update is stored once: no two rows hold the same bytes.
    rows = await rows_of(url, "plan")
    assert len(rows) == len(set(rows))
    warnings = persistence_records(caplog, logging.WARNING)
    assert len(warnings) == 1, warnings
    assert "database is unavailable" in warnings[0]
    infos = [m for m in persistence_records(caplog, logging.INFO) if "available again" in m]
    assert len(infos) == 1 and "40 updates" in infos[0], infos


class LostAnswer:
    """A real store whose first commit is made but whose answer never arrives (a connection
    that drops during COMMIT): the writer cannot tell whether it was stored."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.lost = 0

    async def append(
        self, records: Sequence[UpdateRecord], *, key: int | None = None, again: bool = False
    ) -> None:
        await self.store.append(records, key=key, again=again)
        if self.lost == 0:
            self.lost += 1
            raise ConnectionResetError("connection lost during COMMIT")

    def append_now(self, records: Sequence[UpdateRecord]) -> bool:
        return False  # as PostgreSQL: every commit goes through `append`

    async def load(self, doc_id: str) -> StoredDoc:
        return await self.store.load(doc_id)

    async def replace(self, *args: Any) -> int:
        return await self.store.replace(*args)

    async def ping(self) -> None:
        await self.store.ping()

    async def close(self) -> None:
        await self.store.close()


async def test_a_commit_whose_answer_was_lost_is_not_stored_twice(database_url: str) -> None:
    await upgrade_schema(database_url)
    store = LostAnswer(SqlStore(create_engine(database_url)))
    writer = Writer(store, delay=0.01)
    updates = small_updates(5)
    try:
        async with committing(writer):
            for update in updates:
                writer.add("plan", update, WS)
            await writer.flush("plan", timeout=10)
        assert store.lost == 1  # the first commit's answer was lost, and it was retried
        assert text_of(await store.load("plan")) == "01234"
    finally:
        await store.close()
    rows = await rows_of(database_url, "plan")
    assert len(rows) == 1, f"{len(rows)} rows for one commit: the retry stored it again"


def frame_of(update: bytes) -> bytes:
    return encode_update(update)


async def test_past_the_bound_a_client_update_is_refused_with_1013_before_it_applies(
    tmp_path: Path,
) -> None:
    bound = 600
    async with sqlite_store(tmp_path) as (store, outage, _):
        writer = Writer(store, delay=0.01, max_pending_bytes=bound)
        registry = Registry(store, writer, grace=60)
        async with committing(writer):
            room = await registry.acquire("plan")
            typist, reader = Peer(Silent(), user="ana"), Peer(Silent(), user="bo")
            room.join(typist)
            room.join(reader)
            outage.start()
            client: Doc[Any] = Doc(client_id=11)
            client_text = client.get("text", type=Text)
            accepted = ""
            refused: bytes | None = None
            for i in range(500):
                before = client.get_state()
                client_text += f"<{i}>"
                update = client.get_update(before)
                try:
                    room.receive(typist, frame_of(update))
                except RejectedFrame as exc:
                    assert exc.code == 1013, exc.reason
                    assert "try again" in exc.reason
                    refused = update
                    break
                accepted += f"<{i}>"
            assert refused is not None, "the writer's bound never refused an update"
            # Refused before it was applied: the document holds only what was accepted.
            assert str(room.doc.get("text", type=Text)) == accepted
            assert 0 < writer.pending_bytes() <= bound
            assert writer.state() in ("retrying", "full")
            assert not writer.available()
            # A client that brings nothing new (its sync step 2 only repeats what the room
            # has, deletions included) still gets through, so readers can reconnect.
            before = client.get_state()
            del client_text[0:1]
            room.receive(typist, frame_of(client.get_update(before)))
            repeat: Doc[Any] = Doc(client_id=12)
            repeat.apply_update(room.doc.get_update())
            room.receive(reader, encode_sync_step2(repeat.get_update(room.state_vector())))
            pending = writer.uncommitted()
            outage.end()
            await writer.flush(timeout=10)
            assert pending and writer.uncommitted() == 0 and writer.pending_bytes() == 0
            # Everything accepted is stored; once drained, the refused update is taken.
            assert text_of(await store.load("plan")) == accepted[1:]
            room.receive(typist, frame_of(refused))
            await writer.flush(timeout=10)
            assert text_of(await store.load("plan")) == str(client_text)
            registry.release("plan")
        await registry.close()


async def test_without_a_bound_nothing_is_refused(tmp_path: Path) -> None:
    async with sqlite_store(tmp_path) as (store, outage, _):
        writer = Writer(store, delay=0.01, max_pending_bytes=0)
        registry = Registry(store, writer, grace=60)
        async with committing(writer):
            room = await registry.acquire("plan")
            typist = Peer(Silent(), user="ana")
            room.join(typist)
            outage.start()
            for update in small_updates(200):
                room.receive(typist, frame_of(update))
            assert writer.uncommitted() == 200 and writer.full(10**9) is False
            outage.end()
            await writer.flush(timeout=10)
            registry.release("plan")
        await registry.close()
