"""Pre-framed writes to WebSocket peers.

ASGI can only send a message, and the server then frames it per connection. A room sends the
same update to every peer, so Tandem builds the RFC 6455 frame once and writes those bytes
straight to each peer's transport. `WireProtocol` is uvicorn's sans-I/O WebSocket protocol with
one addition: it exposes itself in the ASGI scope, so the endpoint can reach the transport.
Writing around the library skips its flow control, so every write checks the transport's buffer
and the caller disconnects a peer that stops reading.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

SCOPE_KEY = "tandem.wire"


def frame_binary(payload: bytes) -> bytes:
    """An unmasked, final, binary frame (server to client) carrying `payload`."""
    n = len(payload)
    if n < 126:
        return bytes((0x82, n)) + payload
    if n < 65536:
        return bytes((0x82, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x82, 127)) + n.to_bytes(8, "big") + payload


class WireProtocol(WebSocketsSansIOProtocol):
    """uvicorn's default WebSocket protocol, plus a scope extension naming this connection
    and a direct path for binary messages.

    Through ASGI every message costs a queue item, a task wake-up and a pause and resume of
    reading (two system calls). Once a session sets `handler`, binary messages are handed to
    it synchronously as they are parsed instead; text frames, disconnects and everything
    before the session is set up still take the ASGI way.
    """

    handler: Callable[[bytes], None] | None = None

    def send_receive_event_to_app(self) -> None:
        handler = self.handler
        if handler is None or self.curr_msg_data_type != "bytes":
            super().send_receive_event_to_app()
            return
        frames = self.frames
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        self.frames = []
        if not self.close_sent:
            handler(data)

    def post(self, event: dict[str, Any]) -> None:
        """Queue an event for the ASGI side of this connection (e.g. a rejection)."""
        self.queue.put_nowait(event)  # type: ignore[arg-type]

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The ASGI task was created but has not run yet, so the scope can still be extended.
        scope: Any = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][SCOPE_KEY] = self

    @property
    def open(self) -> bool:
        return not (self.close_sent or self.disconnected or self.transport.is_closing())


def writer_for(scope: Any) -> WireProtocol | None:
    wire = scope.get("extensions", {}).get(SCOPE_KEY)
    return wire if isinstance(wire, WireProtocol) else None


def transport_of(wire: WireProtocol) -> asyncio.Transport:
    return wire.transport
