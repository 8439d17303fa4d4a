"""The durable acknowledgement: a connection opened with `?durable=1` is told (MSG_STORED,
a state vector) what of the document is committed to the database; nobody else is.

The server tests run real server processes and read the database itself at the moment an
acknowledgement arrives; the acceptance test SIGKILLs the server right after one and finds
every acknowledged edit after a restart. The in-process tests take the database away for
real (tests/test_writer_outage.py's `Outage`) to show that acknowledgements wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerFactory, ServerProcess
from helpers import wait_until
from pycrdt import Doc, Text
from test_writer_outage import committing, sqlite_store
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from yjs_node import NodeYClient

from server.origin import Origin
from server.persistence.memory import MemoryStore
from server.persistence.sql import SqlStore, create_engine
from server.persistence.writer import Writer
from server.rooms.peer import Peer
from server.rooms.registry import Registry
from shared.protocol import (
    DURABLE_PARAM,
    MSG_STORED,
    MSG_SYNC,
    SYNC_STEP1,
    SYNC_STEP2,
    decode_message,
    encode_sync_step1,
    encode_sync_step2,
    encode_update,
    read_varuint,
)

WS = Origin("ws", "ana")
StateVector = dict[int, int]


def decode_state_vector(payload: bytes) -> StateVector:
    """A Yjs-encoded state vector: a count, then (client id, clock) pairs."""
    count, pos = read_varuint(payload, 0)
    vector: StateVector = {}
    for _ in range(count):
        client, pos = read_varuint(payload, pos)
        clock, pos = read_varuint(payload, pos)
        vector[client] = clock
    assert pos == len(payload), "trailing bytes after the state vector"
    return vector


def covers(ack: StateVector, client: int, clock: int) -> bool:
    return ack.get(client, 0) >= clock


def new_doc_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def stored_text(url: str, doc_id: str) -> str:
    """The text the database holds for a document (update log and snapshot)."""
    store = SqlStore(create_engine(url))
    try:
        stored = await store.load(doc_id)
    finally:
        await store.close()
    doc: Doc[Any] = Doc()
    state = stored.merged()
    if state:
        doc.apply_update(state)
    return str(doc.get("text", type=Text))


class RawClient:
    """A y-protocols client on a plain WebSocket with a pycrdt document: it answers the
    server's sync step 1, applies what comes, and records every message type it receives
    and every acknowledgement."""

    def __init__(self, ws: ClientConnection, client_id: int) -> None:
        self.ws = ws
        self.client_id = client_id
        self.doc: Doc[Any] = Doc(client_id=client_id)
        self.text = self.doc.get("text", type=Text)
        self.kinds: list[int] = []
        self.acks: list[StateVector] = []
        self.synced = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for data in self.ws:
                assert isinstance(data, bytes)
                message = decode_message(data)
                self.kinds.append(message.kind)
                if message.kind == MSG_SYNC:
                    if message.sync == SYNC_STEP1:
                        diff = self.doc.get_update(message.payload)
                        await self.ws.send(encode_sync_step2(diff))
                    else:
                        self.doc.apply_update(message.payload)
                        if message.sync == SYNC_STEP2:
                            self.synced.set()
                elif message.kind == MSG_STORED:
                    self.acks.append(decode_state_vector(message.payload))

    async def insert(self, value: str) -> int:
        """Append `value` (ASCII) to the text, send the update; return the client's clock."""
        before = self.doc.get_state()
        self.text += value
        await self.ws.send(encode_update(self.doc.get_update(before)))
        return self.clock()

    def clock(self) -> int:
        return decode_state_vector(self.doc.get_state()).get(self.client_id, 0)

    def acknowledged(self, clock: int) -> bool:
        return any(covers(ack, self.client_id, clock) for ack in self.acks)

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


@contextlib.asynccontextmanager
async def raw_client(
    server: ServerProcess, doc_id: str, client_id: int, *, durable: bool
) -> AsyncIterator[RawClient]:
    """A synced RawClient; with `durable`, connected with `?durable=1`."""
    url = f"{server.ws_url}/{doc_id}" + (f"?{DURABLE_PARAM}=1" if durable else "")
    async with connect(url, open_timeout=10) as ws:
        client = RawClient(ws, client_id)
        try:
            await ws.send(encode_sync_step1(client.doc.get_state()))
            async with asyncio.timeout(10):
                await client.synced.wait()
            yield client
        finally:
            await client.close()


# -- the writer's numbering --------------------------------------------------------------------


