"""Fanout: one frame written to a set of peers, the room's per-message write.

A peer whose socket Tandem holds a descriptor of (`Peer.fd`) and whose transport has nothing
buffered takes the frame straight from `os.write`, called by `map` over a tuple of
descriptors: no Python frame, no transport and no per-peer bookkeeping per delivery, only the
system call. That is the whole cost left once the frame is built once: the event loop's own
write path (buffer the bytes, queue the stream, write at the end of the iteration) spent more
user CPU per delivery than the rest of an update's handling put together.

Writing past the transport is safe because it cannot hold anything back that should come
first: `WireProtocol.direct_fd` sets the transport's high-water mark to zero, so its writes are
made at once, and the first byte it has to keep makes it report `pause_writing`; the peer is
then written to through its transport (`Peer.write`) until the buffer has drained. A direct
write that the socket takes only partly or not at all hands the rest to the transport, which
keeps the order and reports the backlog the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from itertools import repeat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.rooms.peer import Peer


# Up to this many descriptors, `write_all` loops in Python (see there).
_FEW = 4


class Fanout:
    """The peers of one broadcast, split once per change of membership or backlog."""

    __slots__ = ("fds", "direct", "writes", "size")

    def __init__(self, peers: Iterable[Peer]) -> None:
        fds: list[int] = []
        direct: list[Peer] = []
        writes: list[Callable[[bytes], None]] = []
        for peer in peers:
            if peer.closed:
                continue
            if peer.fd is not None and not peer.backlogged:
                fds.append(peer.fd)
                direct.append(peer)
            else:
                writes.append(peer.write)
        self.fds = tuple(fds)
        self.direct = tuple(direct)  # the peer of each descriptor, for the rare slow path
        self.writes = tuple(writes)
        self.size = len(fds) + len(writes)

    def send(self, frame: bytes) -> None:
        """Write `frame` to every peer; never waits, never raises for one peer's trouble."""
        if self.fds:
            written = write_all(self.fds, frame)
            if written.count(len(frame)) != len(written):
                self._settle(frame, written)
        for write in self.writes:
            try:
                write(frame)
            except RuntimeError:
                pass  # its transport closed a moment ago; its session is leaving the room

    def _settle(self, frame: bytes, written: list[int | OSError]) -> None:
        """Hand what a socket did not take to its transport, in order; cut broken ones."""
        whole = len(frame)
        for peer, result in zip(self.direct, written, strict=True):
            if result == whole:
                continue
            if isinstance(result, int):
                peer.write_rest(frame[result:])
            elif isinstance(result, BlockingIOError):
                peer.write_rest(frame)
            else:
                peer.lost(result)


def write_all(fds: tuple[int, ...], frame: bytes) -> list[int | OSError]:
    """`os.write(fd, frame)` for each descriptor, in order: what each took, or its error.

    `map` drives the calls from C. An error ends a `map`, so the iterator is shared and a new
    `map` goes on after the descriptor that failed; `list.extend` keeps what came before.
    For a few descriptors (a small room) a plain loop costs less than setting that up.
    """
    written: list[int | OSError] = []
    if len(fds) <= _FEW:
        for fd in fds:
            try:
                written.append(os.write(fd, frame))
            except OSError as exc:
                written.append(exc)
        return written
    remaining = iter(fds)
    while True:
        try:
            written.extend(map(os.write, remaining, repeat(frame)))
            return written
        except OSError as exc:
            written.append(exc)
