"""Pre-framed writes to WebSocket peers.

ASGI can only send a message, and the server then frames it per connection. A room sends the
same update to every peer, so Tandem builds the RFC 6455 frame once and writes those bytes to
each peer itself (fanout.py). `WireProtocol` is uvicorn's sans-I/O WebSocket protocol with a
few additions: it exposes itself in the ASGI scope, so the endpoint can reach the connection;
it hands binary frames to the session as they are parsed; it lends a descriptor of its socket
for direct writes and reports its transport's backlog. Writing around the library skips its
flow control, so the room watches the backlog and disconnects a peer that stops reading.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import OPEN, Protocol
from websockets.streams import StreamReader

from server import metrics
from server.rooms.keepalive import wheel_for
from shared.protocol import MSG_SYNC, SYNC_UPDATE, encode_update

try:
    from websockets.speedups import apply_mask
except ImportError:  # a build of websockets without its C extension
    from websockets.utils import apply_mask

SCOPE_KEY = "tandem.wire"
_log = logging.getLogger("tandem.rooms")
# The code of the generator websockets' frame parser waits in between frames.
_AWAITING_FRAME = StreamReader.at_eof.__code__
# After failing a connection, how long and how much to read and discard before closing it, so
# that the client reads the close frame before the socket goes away (see _linger).
LINGER_SECONDS = 1.0
LINGER_BYTES = 128 * 1024 * 1024
# At most this many frames of one read are handled in one turn of the event loop; a read can
# hold thousands of small frames (a script, a replayed offline session), and other rooms'
# and clients' messages should not wait for all of them.
FRAMES_PER_TURN = 256


def frame_binary(payload: bytes) -> bytes:
    """An unmasked, final, binary frame (server to client) carrying `payload`."""
    n = len(payload)
    if n < 126:
        return bytes((0x82, n)) + payload
    if n < 65536:
        return bytes((0x82, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x82, 127)) + n.to_bytes(8, "big") + payload


def frame_payload(frame: bytes) -> bytes:
    """The payload of an unmasked frame that `frame_binary` built."""
    size = frame[1] & 0x7F
    return frame[2 if size < 126 else 4 if size == 126 else 10 :]


def update_frame(update: bytes) -> bytes:
    """`frame_binary(encode_update(update))`, with the headers of a small update in one step."""
    n = len(update)
    if n < 123:  # one byte of varuint length, and the payload (n + 3) under 126 bytes
        return bytes((0x82, n + 3, MSG_SYNC, SYNC_UPDATE, n)) + update
    return frame_binary(encode_update(update))


class Inbox:
    """The ASGI receive queue of one connection: the part of `asyncio.Queue` uvicorn uses.

    An `asyncio.Queue` holds three deques (about 2 KB before the first item); a sync
    connection lives for hours and, once its session set `WireProtocol.handler`, sees only
    its last few events here. One list and at most one waiting future do the same job.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            # One reader per connection: uvicorn's receive() is awaited by one task only.
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class Flag:
    """`asyncio.Event` without its deque of waiters, for the connection's `writable` state,
    which is set nearly always and awaited only while the transport is paused."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)


class WireProtocol(WebSocketsSansIOProtocol):
    """uvicorn's default WebSocket protocol, plus a scope extension naming this connection
    and a direct path for binary messages.

    Through ASGI every message costs a queue item, a task wake-up and a pause and resume of
    reading (two system calls). Once a session sets `handler`, binary messages are handed to
    it synchronously as they are parsed instead; text frames, disconnects and everything
    before the session is set up still take the ASGI way.
    """

    handler: Callable[[bytes], None] | None = None
    # Whether the last bytes received went to the library's parser (see data_received).
    _library_fed = True
    # Bytes still to read and discard after failing the connection (see _linger); None
    # while the connection is not lingering.
    _linger_left: int | None = None
    # The timer that resumes reading after `throttle`; None while reading freely.
    _throttle: asyncio.Handle | None = None
    _resume_at = 0.0
    # Whole frames read already but not delivered while paced (see _deliver_frames).
    _held = b""
    # The start of a frame that a read ended in, kept for the next (see data_received).
    _partial = b""
    # Set by the session once it has joined a room. `on_backlog(True)` when the transport's
    # buffer passes its high-water mark (64 KiB), `on_backlog(False)` when it has drained;
    # `on_lost` when the connection is lost, so the room stops writing to it at once.
    on_backlog: Callable[[bool], None] | None = None
    on_lost: Callable[[], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Same behaviour, a few KB less per connection (see Inbox and Flag).
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        if self._linger_left is not None:  # failed: the library discards what comes
            self._linger_left -= len(data)
            if self._linger_left < 0:
                self.transport.close()
                return
        if self._held:  # paced: new bytes queue behind the frames waiting
            if not self.close_sent:  # once closing, they are read only to be dropped
                self._held += data
            return
        if self._partial:  # the start of a frame the last read ended in
            data = self._partial + data
            self._partial = b""
        # Complete, unfragmented, masked binary frames are unmasked here and handed to the
        # session directly; the library's frame parser, a Python generator, costs several
        # times as much per frame. A read that ends inside such a frame keeps its start for
        # the next read. Anything else (control frames, fragments, frames of 64 KiB and more,
        # one over the size limit) goes to the library from a frame boundary, and everything
        # after it too until the library's parser is between frames again.
        if self.handler is not None and not self.frames:
            conn = self.conn
            if (
                conn.current_size is None
                and not conn.reader.buffer
                and conn.state is OPEN
                and (not self._library_fed or self._library_between_frames())
            ):
                self._library_fed = False
                data = self._deliver_frames(data)
                if not data:
                    return
                if self._starts_short_frame(data):
                    self._partial = data
                    return
        self._library_fed = True
        super().data_received(data)
        if self.conn.state is not OPEN:
            # A close frame came in (and the library answered it), or the library failed
            # the connection: the room stops writing to it now, not after the session's turn.
            self._lost()

    def _starts_short_frame(self, data: bytes) -> bool:
        """Whether `data` is the start, and only the start, of a frame `_deliver_frames`
        takes: masked, binary, final, under 64 KiB and within the size limit."""
        if self.handler is None or self.close_sent or data[0] != 0x82:
            return False
        if len(data) < 2:
            return True
        length = data[1]
        if length < 0x80:
            return False  # unmasked: the library refuses it
        length &= 0x7F
        head = 6
        if length == 126:
            if len(data) < 4:
                return True
            length = int.from_bytes(data[2:4], "big")
            head = 8
        elif length == 127:
            return False
        limit = self.conn.max_message_size
        return (limit is None or length <= limit) and len(data) < head + length

    def _library_between_frames(self) -> bool:
        """Whether the library's parser waits for the first byte of a frame.

        An empty buffer is not enough: a frame's header may have come alone, and the parser
        then waits for the payload with nothing buffered. Between frames the innermost of its
        generators is the reader's `at_eof`.
        """
        parser: Any = self.conn.parser
        while parser.gi_yieldfrom is not None:
            parser = parser.gi_yieldfrom
        return parser.gi_code is _AWAITING_FRAME

    def _deliver_frames(self, data: bytes) -> bytes:
        """Deliver the whole binary frames at the start of `data`; return what is left."""
        limit = self.conn.max_message_size
        turn = FRAMES_PER_TURN
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
            turn -= 1
            if (self._throttle is not None or not turn) and pos < end:
                # Paced, or this read's share of the loop is used up: the rest waits, whole
                # frames, until reading resumes (_unthrottle), at the latest on the loop's
                # next turn, after what other connections sent meanwhile.
                if self._throttle is None:
                    self.transport.pause_reading()
                    self._throttle = self.loop.call_soon(self._unthrottle)
                self._held = data[pos:]
                return b""
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

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.on_backlog is not None:
            self.on_backlog(True)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.on_backlog is not None:
            self.on_backlog(False)

    # -- closing ---------------------------------------------------------------------------
    # Whatever writes a close frame first takes the connection out of its room: the library
    # on its own (server shutdown, an unanswered keep-alive ping, a frame it refuses), the
    # session (which leaves the room before it sends its close), or the client's close,
    # which the library answers (data_received). Nothing may follow a close frame.

    def shutdown(self) -> None:
        self._lost()
        super().shutdown()

    def schedule_ping(self) -> None:
        """The next keep-alive ping, on the process's one ping timer (keepalive.py)."""
        assert self.ping_interval is not None
        delay = max(0.0, self.ping_interval - self.last_ping_rtt)
        self.ping_timer = wheel_for(self.loop).schedule(self, delay)  # type: ignore[assignment]

    def keepalive_timeout(self) -> None:
        if self._throttle is not None:
            # Paced: its pong waits behind frames this side has not read yet. It is alive
            # (it sent them); wait again. The flood guard's patience bounds how long.
            wait = self.ping_timeout or 20.0
            self.pong_timer = self.loop.call_later(wait, self.keepalive_timeout)
            return
        self._lost()
        super().keepalive_timeout()

    def handle_parser_exception(self) -> None:
        """The library refused a frame (too big, malformed) and failed the connection.

        It would close the socket at once, while the client may still be sending: the kernel
        then answers with a reset, and a client that has not read the close frame yet loses
        it. As RFC 6455 (7.1.1) asks, send the close frame and FIN, then read and discard
        until the client closes, for at most `LINGER_SECONDS` and `LINGER_BYTES`.
        """
        if self._linger_left is not None:
            return  # failed already; the library discards what still comes
        self._lost()
        close = self.conn.close_sent
        assert close is not None
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": close.code, "reason": close.reason}
        )
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self._linger()

    def _linger(self) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()
        self._linger_left = LINGER_BYTES
        # The client's FIN ends it sooner: the library's `eof_received` lets the transport
        # close then.
        self.close_timer = self.loop.call_later(LINGER_SECONDS, transport.close)

    # -- pacing ----------------------------------------------------------------------------

    def throttle(self, seconds: float) -> None:
        """Read nothing from this connection for `seconds`: the client's frames wait in the
        kernel's buffers, and TCP then holds the sender back. The frames of the current read
        after this one wait too, whole (see _deliver_frames). A later call while paused sets
        the end of the pause anew."""
        transport = self.transport
        if transport.is_closing():
            return
        transport.pause_reading()
        # Marked as uvicorn's own pause, so that a close the session sends meanwhile resumes
        # reading (uvicorn does that to read the client's answer): otherwise the client's
        # unread frames would make the kernel reset the connection and lose the close frame.
        self.read_paused = True
        # The wait of a chunk's last frame covers the frames before it: keep the latest.
        self._resume_at = self.loop.time() + seconds
        if self._throttle is None:
            metrics.THROTTLED.inc()
            self._throttle = self.loop.call_at(self._resume_at, self._unthrottle)

    def _unthrottle(self) -> None:
        if self._resume_at - self.loop.time() > 0.001:  # a later frame asked for longer
            self._throttle = self.loop.call_at(self._resume_at, self._unthrottle)
            return
        self._throttle = None
        if self.transport.is_closing():
            return
        held, self._held = self._held, b""
        if held:
            self.data_received(held)  # may pace again, and hold what is left again
            if self._throttle is not None:
                return
        self.read_paused = False
        self.transport.resume_reading()

    def backlogged(self) -> bool:
        """Whether the transport holds bytes it has not written (it reported a pause)."""
        return not self.writable.is_set()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._throttle is not None:
            self._throttle.cancel()
            self._throttle = None
        self._lost()
        super().connection_lost(exc)

    def _lost(self) -> None:
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost()

    def direct_fd(self) -> int | None:
        """A descriptor of this connection's socket for the room's direct writes, or None
        where there is none to be had. From now on the transport writes through: with a
        high-water mark of 0 it sends at once, and reports `pause_writing` as soon as it has
        to keep a byte, so that no direct write can overtake what it holds (fanout.py).

        The descriptor is a duplicate, closed by its owner: while it is open, the number
        cannot be given to another connection, whatever the transport does with its own.

        Under TLS there is none: the transport encrypts, and its "socket" is the TCP socket
        under the TLS stream, where a frame written as it is would be plaintext amid the
        records (the client fails with a TLS error and drops the connection). The check asks
        the transport, not the scope's scheme: behind a TLS-terminating proxy that says so in
        X-Forwarded-Proto, uvicorn gives the scope "wss" while this connection is plain.
        Each call counts the connection on its path (`tandem_ws_write_path_total`).
        """
        transport = self.transport
        fd: int | None = None
        sock = transport.get_extra_info("socket")
        if transport.get_extra_info("ssl_object") is not None:
            how = "through the transport (TLS)"
        elif sock is None:
            how = "through the transport (no socket)"
        else:
            try:
                fd = os.dup(sock.fileno())
            except (OSError, ValueError):  # out of descriptors, or the socket closed already
                how = "through the transport (no descriptor)"
            else:
                if os.get_blocking(fd):  # never so for an event loop's socket; never block it
                    os.close(fd)
                    fd = None
                    how = "through the transport (blocking socket)"
                else:
                    transport.set_write_buffer_limits(high=0)
                    how = "directly to its socket"
        (metrics.WRITE_TRANSPORT if fd is None else metrics.WRITE_DIRECT).inc()
        _log.debug("ws client=%s:%s: the room writes %s", *(self.client or ("?", "?")), how)
        return fd

    def release_handshake(self) -> None:
        """Drop the opening handshake's request, response and the scope's copy of its headers
        (a few KB): uvicorn reads them only until the connection is accepted, the session
        until it has authenticated, and a sync connection may live for hours."""
        if self.handshake_complete:
            self.request = None  # type: ignore[assignment]
            self.response = None  # type: ignore[assignment]
            self.scope["headers"] = []
            conn = self.conn
            if conn.state is OPEN and not conn.reader.buffer and self._library_between_frames():
                # The library's parser keeps the request as a local of its opening-handshake
                # generator; a fresh frame parser, started between frames, does not.
                conn.parser = Protocol.parse(conn)
                next(conn.parser)

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
