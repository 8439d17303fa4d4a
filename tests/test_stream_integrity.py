"""What the server writes to each socket stays a well-formed WebSocket stream under faults.

The room writes broadcasts straight to the peers' sockets while their transports hold nothing
(server/rooms/fanout.py). These tests read the raw byte stream of a connection (tests/rawws.py)
to catch what a library client would hide: frames spliced into one another when a direct write
overtakes bytes the transport still holds, and frames written after a close frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest
from conftest import ServerFactory, ServerProcess
from pycrdt import Doc, Map, TransactionEvent
from rawws import OP_BINARY, OP_CLOSE, BadStream, RawWebSocket
from websockets.asyncio.client import connect
from yjs_node import JS_DIR, ensure_node_modules, node_executable

from shared.protocol import (
    MSG_SYNC,
    SYNC_STEP1,
    AwarenessEntry,
    decode_message,
    encode_awareness,
    encode_awareness_update,
    encode_sync_step1,
    encode_update,
)

# The reader's receive window: small, so that the server's kernel buffers fill early.
SMALL_RCVBUF = 16 * 1024


class RawWriter:
    """A pycrdt document whose every change goes out as one update frame on a raw socket."""

    def __init__(self, ws: RawWebSocket) -> None:
        self.ws = ws
        self.doc: Doc = Doc()
        self.map = self.doc.get("m", type=Map)
        self.doc.observe(self._send)

    def _send(self, event: TransactionEvent) -> None:
        self.ws.send(encode_update(event.update))

    def put(self, key: str, value: str) -> None:
        self.map[key] = value


@contextlib.asynccontextmanager
async def raw(server: ServerProcess, doc_id: str, **kwargs: int) -> AsyncIterator[RawWebSocket]:
    ws = await RawWebSocket.connect(server.port, f"/ws/{doc_id}", **kwargs)
    try:
        yield ws
    finally:
        ws.abort()


def big_presence(clients: int, size: int) -> bytes:
    """One awareness message announcing `clients` states of about `size` bytes each."""
    entries = [
        AwarenessEntry(1000 + i, 1, json.dumps({"user": f"u{i}", "note": "x" * size}))
        for i in range(clients)
    ]
    return encode_awareness(encode_awareness_update(entries))


async def test_a_greeting_larger_than_the_socket_buffers_keeps_the_stream_well_formed(
    make_server: ServerFactory,
) -> None:
    """A client joins a room whose presence states (its greeting) are far larger than the
    socket buffers, and reads slowly while another client streams updates: every frame it
    reads parses, in the order sent, and its copy of the document converges."""
    server = await make_server(
        TANDEM_SEND_BUFFER_BYTES=str(512 * 1024 * 1024),
        TANDEM_MAX_MESSAGES_PER_SECOND="0",
        TANDEM_MAX_BYTES_PER_SECOND="0",
    )
    doc_id = "join-window"
    count = 400
    async with (
        raw(server, doc_id) as presence_ws,
        raw(server, doc_id) as writer_ws,
    ):
        # 12 MB of presence: several times what the kernel buffers of a connection hold.
        presence_ws.send(big_presence(8, 1_500_000))
        await presence_ws.drain()
        writer = RawWriter(writer_ws)
        writer.put("start", "0")
        await writer_ws.drain()
        await asyncio.sleep(1.0)  # the presence is in the room

        async with raw(server, doc_id, rcvbuf=SMALL_RCVBUF) as reader:
            reader.send(encode_sync_step1(Doc().get_state()))  # and what the room has
            await asyncio.sleep(0.3)  # the greeting fills the buffers; the rest waits

            async def stream() -> None:
                for i in range(count):
                    writer.put(f"k{i % 50}", f"{i}:" + "y" * 3000)
                    writer.put("seq", str(i))
                    await writer_ws.drain()
                    await asyncio.sleep(0.002)

            streaming = asyncio.create_task(stream())
            mirror = Doc()
            seen = mirror.get("m", type=Map)
            try:
                async with asyncio.timeout(60):
                    while seen.get("seq") != str(count - 1):
                        frame = await reader.read_frame()
                        assert frame is not None, "the server closed the connection"
                        assert frame.opcode == OP_BINARY, frame
                        message = decode_message(frame.payload)
                        if message.kind == MSG_SYNC and message.sync != SYNC_STEP1:
                            mirror.apply_update(message.payload)
                        await asyncio.sleep(0.001)  # a slow reader
            except BadStream as exc:
                pytest.fail(f"the stream the reader got is corrupt: {exc}")
            finally:
                streaming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await streaming
        assert dict(seen) == dict(writer.map)


async def test_nothing_follows_the_close_frame_of_a_server_shutdown(
    make_server: ServerFactory,
) -> None:
    """The server shuts down while a client streams updates to its room: each reader's
    stream ends with the close frame (1012), nothing after it."""
    server = await make_server(
        TANDEM_MAX_MESSAGES_PER_SECOND="0", TANDEM_MAX_BYTES_PER_SECOND="0"
    )
    doc_id = "shutdown-close"
    async with raw(server, doc_id) as writer_ws:
        writer = RawWriter(writer_ws)
        readers = [await RawWebSocket.connect(server.port, f"/ws/{doc_id}") for _ in range(4)]
        try:
            writer.put("start", "0")
            await asyncio.sleep(0.5)

            async def stream() -> None:
                i = 0
                with contextlib.suppress(OSError):
                    while True:
                        writer.put("seq", str(i))
                        i += 1
                        await writer_ws.drain()
                        await asyncio.sleep(0.001)

            streaming = asyncio.create_task(stream())
            await asyncio.sleep(0.5)
            stopping = asyncio.create_task(server.stop())
            try:
                streams = await asyncio.gather(*(r.read_to_end(30) for r in readers))
            finally:
                streaming.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await streaming
                await stopping
        finally:
            for reader in readers:
                reader.abort()
    for frames in streams:
        closes = [i for i, frame in enumerate(frames) if frame.opcode == OP_CLOSE]
        assert closes, "no close frame"
        assert closes[0] == len(frames) - 1, (
            f"{len(frames) - 1 - closes[0]} frames after the close frame"
        )
        assert frames[-1].close_code == 1012


async def test_nothing_follows_the_close_frame_of_a_keepalive_timeout(
    make_server: ServerFactory,
) -> None:
    """A client stops reading while updates stream to it; the server's keep-alive ping goes
    unanswered and the server closes the connection (1011). When the client reads again, its
    stream ends with that close frame: nothing the room broadcast later follows it."""
    server = await make_server(
        TANDEM_PING_INTERVAL_SECONDS="1",
        TANDEM_SEND_BUFFER_BYTES=str(512 * 1024 * 1024),
        TANDEM_MAX_MESSAGES_PER_SECOND="0",
        TANDEM_MAX_BYTES_PER_SECOND="0",
    )
    doc_id = "keepalive-close"
    async with (
        raw(server, doc_id) as writer_ws,
        raw(server, doc_id, rcvbuf=SMALL_RCVBUF) as reader,
    ):
        writer = RawWriter(writer_ws)
        pongs = asyncio.create_task(writer_ws.keep_alive())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 4.0  # past the ping (1 s) and its timeout (1 s more)
        i = 0
        while loop.time() < deadline:
            writer.put("blob", f"{i}:" + "z" * 64 * 1024)
            i += 1
            await writer_ws.drain()
            await asyncio.sleep(0.01)
        frames = await reader.read_to_end(60)
        pongs.cancel()
    closes = [n for n, frame in enumerate(frames) if frame.opcode == OP_CLOSE]
    assert closes, f"no close frame in {len(frames)} frames"
    assert frames[closes[0]].close_code == 1011, frames[closes[0]]
    assert closes[0] == len(frames) - 1, f"{len(frames) - 1 - closes[0]} frames after the close"


@contextlib.contextmanager
def cpu_load(workers: int = 3) -> Iterator[None]:
    """Busy processes on every core, for as long as the block runs."""
    procs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(workers)
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def test_a_client_sending_a_frame_over_the_limit_reads_1009_even_under_load(
    make_server: ServerFactory,
) -> None:
    """A 64 MB message against the 16 MiB limit, from the stock Node `ws` client while the
    machine is busy: the server fails the connection with 1009 and reads on until the client
    has closed, so the client learns the code and the reason instead of a reset (1006)."""
    server = await make_server()
    ensure_node_modules()
    with cpu_load():
        proc = await asyncio.create_subprocess_exec(
            node_executable(),
            str(JS_DIR / "oversize.mjs"),
            f"{server.ws_url}/too-big",
            "4",
            str(64 * 1024 * 1024),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    outcomes = json.loads(out)
    assert [o["code"] for o in outcomes] == [1009] * 4, outcomes
    assert "exceeds limit" in outcomes[0]["reason"], outcomes[0]
    async with connect(f"{server.ws_url}/after-too-big", compression=None) as ws:
        await ws.send(encode_sync_step1(Doc().get_state()))
        assert isinstance(await asyncio.wait_for(ws.recv(), 10), bytes)  # still serving
