"""Durable acknowledgements: telling a `?durable=1` connection what of its edits is stored.

A y-protocols peer learns that the server has *applied* its updates (y-websocket's "synced"),
never that they are in the database. A connection opened with `?durable=1` also receives
MSG_STORED (shared/protocol.py) with a state vector every update of which is committed.

The writer numbers records as they are queued and commits them in that order, and a room
hands every update it applies to the writer synchronously. So when a durable peer's update
has been applied, the writer's newest number (`Ledger.mark`) and the document's state vector
taken at that moment belong together: every update that vector covers was queued at or before
that number, and once the writer has committed that far the vector can be acknowledged.

Each durable peer has at most one callback registered with the writer at a time (`armed`)
and remembers only the newest (number, vector) noted since (`latest`): a peer that edits
while the database is down keeps two state vectors, not one per keystroke, and a commit that
stores many of its updates costs it one message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from server.rooms.wire import frame_binary
from shared.protocol import encode_stored

if TYPE_CHECKING:
    from server.rooms.peer import Peer


class Ledger(Protocol):
    """What acknowledgements need of the writer (server/persistence/writer.py)."""

    def mark(self) -> int: ...
    def committed(self) -> int: ...
    def when_stored(self, mark: int, callback: Callable[[], None]) -> None: ...


class Acknowledgements:
    """The pending acknowledgements of one durable peer."""

    __slots__ = ("peer", "ledger", "armed", "latest")

    def __init__(self, peer: Peer, ledger: Ledger) -> None:
        self.peer = peer
        self.ledger = ledger
        # What the writer's callback will acknowledge, and the newest noted after it.
        self.armed: tuple[int, bytes] | None = None
        self.latest: tuple[int, bytes] | None = None

    def note(self, mark: int, state_vector: bytes) -> None:
        """Acknowledge `state_vector` once the writer has committed up to `mark`."""
        if self.armed is not None:
            self.latest = (mark, state_vector)  # sent with or after the armed one
            return
        self.armed = (mark, state_vector)
        self.ledger.when_stored(mark, self._stored)

    def drop(self) -> None:
        """The peer left: nothing more is sent, and the vectors are freed now (a callback
        still registered finds nothing to do)."""
        self.armed = self.latest = None

    def _stored(self) -> None:
        armed, latest = self.armed, self.latest
        if armed is None:  # dropped
            return
        self.armed = self.latest = None
        if latest is not None and latest[0] <= self.ledger.committed():
            armed, latest = latest, None  # the newest is stored too: one message for both
        self.peer.send(frame_binary(encode_stored(armed[1])))
        if latest is not None:
            self.note(*latest)