async def test_when_stored_calls_back_once_the_records_up_to_a_mark_are_committed() -> None:
    store = MemoryStore()
    writer = Writer(store, delay=0.2)
    called: list[str] = []
    assert writer.mark() == 0
    writer.when_stored(0, lambda: called.append("nothing queued"))
    assert called == ["nothing queued"]  # at once
    async with committing(writer):
        writer.add("plan", b"\x00\x00", WS)  # alone: committed on the spot by the memory store
        assert writer.mark() == writer.committed() == 1
        writer.when_stored(writer.mark(), lambda: called.append("lone"))
        assert called[-1] == "lone"
        writer.add("plan", b"\x00\x00", WS)  # right after: waits for the commit window
        writer.add("plan", b"\x00\x00", WS)
        writer.when_stored(3, lambda: called.append("3"))
        writer.when_stored(2, lambda: called.append("2"))
        writer.add("plan", b"\x00\x00", WS)
        writer.when_stored(writer.mark(), lambda: called.append("4"))
        assert writer.mark() == 4 and writer.committed() == 1
        assert called[-1] == "lone"
        await writer.flush(timeout=5)
        assert called == ["nothing queued", "lone", "2", "3", "4"]  # in the order of marks


async def test_acknowledgements_wait_for_the_database_and_come_coalesced(tmp_path: Path) -> None:
    """While the database is down, a durable peer is told nothing; once it is back, it gets
    acknowledgements (few, not one per update) whose newest covers all it sent. A peer that
    left gets none, and a stock peer never does."""
    async with sqlite_store(tmp_path) as (store, outage, _):
        writer = Writer(store, delay=0.01)
        registry = Registry(store, writer, grace=60)
        async with committing(writer):
            room = await registry.acquire("plan")
            durable, leaver = Recorder(), Recorder()
            stock = Recorder()
            typist = Peer(durable, user="ana", durable=True)
            gone = Peer(leaver, user="bo", durable=True)
            reader = Peer(stock, user="cy")
            for peer in (typist, gone, reader):
                room.join(peer)
            outage.start()
            client: Doc[Any] = Doc(client_id=21)
            text = client.get("text", type=Text)
            for i in range(40):
                before = client.get_state()
                text += f"{i % 10}"
                room.receive(typist, encode_update(client.get_update(before)))
                if i == 0:
                    room.receive(gone, encode_update(b"\x00\x00"))
                await asyncio.sleep(0.01)
            assert writer.uncommitted() == 40 and not writer.healthy
            assert durable.acks() == [] and leaver.acks() == []
            room.leave(gone)
            assert gone.acks is not None and gone.acks.armed is None  # dropped, freed
            outage.end()
            await writer.flush(timeout=10)
            acks = durable.acks()
            assert acks and covers(acks[-1], 21, 40), acks
            assert len(acks) <= 3, acks  # coalesced, not one per update
            assert leaver.acks() == [] and stock.acks() == []
            # Stored now: the next update is acknowledged straight after its commit.
            before = client.get_state()
            text += "!"
            room.receive(typist, encode_update(client.get_update(before)))
            await writer.flush(timeout=10)
            assert covers(durable.acks()[-1], 21, 41)
            registry.release("plan")
        await registry.close()


