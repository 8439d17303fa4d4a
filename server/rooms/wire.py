"""Pre-framed writes to WebSocket peers.

ASGI can only send a message, and the server then frames it per connection. A room sends the
same update to every peer, so Tandem builds the RFC 6455 frame once and writes those bytes
straight to each peer's transport. `WireProtocol` is uvicorn's sans-I/O WebSocket protocol with
one addition: it exposes itself in the ASGI scope, so the endpoint can reach the transport.
Writing around the library skips its flow control, so every write checks the transport's buffer
and the caller disconnects a peer that stops reading.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import OPEN

try:
    from websockets.speedups import apply_mask
except ImportError:  # a build of websockets without its C extension
    from websockets.utils import apply_mask

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

    def data_received(self, data: bytes) -> None:
        # Complete, unfragmented, masked binary frames are unmasked here and handed to the
        # session directly; the library's frame parser, a Python generator, costs several
        # times as much per frame. Anything else (control frames, fragments, a frame split
        # across reads, one over the size limit) goes to the library from a frame boundary.
        if self.handler is not None and not self.frames:
            conn = self.conn
            if conn.current_size is None and not conn.reader.buffer and conn.state is OPEN:
                data = self._deliver_frames(data)
                if not data:
                    return
        super().data_received(data)

    def _deliver_frames(self, data: bytes) -> bytes:
        """Deliver the whole binary frames at the start of `data`; return what is left."""
        limit = self.conn.max_message_size
        pos = 0
        end = len(data)
        while end - pos >= 6 and data[pos] == 0x82:  # FIN, binary
            handler = self.handler
            if handler is None or self.close_sent:
                break  # rejected meanwhile: the rest queues behind the rejection
            length = data[pos + 1]
            if length < 0x80:
                break  # a client frame must be masked: let the library refuse it
            length &= 0x7F
            head = pos + 2
            if length == 126:
                if end - pos < 8:
                    break
                length = int.from_bytes(data[head : head + 2], "big")
                head += 2
            elif length == 127:
                break  # 64 KiB and more: rare, left to the library
            if limit is not None and length > limit:
                break
            stop = head + 4 + length
            if stop > end:
                break
            payload = apply_mask(data[head + 4 : stop], data[head : head + 4])
            pos = stop
            handler(payload)
        return data[pos:] if pos else data

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


def writer_for(scope: Any) -> WireProtocol | None:
    wire = scope.get("extensions", {}).get(SCOPE_KEY)
    return wire if isinstance(wire, WireProtocol) else None
