"""The floor: the least a Python sync server on uvloop can do per delivery.

Not a server to use: it keeps no document, stores nothing and checks nothing. It accepts
WebSocket connections on any path starting with /ws, answers a client's sync step 1 with an
empty step 2, and relays every sync update to the other clients of the same path, the frame
built once and the same bytes written to each transport, as Tandem's room does. What Tandem
spends beyond it in the `fanout`, `stress` and `rooms` scenarios is what its document,
persistence and protocol layers cost. The `cold` scenario needs a real document: not here.

    .venv/bin/python bench/servers/floor.py 8100
    node bench/loadgen.mjs --scenario stress --url ws://127.0.0.1:8100/ws \
        --pid "$(pgrep -f 'floor.py 8100')" --readers 500 --rate 30 --duration 20 --warmup 5
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sys
from collections.abc import Callable
from typing import cast

import uvloop
from websockets.speedups import apply_mask

from server.rooms.wire import frame_binary as frame  # the same frames as Tandem's

ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3
SYNC_STEP1_EMPTY = b"\x00\x00\x01\x00"  # sync step 1 with an empty state vector
SYNC_STEP2_EMPTY = b"\x00\x01\x02\x00\x00"  # sync step 2 carrying an empty update


class Relay(asyncio.Protocol):
    # A room's writers in join order (a dict), as Tandem's room keeps its peers: writing to
    # the sockets in the order they were opened costs measurably less than hash order.
    rooms: dict[str, dict[Callable[[bytes], None], None]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        # One bound method, kept: the room holds it and the relay loop skips it by
        # identity (each attribute access would make a new one).
        self.write = self.transport.write
        self.buffer = b""
        self.room: dict[Callable[[bytes], None], None] | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.room is None and not self._handshake():
            return
        buf = self.buffer
        while len(buf) >= 6:
            length, head = buf[1] & 0x7F, 2
            if length == 126:
                length, head = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                length, head = int.from_bytes(buf[2:10], "big"), 10
            end = head + 4 + length
            if len(buf) < end:
                break
            opcode = buf[0] & 0x0F
            payload = apply_mask(buf[head + 4 : end], buf[head : head + 4])
            buf = buf[end:]
            if opcode == 0x8:
                self.transport.close()
                break
            if opcode == 0x2 and len(payload) >= 2 and payload[0] == 0:
                self._sync(payload)
        self.buffer = buf

    def _handshake(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = self.buffer[:end].decode("latin-1").split("\r\n")
        self.buffer = self.buffer[end + 4 :]
        path = lines[0].split()[1]
        key = next(
            (
                v.strip()
                for k, _, v in (h.partition(":") for h in lines[1:])
                if k.strip().lower() == "sec-websocket-key"
            ),
            None,
        )
        if not path.startswith("/ws") or key is None:
            # The benchmark runner polls / until the server answers.
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            self.transport.close()
            return False
        accept = base64.b64encode(hashlib.sha1(key.encode() + ACCEPT_GUID).digest()).decode()
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
        )
        self.room = self.rooms.setdefault(path, {})
        self.room[self.write] = None
        self.write(frame(SYNC_STEP1_EMPTY))
        return True

    def _sync(self, payload: bytes) -> None:
        if payload[1] == 0:
            self.write(frame(SYNC_STEP2_EMPTY))
        elif payload[1] == 2 and self.room is not None:
            relayed = frame(payload)  # built once, written to every other peer
            me = self.write
            for write in self.room:
                if write is not me:
                    write(relayed)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.room is not None:
            self.room.pop(self.write, None)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Relay, "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
