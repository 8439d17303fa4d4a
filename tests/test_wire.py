"""The inbound fast path of WireProtocol against real bytes on a raw TCP socket.

Whole binary frames are parsed by Tandem itself; fragments, control frames and frames split
across reads go through the WebSocket library. Both must interleave correctly on one stream.
"""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

from conftest import ServerProcess
from pycrdt import Doc, Text, TransactionEvent

from client.sync import SyncClient
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


async def upgrade(port: int, doc_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
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
