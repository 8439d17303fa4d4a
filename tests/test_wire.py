"""The inbound fast path of WireProtocol against real bytes on a raw TCP socket.

Whole binary frames are parsed by Tandem itself; fragments, control frames and frames split
across reads go through the WebSocket library. Both must interleave correctly on one stream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
from types import SimpleNamespace
from typing import Any

from conftest import ServerFactory, ServerProcess
from helpers import metric
from pycrdt import Doc, Text, TransactionEvent
from websockets.frames import Opcode
from websockets.protocol import Protocol
from websockets.server import ServerProtocol

from client.sync import SyncClient
from server.rooms.wire import Flag, Inbox, WireProtocol, frame_binary, update_frame
from shared.protocol import encode_update


def masked(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A client-to-server frame (always masked)."""
    mask = os.urandom(4)
    head = bytes((0x80 * fin | opcode,))
    n = len(payload)
    if n < 126:
        head += bytes((0x80 | n,))
    elif n < 65536:
        head += bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    else:
        head += bytes((0x80 | 127,)) + n.to_bytes(8, "big")
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


def updates(words: list[str]) -> list[bytes]:
    doc: Doc[Any] = Doc()
    out: list[bytes] = []

    def keep(event: TransactionEvent) -> None:
        out.append(event.update)

    doc.observe(keep)
    text = doc.get("text", type=Text)
    for word in words:
        text += word
    return [encode_update(u) for u in out]


