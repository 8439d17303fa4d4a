"""Peer: one WebSocket connection's write side, with a bounded send buffer."""

from __future__ import annotations

import itertools
import logging
from typing import Protocol

from server import metrics
from server.origin import Origin

log = logging.getLogger("tandem.rooms")
_ids = itertools.count(1)


class Transport(Protocol):
    """The part of an asyncio transport a peer writes to."""

    def write(self, data: bytes) -> None: ...
    def is_closing(self) -> bool: ...
    def abort(self) -> None: ...


class Peer:
    """A connected client as a room sees it: a transport to write frames to, and an identity.

    Writes never block: they go to the transport's buffer. The room's fan-out calls `write`
    (the transport's own bound method) directly. A peer that stops reading is noticed by its
    transport, whose high-water mark is the send buffer limit (see `WireProtocol.on_full`),
    and is then dropped; its Yjs client reconnects and resyncs, which loses nothing, and the
    room never waits for it.
    """

    __slots__ = ("client_ids", "closed", "id", "origin", "read_only", "transport", "write")

    def __init__(
        self, transport: Transport, *, user: str | None = None, read_only: bool = False
    ) -> None:
        self.id = next(_ids)
        self.transport = transport
        self.write = transport.write
        self.origin = Origin("ws", user)
        self.read_only = read_only
        self.closed = False
        # Awareness client ids this connection announced; cleared for everyone when it leaves.
        self.client_ids: set[int] = set()

    def send(self, frame: bytes) -> None:
        """Write one frame to this peer alone, unless its connection is going away."""
        if self.closed:
            return
        if self.transport.is_closing():
            self.closed = True
            return
        self.write(frame)

    def drop(self, reason: str) -> None:
        """Cut the connection at once: the client is not reading, or a close frame could not
        get through."""
        if self.closed:
            return
        self.closed = True
        metrics.SLOW_PEERS_DROPPED.inc()
        log.warning("peer %s dropped: %s", self.id, reason)
        self.transport.abort()
