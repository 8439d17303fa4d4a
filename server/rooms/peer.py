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
    def get_write_buffer_size(self) -> int: ...
    def abort(self) -> None: ...


class Peer:
    """A connected client as a room sees it: a transport to write frames to, and an identity.

    `send` never blocks: it writes to the transport's buffer. A peer whose buffer grows past
    `buffer_limit` is not reading, so it is aborted; its Yjs client reconnects and resyncs,
    which loses nothing, and the room never waits for it.
    """

    __slots__ = ("buffer_limit", "client_ids", "closed", "id", "origin", "read_only", "transport")

    def __init__(
        self,
        transport: Transport,
        *,
        user: str | None = None,
        read_only: bool = False,
        buffer_limit: int = 32 * 1024 * 1024,
    ) -> None:
        self.id = next(_ids)
        self.transport = transport
        self.origin = Origin("ws", user)
        self.read_only = read_only
        self.buffer_limit = buffer_limit
        self.closed = False
        # Awareness client ids this connection announced; cleared for everyone when it leaves.
        self.client_ids: set[int] = set()

    def send(self, frame: bytes) -> None:
        if self.closed:
            return
        transport = self.transport
        if transport.is_closing():
            self.closed = True
            return
        transport.write(frame)
        if transport.get_write_buffer_size() > self.buffer_limit:
            self.drop("send buffer over limit: client is not reading")

    def drop(self, reason: str) -> None:
        """Cut the connection at once; used when a close frame could not get through."""
        if self.closed:
            return
        self.closed = True
        metrics.SLOW_PEERS_DROPPED.inc()
        log.warning("peer %s dropped: %s", self.id, reason)
        self.transport.abort()
