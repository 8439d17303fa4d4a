"""Peer: one WebSocket connection's write side, with a bounded send buffer."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from server import metrics
from server.origin import Origin

if TYPE_CHECKING:
    from server.auth import Principal
    from server.rooms.durable import Acknowledgements

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

    Writes never block. The room's fan-out writes to `fd`, a descriptor of the peer's socket,
    while the transport has nothing buffered (see fanout.py), and calls `write` otherwise;
    while the client keeps up that is the transport's own bound method. When the transport
    reports a backlog (`backed_up(True)`, from `pause_writing`), `write` checks the buffer
    after each frame, and a peer whose buffer passes `buffer_limit` is dropped: it is not
    reading. Its Yjs client reconnects and resyncs, which loses nothing, and the room never
    waits for it.
    """

    __slots__ = (
        "acks",
        "backlogged",
        "buffer_limit",
        "client_ids",
        "close",
        "closed",
        "durable",
        "fd",
        "id",
        "identity",
        "origin",
        "principal",
        "read_only",
        "transport",
        "write",
    )

    def __init__(
        self,
        transport: Transport,
        *,
        user: str | None = None,
        read_only: bool = False,
        buffer_limit: int = 32 * 1024 * 1024,
        fd: int | None = None,
        principal: Principal | None = None,
        durable: bool = False,
    ) -> None:
        self.id = next(_ids)
        # Who signed in, with the token's id and scope: what access changes are checked
        # against (server/rooms/enforcer.py). None: not subject to them (unit tests).
        self.principal = principal
        # The `user` field every presence state from this connection carries (id, name,
        # department), whatever the client says; None: relayed as sent (no sign-in).
        self.identity: dict[str, Any] | None = None
        self.transport = transport
        self.write: Callable[[bytes], None] = transport.write
        # A duplicate of the socket's descriptor, owned by the peer (closed by `release`),
        # so that it can never name another connection's socket; None: transport only.
        self.fd = fd
        self.backlogged = False
        self.origin = Origin("ws", user)
        self.read_only = read_only
        # Opened with `?durable=1`: told (MSG_STORED) when its updates are committed; its
        # pending acknowledgements, made by the room on its first update (server/rooms/durable.py).
        self.durable = durable
        self.acks: Acknowledgements | None = None
        self.buffer_limit = buffer_limit
        self.closed = False
        # Awareness client ids this connection announced; cleared for everyone when it leaves.
        self.client_ids: set[int] = set()
        # Ends the connection with a WebSocket close code and reason; set by the session
        # that owns it. Until then (and in unit tests) it cuts the connection.
        self.close: Callable[[int, str], None] = self._cut

    def backed_up(self, yes: bool) -> None:
        """The transport's buffer went over its high-water mark (or back under it)."""
        self.backlogged = yes
        self.write = self._write_checked if yes else self.transport.write

    def write_rest(self, data: bytes) -> None:
        """What a direct write left over: to the transport, which sends it before anything
        written later."""
        try:
            self.write(data)
        except RuntimeError:
            pass  # its transport closed a moment ago

    def lost(self, error: OSError) -> None:
        """A direct write found the connection broken: cut it, as the transport would."""
        if not self.closed:
            self.closed = True
            log.info("peer %s lost: %s", self.id, error.strerror or error)
            self.transport.abort()

    def release(self) -> None:
        """Close the descriptor; the room no longer writes to this peer."""
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def _write_checked(self, frame: bytes) -> None:
        if self.closed:
            return
        self.transport.write(frame)
        if self.transport.get_write_buffer_size() > self.buffer_limit:
            self.drop("send buffer over limit: client is not reading")

    def _cut(self, code: int, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort()

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
