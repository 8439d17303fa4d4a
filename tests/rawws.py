"""A WebSocket client on a bare socket, for tests that check the byte stream itself.

The library clients hide what these tests look for: a frame that is not well formed, bytes
after a close frame, or a reset instead of a close. This one parses every server frame by hand
and keeps all of them, in order, and can read as slowly as a test wants.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
from typing import NamedTuple

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class BadStream(AssertionError):
    """The server sent bytes that are not a well-formed sequence of frames."""


class Frame(NamedTuple):
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return int(struct.unpack("!H", self.payload[:2])[0])

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8", errors="replace")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked frame, as a client must send it."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + struct.pack("!Q", n)
    return head + mask + _mask(payload, mask)


def _mask(payload: bytes, mask: bytes) -> bytes:
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big"
    )


class RawWebSocket:
    """One connection: `send` masked frames, `read_frame` server frames as they come."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames: list[Frame] = []

    @classmethod
    async def connect(
        cls, port: int, path: str, *, rcvbuf: int | None = None, host: str = "127.0.0.1"
    ) -> RawWebSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                # Before connecting: it fixes the advertised window and turns off autotuning.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
            # A small stream buffer, so that a test that does not read stops the socket too.
            reader, writer = await asyncio.open_connection(sock=sock, limit=16 * 1024)
        except BaseException:
            sock.close()
            raise
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if not head.startswith(b"HTTP/1.1 101"):
            writer.close()
            raise AssertionError(f"handshake refused: {head[:200]!r}")
        return cls(reader, writer)

    def send(self, payload: bytes, opcode: int = OP_BINARY) -> None:
        self.writer.write(client_frame(opcode, payload))

    async def drain(self) -> None:
        await self.writer.drain()

    async def read_frame(self) -> Frame | None:
        """The next frame, checked to be well formed; None at the end of the stream."""
        try:
            first, second = await self.reader.readexactly(2)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise BadStream("the stream ended inside a frame header") from None
            return None
        if first & 0x70 or not first & 0x80:
            raise BadStream(f"frame {len(self.frames)}: bad first byte {first:#x}")
        opcode = first & 0x0F
        if opcode not in (OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
            raise BadStream(f"frame {len(self.frames)}: unknown opcode {opcode:#x}")
        if second & 0x80:
            raise BadStream(f"frame {len(self.frames)}: a server frame must not be masked")
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            if length > 1 << 40:
                raise BadStream(f"frame {len(self.frames)}: absurd length {length}")
        if opcode >= OP_CLOSE and length > 125:
            raise BadStream(f"frame {len(self.frames)}: control frame of {length} bytes")
        try:
            payload = await self.reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise BadStream("the stream ended inside a frame") from None
        frame = Frame(opcode, payload)
        self.frames.append(frame)
        return frame

    async def keep_alive(self) -> None:
        """Read (and drop) every frame, answering pings, until the stream ends."""
        with contextlib.suppress(OSError, BadStream):
            while (frame := await self.read_frame()) is not None:
                self.frames.clear()
                if frame.opcode == OP_PING:
                    self.send(frame.payload, OP_PONG)

    async def read_to_end(self, timeout: float = 10.0) -> list[Frame]:
        """Every frame until the server ends the stream (or `timeout`, which fails)."""
        async with asyncio.timeout(timeout):
            while await self.read_frame() is not None:
                pass
        return self.frames

    def abort(self) -> None:
        transport = self.writer.transport
        transport.abort()  # type: ignore[attr-defined]

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (OSError, TimeoutError):
            pass


# -- blocking sockets, for clients that run in threads ---------------------------------------


def handshake(port: int, path: str) -> tuple[socket.socket, bytes]:
    """A blocking socket with the WebSocket handshake done, and what came after it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    return sock, head.partition(b"\r\n\r\n")[2]


def take_frames(data: bytearray) -> list[Frame]:
    """The whole server frames (unmasked) at the start of `data`, removed from it."""
    frames = []
    pos = 0
    while True:
        start = pos
        if pos + 2 > len(data):
            break
        opcode, length = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if length == 126:
            length = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
        elif length == 127:
            length = int.from_bytes(data[pos : pos + 8], "big")
            pos += 8
        if pos + length > len(data):
            pos = start
            break
        frames.append(Frame(opcode, bytes(data[pos : pos + length])))
        pos += length
    del data[:pos]
    return frames


def parse_frames(data: bytes) -> list[Frame]:
    """The whole server frames in `data`; a frame cut short at the end is left out."""
    return take_frames(bytearray(data))