async def upgrade(
    port: int, doc_id: str, *, receive_buffer: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:  # before connecting, so the advertised window is small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws/{doc_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    status = await reader.readuntil(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 101"), status
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return b0 & 0x0F, await reader.readexactly(n)


async def test_frames_split_batched_fragmented_and_pings_interleave(server: ServerProcess) -> None:
    words = ["一", "二", "三", "四", "五", "六", "😀"]
    frames = updates(words)
    async with SyncClient(server.ws_url, "wire") as watcher:
        await watcher.wait_synced()
        reader, writer = await upgrade(server.port, "wire")
        try:
            # Three whole frames and the first half of a fourth in one write...
            fourth = masked(2, frames[3])
            writer.write(b"".join(masked(2, f) for f in frames[:3]) + fourth[:5])
            await writer.drain()
            await asyncio.sleep(0.05)
            # ...the rest of it with a ping, then a message in two fragments, then a whole one.
            writer.write(fourth[5:] + masked(9, b"are you there"))
            writer.write(masked(2, frames[4][:3], fin=False) + masked(0, frames[4][3:]))
            writer.write(masked(2, frames[5]) + masked(2, frames[6]))
            await writer.drain()

            async with asyncio.timeout(10):
                while str(watcher.doc.get("text", type=Text)) != "".join(words):
                    await asyncio.sleep(0.02)
                while True:  # the server's greeting comes first; then our pong
                    opcode, payload = await read_frame(reader)
                    if opcode == 0xA:
                        assert payload == b"are you there"
                        break
        finally:
            writer.close()
    assert server.proc is not None and server.proc.poll() is None


async def test_a_frame_cut_right_after_its_header_is_not_read_twice(
    server: ServerProcess,
) -> None:
    """TCP may deliver a frame's header and mask alone: the library then waits for the
    payload with nothing buffered. The payload must reach the library too, even when its
    masked bytes look like the start of a frame (here 0x82 0x81: a 1-byte binary frame)."""
    words = ["甲", "乙"]
    frames = updates(words)
    payload = frames[0]
    mask = bytes((payload[0] ^ 0x82, payload[1] ^ 0x81)) + os.urandom(2)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126 and body[:2] == b"\x82\x81"
    async with SyncClient(server.ws_url, "cut") as watcher:
        await watcher.wait_synced()
        reader, writer = await upgrade(server.port, "cut")
        try:
            await read_frame(reader)  # the greeting: the session has joined the room
            writer.write(bytes((0x82, 0x80 | len(payload))) + mask)
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(body + masked(2, frames[1]))
            await writer.drain()
            async with asyncio.timeout(10):
                while str(watcher.doc.get("text", type=Text)) != "".join(words):
                    await asyncio.sleep(0.02)
        finally:
            writer.close()
    assert "rejected" not in server.log()


async def test_unmasked_frame_is_refused_by_the_library(server: ServerProcess) -> None:
    reader, writer = await upgrade(server.port, "wire2")
    try:
        frame = updates(["x"])[0]
        writer.write(bytes((0x82, len(frame))) + frame)  # no mask bit: a protocol error
        await writer.drain()
        async with asyncio.timeout(10):
            while True:
                opcode, payload = await read_frame(reader)
                if opcode == 0x8:
                    assert int.from_bytes(payload[:2], "big") == 1002
                    break
    finally:
        writer.close()


def test_the_library_parser_is_seen_between_frames_and_inside_one() -> None:
    """What WireProtocol assumes of the installed websockets: between frames its parser
    waits in the reader's `at_eof`, inside a frame elsewhere; and a plain frame parser
    started between frames takes over from the handshake parser."""
    conn = ServerProtocol()
    key = base64.b64encode(os.urandom(16)).decode()
    conn.receive_data(
        (
            "GET /ws/x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    [request] = conn.events_received()
    conn.send_response(conn.accept(request))
    wire: Any = SimpleNamespace(conn=conn)
    assert WireProtocol._library_between_frames(wire)
    frame = masked(2, b"\x00\x00\x01\x00")
    conn.receive_data(frame[:6])  # the header and mask alone
    assert not WireProtocol._library_between_frames(wire)
    conn.receive_data(frame[6:])
    assert [e.data for e in conn.events_received()] == [b"\x00\x00\x01\x00"]
    assert WireProtocol._library_between_frames(wire)
    conn.parser = Protocol.parse(conn)  # what release_handshake does
    next(conn.parser)
    assert WireProtocol._library_between_frames(wire)
    conn.receive_data(masked(2, b"\x03") + masked(9, b"ping?"))
    assert [(e.opcode, e.data) for e in conn.events_received()] == [
        (Opcode.BINARY, b"\x03"),
        (Opcode.PING, b"ping?"),
    ]


async def test_inbox_hands_events_over_in_order_and_wakes_its_reader() -> None:
    inbox = Inbox()
    inbox.put_nowait({"n": 1})
    assert not inbox.empty() and inbox.qsize() == 1
    assert await inbox.get() == {"n": 1}
    assert inbox.empty()

    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not reader.done()
    inbox.put_nowait({"n": 2})
    inbox.put_nowait({"n": 3})
    assert await asyncio.wait_for(reader, 1) == {"n": 2}
    assert await inbox.get() == {"n": 3}

    cancelled = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    inbox.put_nowait({"n": 4})  # a reader that gave up does not swallow the next event
    assert await asyncio.wait_for(inbox.get(), 1) == {"n": 4}


async def test_flag_releases_every_waiter_when_set() -> None:
    flag = Flag()
    assert not flag.is_set()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    await asyncio.wait_for(flag.wait(), 1)  # set: returns at once
    flag.clear()
    late = asyncio.create_task(flag.wait())
    await asyncio.sleep(0.01)
    assert not late.done()
    flag.set()
    await asyncio.wait_for(late, 1)


async def test_a_reader_that_stops_reading_is_cut_off_and_the_room_goes_on(
    make_server: ServerFactory,
) -> None:
    limit = 256 * 1024
    server = await make_server(TANDEM_SEND_BUFFER_BYTES=str(limit))
    doc_id = "slow-reader"
    async with (
        SyncClient(server.ws_url, doc_id) as author,
        SyncClient(server.ws_url, doc_id) as watcher,
    ):
        await author.wait_synced()
        await watcher.wait_synced()
        # Joins, then never reads again: the kernel buffers fill, then the server's.
        stalled_reader, stalled = await upgrade(server.port, doc_id, receive_buffer=4096)
        text = author.doc.get("text", type=Text)
        chunk = "x" * 30_000
        async with asyncio.timeout(60):
            sent = 0
            while await metric(server, "tandem_slow_peers_dropped_total") < 1:
                assert sent < 2000, "40 MB went out and the stalled reader is still connected"
                for _ in range(20):
                    text += chunk
                    sent += 1
                await asyncio.sleep(0.05)
            while len(str(watcher.doc.get("text", type=Text))) != len(str(text)):
                await asyncio.sleep(0.05)  # the healthy reader got every update
        assert await metric(server, "tandem_slow_peers_dropped_total") == 1
        # The stalled connection was reset: what is left in its buffers ends in an error or EOF.
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            async with asyncio.timeout(10):
                while await stalled_reader.read(1 << 16):
                    pass
        stalled.close()
    assert "send buffer over limit" in server.log()


def test_the_one_step_update_frame_is_the_general_one_at_every_size() -> None:
    # Around the edges: the frame's 7-bit length (125), the varuint's one byte (127), 16 bits.
    for size in [*range(300), 65_531, 65_533, 70_000]:
        update = bytes(i % 251 for i in range(size))
        assert update_frame(update) == frame_binary(encode_update(update)), size
