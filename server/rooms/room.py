"""Room: one live document, its peers and their presence; the per-message hot path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from pycrdt import Doc, TransactionEvent, get_state, get_update

from server import metrics
from server.metrics import TALLY
from server.origin import Origin
from server.rooms.awareness import Awareness, RemoteOwner
from server.rooms.durable import Acknowledgements, Ledger
from server.rooms.fanout import Fanout
from server.rooms.peer import Peer
from server.rooms.wire import frame_binary, frame_payload, update_frame
from shared.protocol import (
    MSG_AWARENESS,
    MSG_QUERY_AWARENESS,
    MSG_SYNC,
    SYNC_STEP1,
    SYNC_UPDATE,
    AwarenessEntry,
    ProtocolError,
    decode_message,
    encode_awareness,
    encode_awareness_update,
    encode_sync_step1,
    encode_sync_step2,
)

log = logging.getLogger("tandem.rooms")

# Called with (doc id, effective update, origin) for every change; the write-behind log.
UpdateSink = Callable[[str, bytes, Origin], None]
# Called with the size of a client's update before it is applied: True when the log cannot
# take that much more now (the database is down and its queue is at its bound).
Backpressure = Callable[[int], bool]
# Called with (doc id, kind, frame, update) for every change this process makes to the room,
# so other processes hosting the document hear it (server/rooms/broker.py); `update` is the
# update a sync frame carries, None for presence.
Publish = Callable[[str, bytes, bytes, bytes | None], None]
RELAY_UPDATE = b"u"
RELAY_PRESENCE = b"a"
T = TypeVar("T")

_NOT_CRDT_ERRORS = (KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit)
# An update with no structs and no deletions: what a client that has nothing new sends as its
# sync step 2. Applying it would change nothing, and in a cold room it would force a warm-up.
EMPTY_UPDATE = b"\x00\x00"
EMPTY_STATE_VECTOR = b"\x00"
UPDATE_PREFIX = bytes((MSG_SYNC, SYNC_UPDATE))
# Senders whose "everyone but me" is kept: a room usually has one or two active writers.
_SENDERS_KEPT = 4
# 1013 "try again later": y-websocket reconnects and sends what the room lacks again.
FULL_CODE = 1013
FULL_REASON = "edits cannot be stored now; try again later"


class LoadFailed(Exception):
    """The document could not be loaded; nothing was written and no room was created."""


class RejectedFrame(Exception):
    """A frame that closes the connection that sent it; the room is untouched."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Room:
    """A pycrdt document shared by a set of peers.

    The observer is attached in the constructor, before anything can write to the document,
    and captures the effective update of each transaction: what actually changed, without
    duplicates. That one capture feeds both the broadcast and the update log.

    A loaded room starts *cold*: it keeps the stored state as bytes and answers sync step 1
    from them (a new client gets those very bytes), so the first client of a big document
    does not wait while pycrdt integrates it. The document is built on first need: the first
    update, a server-side edit, or any use of `doc`. A room that is only read never builds it.
    """

    def __init__(
        self,
        doc_id: str,
        sink: UpdateSink,
        *,
        max_bytes: int = 0,
        presence_interval: float = 0,
        full: Backpressure | None = None,
        ledger: Ledger | None = None,
        publish: Publish | None = None,
    ) -> None:
        self.doc_id = doc_id
        # Other processes hosting the document (None: this process is alone).
        self._publish = publish
        self._remote_owners: dict[str, RemoteOwner] = {}
        # The writer's numbering of what the sink was handed, for durable peers' acknowledgements
        # (None: they get none).
        self._ledger = ledger
        # Asked before a client's update is applied; a yes refuses it (see `_admit`).
        self._full = full
        # Seconds between two presence relays (0: relay each change at once; needs a
        # running event loop otherwise). Changes in between wait in `_presence_pending`.
        self.presence_interval = presence_interval
        self._presence_pending: dict[int, AwarenessEntry] | None = None
        self._presence_sent = -float("inf")  # the loop's time of the last relay
        # A ceiling on the document's encoded size (0: none). `_size` is an upper bound of
        # it: the stored state plus every effective update since, deletions not subtracted;
        # only when it passes the ceiling is the real size measured.
        self.max_bytes = max_bytes
        self._size = 0
        self._size_measured = False  # `_size` is the real size: nothing changed since
        self._doc: Doc[Any] = Doc()
        # In join order: the fan-out then writes to the sockets in the order they were
        # opened, which costs the kernel (and a client process holding many of them)
        # measurably less than hash order.
        self.peers: dict[Peer, None] = {}
        # Who a broadcast goes to, split once (see fanout.py) and kept until a peer joins,
        # leaves or changes between direct and buffered writes: everyone, and everyone but
        # each of the last few senders.
        self._everyone: Fanout | None = None
        self._all_but: dict[Peer, Fanout] | None = None
        self.awareness = Awareness()
        self._sink = sink
        self._effective: bytes | None = None
        # Client updates are integrated on pycrdt's Rust document directly (`_integrate`),
        # and the capture observes it directly: for a small update, pycrdt's Python wrappers
        # (a Transaction object and its bookkeeping, a partial around each callback) cost
        # twice as much as the integration itself (about 9 µs against 3 µs, measured).
        # Server-side edits go through `doc.transaction()` as usual; the capture sees both.
        self._crdt = self._doc._doc
        self._subscription = self._crdt.observe(self._capture)
        self._cold: bytes | None = None  # stored state not yet applied to `_doc`
        self._cold_vector = EMPTY_STATE_VECTOR
        self.broken: str | None = None  # why the stored state could not be applied
        self.deleted = False  # soft-deleted: no one may join; its peers were sent away

    def _capture(self, event: TransactionEvent) -> None:
        self._effective = event.update

    # -- loading -------------------------------------------------------------------------

    def load(self, state: bytes, state_vector: bytes | None = None) -> None:
        """Take the stored state, to be applied on first need; it never reaches the sink
        (it is stored already). `state_vector` is the state's, if the caller computed it.

        Raises ValueError if the state does not decode.
        """
        if state:
            self._cold_vector = bytes(get_state(state)) if state_vector is None else state_vector
            self._cold = state
            self._size = len(state)

    @property
    def cold(self) -> bool:
        return self._cold is not None

    @property
    def doc(self) -> Doc[Any]:
        """The live document, built from the stored state first if the room is cold.

        Raises LoadFailed if the stored state cannot be applied.
        """
        if self._cold is not None or self.broken is not None:
            self.warm()
        return self._doc

    def warm(self) -> None:
        """Apply the stored state now. Raises LoadFailed (for good) if it cannot be applied."""
        if self.broken is not None:
            raise LoadFailed(self.broken)
        state, self._cold = self._cold, None
        if state is None:
            return
        try:
            self._integrate(state)
        except BaseException as exc:
            if isinstance(exc, _NOT_CRDT_ERRORS):
                raise
            self.broken = f"stored state of {self.doc_id} does not apply: {_short(exc)}"
            log.error("%s", self.broken)
            raise LoadFailed(self.broken) from exc
        finally:
            self._effective = None

    # -- writes ----------------------------------------------------------------------------

    def apply_update(
        self, update: bytes, origin: Origin, sender: Peer | None = None
    ) -> bytes | None:
        """Apply `update`; broadcast and log the effective change. Return it (None: no-op).

        Raises RejectedFrame when pycrdt cannot decode or integrate the update.
        """
        if update == EMPTY_UPDATE:
            return None
        if self._cold is not None or self.broken is not None:
            try:
                self.warm()
            except LoadFailed as exc:
                raise RejectedFrame(1011, "document could not be loaded") from exc
        if self.max_bytes and self._size + len(update) > self.max_bytes:
            if not self._size_measured:  # what deletions freed counts again
                self._size = len(self._doc.get_update())
                self._size_measured = True
            if self._size + len(update) > self.max_bytes:
                raise RejectedFrame(1009, "document is over its size limit")
        self._effective = None
        try:
            self._integrate(update)
        except BaseException as exc:
            if isinstance(exc, _NOT_CRDT_ERRORS):
                raise
            # pycrdt raises ValueError/RuntimeError, and Rust panics arrive as PanicException,
            # a BaseException: all of them mean this update is unusable. pycrdt cannot roll
            # back, so blocks integrated before the failure stay in the document; they are
            # propagated like any change, because a room that differs from its peers and its
            # log makes later edits next to that content diverge and get lost.
            partial = self._effective
            self._effective = None
            if partial is not None:
                self._propagate(partial, origin, sender)
            raise RejectedFrame(1007, f"update rejected: {_short(exc)}") from exc
        effective = self._effective
        if effective is None:
            return None
        self._effective = None
        self._propagate(effective, origin, sender)
        return effective

    def _integrate(self, update: bytes) -> None:
        """What `Doc.apply_update` does, on the Rust document: one transaction, committed
        even when the update fails half-way, so the capture sees what was integrated."""
        if self._doc._txn is not None:  # inside `edit`: join its transaction
            self._doc.apply_update(update)
            return
        crdt = self._crdt
        txn = crdt.create_transaction()
        try:
            crdt.apply_update(txn, update)
        finally:
            try:
                txn.commit()
            finally:
                txn.drop()

    def edit(self, origin: Origin, change: Callable[[Doc[Any]], T]) -> T:
        """Run `change(doc)` in one transaction, as a server-side edit by `origin`.

        The effective update goes the same way as a client's: to every peer and to the log.
        """
        self._effective = None
        try:
            with self.doc.transaction():
                return change(self.doc)
        finally:
            # Also when `change` raised half-way: what it wrote is in the document (there
            # is no rollback), so it must reach the peers and the log like anything else.
            effective = self._effective
            self._effective = None
            if effective is not None:
                self._propagate(effective, origin, None)

    def _propagate(self, effective: bytes, origin: Origin, sender: Peer | None) -> None:
        self._size += len(effective)
        self._size_measured = False
        frame = update_frame(effective)
        self.broadcast(frame, sender)
        self._sink(self.doc_id, effective, origin)
        if self._publish is not None:
            self._publish(self.doc_id, RELAY_UPDATE, frame, effective)
        TALLY.updates_applied += 1

    # -- other processes (server/rooms/broker.py) ----------------------------------------

    def apply_remote(self, update: bytes, frame: bytes | None = None) -> bytes | None:
        """Apply an update that another process's room applied (or the stored state, after
        an outage) and relay it to every peer here: as `frame`, the bytes that process
        wrote to its own peers, or else as a frame of what changed. It is neither logged
        (the process that took it from its client stores it) nor published again.

        Raises LoadFailed if the room cannot be built, ValueError if pycrdt refuses the update.
        """
        if self._cold is not None or self.broken is not None:
            self.warm()
        self._effective = None
        try:
            self._integrate(update)
        except BaseException as exc:
            if isinstance(exc, _NOT_CRDT_ERRORS):
                raise
            partial, self._effective = self._effective, None
            if partial is not None:
                self.broadcast(update_frame(partial))
            raise ValueError(_short(exc)) from exc
        effective, self._effective = self._effective, None
        if effective is None:
            return None
        self._size += len(effective)
        self._size_measured = False
        self.broadcast(frame if frame is not None else update_frame(effective))
        TALLY.updates_applied += 1
        return effective

    def remote_presence(self, frame: bytes, origin: str) -> None:
        """Presence relayed by process `origin`: kept for clients who join here later, and
        relayed to every peer as the same bytes."""
        owner = self._remote_owners.get(origin)
        if owner is None:
            owner = self._remote_owners[origin] = RemoteOwner(origin)
        try:
            message = decode_message(frame_payload(frame))
            if message.kind != MSG_AWARENESS or not self.awareness.apply_remote(
                message.payload, owner
            ):
                return
        except (ProtocolError, IndexError) as exc:
            log.warning("presence from process %s for %s ignored: %s", origin, self.doc_id, exc)
            return
        self.broadcast(frame)

    def local_presence(self) -> bytes | None:
        """A frame with the presence of this process's own clients, if any."""
        payload = self.awareness.local_snapshot()
        return None if payload is None else frame_binary(encode_awareness(payload))

    def forget_origin(self, origin: str) -> None:
        """Process `origin` is gone: its clients' presence goes, for every peer here."""
        owner = self._remote_owners.pop(origin, None)
        if owner is None:
            return
        gone = self.awareness.remove(owner)
        if gone:
            self.broadcast(frame_binary(encode_awareness(encode_awareness_update(gone))))

    def broadcast(self, frame: bytes, exclude: Peer | None = None) -> None:
        """Write the same frame bytes to every peer but `exclude`; never waits."""
        fanout = self._fanout(exclude)
        fanout.send(frame)
        if fanout.size:
            TALLY.frames_out += fanout.size
            TALLY.bytes_out += fanout.size * len(frame)

    def _fanout(self, exclude: Peer | None) -> Fanout:
        if exclude is None:
            if self._everyone is None:
                self._everyone = Fanout(self.peers)
            return self._everyone
        if self._all_but is None:
            self._all_but = {}
        fanout = self._all_but.get(exclude)
        if fanout is None:
            if len(self._all_but) >= _SENDERS_KEPT:
                self._all_but.clear()
            fanout = Fanout(peer for peer in self.peers if peer is not exclude)
            self._all_but[exclude] = fanout
        return fanout

    def rewired(self) -> None:
        """Who gets a broadcast, or how, changed: split the peers anew on the next one."""
        self._everyone = self._all_but = None

    # -- connections -----------------------------------------------------------------------

    def join(self, peer: Peer) -> None:
        """Add `peer` and greet it: our state vector (sync step 1) and everyone's presence."""
        self.peers[peer] = None
        self.rewired()
        greeting = frame_binary(encode_sync_step1(self.state_vector()))
        presence = self.awareness.snapshot()
        if presence is not None:
            greeting += frame_binary(encode_awareness(presence))
        peer.send(greeting)

    def close_all(self, code: int, reason: str) -> None:
        """Close every peer's connection with `code` and `reason` (e.g. the document was
        deleted). Each session then leaves the room as on any close."""
        for peer in list(self.peers):
            peer.close(code, reason)

    def leave(self, peer: Peer) -> None:
        """Take `peer` out of the room (again: a no-op) and clear its presence for everyone.

        Its socket descriptor is closed once no broadcast can name it any more.
        """
        if peer in self.peers:
            del self.peers[peer]
            self.rewired()
        peer.release()
        gone = self.awareness.remove(peer)
        if gone:
            self._relay_presence(gone, None, at_once=True)
        if peer.acks is not None:
            peer.acks.drop()

    def _relay_presence(
        self, entries: list[AwarenessEntry], payload: bytes | None, *, at_once: bool = False
    ) -> None:
        """Relay presence changes to every peer, at most one frame per `presence_interval`.

        Echoed to the sender as well: y-websocket reconnects after 30 s without a message,
        and its 15 s awareness renewal is what keeps a lone client alive. A change that comes
        an interval or more after the last relay goes out at once; later ones wait for the
        end of the interval and go out together, the newest entry of each client only, so a
        cursor that moves a hundred times a second costs its room's peers a frame per
        interval. `payload`: `entries` encoded already, if the caller has them so.
        """
        pending = self._presence_pending
        if pending is not None:  # a relay is due at the end of this interval: join it
            for entry in entries:
                pending[entry.client_id] = entry
            if at_once:
                self._flush_presence()
            return
        interval = self.presence_interval
        if interval > 0 and not at_once:
            loop = asyncio.get_running_loop()
            now = loop.time()
            if now - self._presence_sent < interval:
                self._presence_pending = {entry.client_id: entry for entry in entries}
                loop.call_at(self._presence_sent + interval, self._flush_presence)
                return
            self._presence_sent = now
        if payload is None:
            payload = encode_awareness_update(entries)
        self._send_presence(frame_binary(encode_awareness(payload)))

    def _flush_presence(self) -> None:
        pending, self._presence_pending = self._presence_pending, None
        if pending:  # None: flushed early, by a leave
            self._presence_sent = asyncio.get_running_loop().time()
            entries = list(pending.values())
            self._send_presence(frame_binary(encode_awareness(encode_awareness_update(entries))))

    def _send_presence(self, frame: bytes) -> None:
        self.broadcast(frame)
        if self._publish is not None:
            self._publish(self.doc_id, RELAY_PRESENCE, frame, None)

    def receive(self, peer: Peer, data: bytes) -> None:
        """Handle one binary frame from `peer`. Raises RejectedFrame for bad input."""
        # Nearly every frame is an update of fewer than 128 bytes: a two-byte prefix and a
        # one-byte length. Taken apart here, it skips the general decoder's calls.
        size = len(data) - 3
        if 0 <= size < 0x80 and data[2] == size and data[:2] == UPDATE_PREFIX:
            if not peer.read_only:
                update = data[3:]
                if self._full is not None and self._full(size):
                    self._admit(update)
                self.apply_update(update, peer.origin, peer)
                if peer.durable:
                    self._acknowledge(peer)
                return
        try:
            message = decode_message(data)
        except ProtocolError as exc:
            raise RejectedFrame(1002, f"malformed message: {exc}") from exc
        kind = message.kind
        if kind == MSG_SYNC:
            if message.sync == SYNC_STEP1:
                peer.send(frame_binary(encode_sync_step2(self._diff(message.payload))))
            elif not peer.read_only:
                update = message.payload
                if self._full is not None and self._full(len(update)):
                    self._admit(update)
                self.apply_update(update, peer.origin, peer)
                if peer.durable:
                    self._acknowledge(peer)
            else:
                metrics.READ_ONLY_WRITES_DROPPED.inc()
        elif kind == MSG_AWARENESS:
            try:
                relay = self.awareness.apply(message.payload, peer)
            except ProtocolError as exc:
                raise RejectedFrame(1002, f"malformed awareness: {exc}") from exc
            if relay is not None:
                self._relay_presence(*relay)
        elif kind == MSG_QUERY_AWARENESS:
            presence = self.awareness.snapshot()
            if presence is not None:
                peer.send(frame_binary(encode_awareness(presence)))
        # Auth messages from clients carry nothing the server acts on.

    def _acknowledge(self, peer: Peer) -> None:
        """`peer` (durable) sent an update, applied or already known: acknowledge the state
        vector as it is now once the writer has committed everything queued so far (every
        update it covers was queued by then; see server/rooms/durable.py)."""
        ledger = self._ledger
        if ledger is None:
            return
        acks = peer.acks
        if acks is None:
            acks = peer.acks = Acknowledgements(peer, ledger)
        acks.note(ledger.mark(), self.state_vector())

    def _admit(self, update: bytes) -> None:
        """The log is full: refuse a client update that would add content, before it is
        applied, so nothing of it is half taken (RejectedFrame 1013: its client keeps it and
        sends it again when it reconnects).

        An update that only repeats what the room has, or deletes (a reconnecting client's
        sync step 2 carries its whole delete set), still passes: readers stay in sync, and
        what deletions can add to the queue is bounded by the document's content.
        """
        if update == EMPTY_UPDATE:
            return
        try:
            # The part of the update the room lacks (about 0.5 µs for a keystroke); an update
            # starts with the number of clients it has structs of.
            missing = bytes(get_update(update, self.state_vector()))
        except BaseException as exc:
            if isinstance(exc, _NOT_CRDT_ERRORS):
                raise
            return  # does not decode: apply_update rejects it with 1007
        if missing[:1] != b"\x00":
            raise RejectedFrame(FULL_CODE, FULL_REASON)

    def state_vector(self) -> bytes:
        return self._cold_vector if self._cold is not None else self._doc.get_state()

    def _diff(self, state_vector: bytes) -> bytes:
        cold = self._cold
        if cold is not None and state_vector == EMPTY_STATE_VECTOR:
            return cold  # a new client: the stored bytes as they are
        try:
            if cold is not None:
                return get_update(cold, state_vector)
            return self._doc.get_update(state_vector)
        except BaseException as exc:
            if isinstance(exc, _NOT_CRDT_ERRORS):
                raise
            raise RejectedFrame(1002, f"bad state vector: {_short(exc)}") from exc

    def encode_state(self) -> bytes:
        """The whole state as one update."""
        return self._cold if self._cold is not None else self.doc.get_update()


def _short(exc: Any) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:80]