class Recorder:
    """A transport that keeps what is written to it (server frames: unmasked, binary)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        pass

    def acks(self) -> list[StateVector]:
        out = []
        data, pos = bytes(self.data), 0
        while pos < len(data):
            length = data[pos + 1] & 0x7F
            pos += 2
            if length == 126:
                length, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
            elif length == 127:
                length, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
            message = decode_message(data[pos : pos + length])
            pos += length
            if message.kind == MSG_STORED:
                out.append(decode_state_vector(message.payload))
        return out


# -- real servers ------------------------------------------------------------------------------


async def test_an_acknowledgement_arrives_only_once_the_update_is_in_the_database(
    make_server: ServerFactory, database_url: str
) -> None:
    # A long window: an acknowledgement sent before its commit would be caught by a wide
    # margin (the second update waits for the window to end).
    server = await make_server(database_url, TANDEM_COMMIT_DELAY_MS="1500")
    doc_id = new_doc_id("ack")
    url = f"{server.ws_url}/{doc_id}?{DURABLE_PARAM}=1"
    client: Doc[Any] = Doc(client_id=31)
    text = client.get("text", type=Text)
    async with connect(url, open_timeout=10) as ws:

        async def edit_and_wait(value: str) -> tuple[float, bytes]:
            before = client.get_state()
            text.insert(len(text), value)
            update = client.get_update(before)
            clock = decode_state_vector(client.get_state())[31]
            sent = time.monotonic()
            await ws.send(encode_update(update))
            await wait_for_ack(ws, 31, clock)
            # At the moment it arrives, the database holds the edit.
            assert (await stored_text(database_url, doc_id)).endswith(value)
            return time.monotonic() - sent, update

        await edit_and_wait("first ")  # alone: committed at once
        # Right after the first: this one waits for the end of the commit window.
        waited, update = await edit_and_wait("second")
        assert waited >= 1.0, "acknowledged before the commit window ended"
        # An update the room has already: acknowledged all the same.
        await ws.send(encode_update(update))
        await wait_for_ack(ws, 31, 12)
    assert await stored_text(database_url, doc_id) == "first second"


async def wait_for_ack(ws: ClientConnection, client: int, clock: int) -> StateVector:
    """Read until an acknowledgement covers (client, clock); fail on a timeout."""
    async with asyncio.timeout(15):
        while True:
            data = await ws.recv()
            assert isinstance(data, bytes)
            message = decode_message(data)
            if message.kind == MSG_STORED:
                ack = decode_state_vector(message.payload)
                if covers(ack, client, clock):
                    return ack


@pytest.mark.chaos
async def test_acknowledged_edits_survive_a_sigkill_right_after(
    make_server: ServerFactory, database_url: str
) -> None:
    """Acceptance: whatever was acknowledged is in the database, even if the server dies the
    moment the acknowledgement leaves it and no client sends anything again."""
    server = await make_server(database_url)
    doc_id = new_doc_id("sigkill")
    edits = [f"<{i:02d}>" for i in range(50)]
    async with raw_client(server, doc_id, 41, durable=True) as client:
        for edit in edits:  # quick edits: most share a commit window
            clock = await client.insert(edit)
        await wait_until(lambda: client.acknowledged(clock), timeout=15)
        server.kill()
    restarted = await make_server(database_url)
    async with raw_client(restarted, doc_id, 42, durable=False) as reader:
        assert str(reader.text) == "".join(edits)


@pytest.mark.interop
async def test_a_stock_yjs_client_in_the_same_room_is_unaffected(server: ServerProcess) -> None:
    doc_id = new_doc_id("mixed")
    node = await NodeYClient.start(server.ws_url, doc_id)
    try:
        await node.wait_synced()
        async with raw_client(server, doc_id, 51, durable=True) as durable:
            await node.call("insert_text", name="text", index=0, value="node;")
            await wait_until(lambda: "node;" in str(durable.text))
            clock = 0
            for i in range(5):
                clock = await durable.insert(f"py{i};")
                await asyncio.sleep(0.05)
            await node.call("insert_text", name="text", index=0, value="node2;")
            await wait_until(lambda: durable.acknowledged(clock))
            expected = "node2;node;py0;py1;py2;py3;py4;"
            reply = await node.wait_for(lambda r: r["text"]["text"] == expected, timeout=10)
            await wait_until(lambda: str(durable.text) == expected)
            assert reply["text"]["text"] == str(durable.text)
        # y-websocket logs "Unable to compute message" for a message type it does not know.
        assert "Unable to compute message" not in node.stderr_tail, node.stderr_tail
    finally:
        await node.close()


async def test_without_durable_a_client_gets_no_acknowledgement(server: ServerProcess) -> None:
    """A stock connection in a room where a durable one is acknowledged gets nothing new,
    neither for its own updates nor for the durable one's."""
    doc_id = new_doc_id("stock")
    async with (
        raw_client(server, doc_id, 61, durable=False) as stock,
        raw_client(server, doc_id, 62, durable=True) as durable,
    ):
        await stock.insert("stock;")
        clock = await durable.insert("durable;")
        await wait_until(lambda: durable.acknowledged(clock))
        await wait_until(lambda: str(stock.text) == str(durable.text))
        await wait_until(lambda: "stock;" in str(durable.text))
        for _ in range(3):
            await stock.insert(".")
        await wait_until(lambda: str(durable.text).endswith("..."))
        # Every commit is long done (SQLite commits a lone update on the spot, and the
        # room's other updates within the window): nothing more can come.
        await asyncio.sleep(0.6)
        assert MSG_STORED not in stock.kinds, stock.kinds
        assert stock.acks == []
