"""Presence (awareness) states of a room's clients, owned per connection."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from shared.protocol import (
    AwarenessEntry,
    ProtocolError,
    decode_awareness_update,
    encode_awareness_update,
)

if TYPE_CHECKING:
    from server.rooms.peer import Peer

MAX_CLIENT_IDS_PER_PEER = 8
# What a client may say about itself in its state's `user` field; the rest of that field is
# the server's (who signed in).
CLIENT_USER_KEYS = ("color", "colour", "colorLight")


def stamp_identity(state: str, identity: dict[str, Any]) -> str:
    """`state` (awareness JSON) with its `user` field replaced by `identity`, keeping the
    colours a client chose. A state that is not a JSON object is left as it is: it carries
    no name to forge."""
    try:
        value = json.loads(state)
    except ValueError:
        return state
    if not isinstance(value, dict):
        return state
    claimed = value.get("user")
    user = dict(identity)
    if isinstance(claimed, dict):
        for key in CLIENT_USER_KEYS:
            if isinstance(claimed.get(key), str):
                user[key] = claimed[key]
    value["user"] = user
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class RemoteOwner:
    """The clients whose presence came from another process (server/rooms/broker.py)."""

    __slots__ = ("origin", "client_ids")

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.client_ids: set[int] = set()


class Awareness:
    """The latest awareness state of each client id, and which connection owns it.

    A connection may only speak for the client ids it introduced; entries for ids owned by
    another live connection are dropped, so nobody can erase or impersonate someone else.
    """

    def __init__(self) -> None:
        self.states: dict[int, tuple[int, str]] = {}
        self.owners: dict[int, Peer | RemoteOwner] = {}

    def apply(self, payload: bytes, peer: Peer) -> tuple[list[AwarenessEntry], bytes] | None:
        """Apply an update from `peer`; return the entries to relay and the payload that
        carries them (None: nothing to relay)."""
        entries = decode_awareness_update(payload)
        # Checked before anything changes: a rejected frame must leave no state behind.
        # A client id another process spoke for is taken over: the client moved here.
        new_ids = {
            e.client_id
            for e in entries
            if isinstance(self.owners.get(e.client_id), (RemoteOwner, type(None)))
        }
        if len(peer.client_ids) + len(new_ids) > MAX_CLIENT_IDS_PER_PEER:
            raise ProtocolError("too many awareness client ids on one connection")
        kept: list[AwarenessEntry] = []
        identity = peer.identity
        stamped = False
        for entry in entries:
            owner = self.owners.get(entry.client_id)
            if isinstance(owner, RemoteOwner):
                owner.client_ids.discard(entry.client_id)
                owner = None
            elif owner is not None and owner is not peer:
                continue
            if identity is not None and entry.state != "null":
                # Signed-in connections appear as who signed in, whatever they claim.
                entry = entry._replace(state=stamp_identity(entry.state, identity))
                stamped = True
            if owner is None:
                self.owners[entry.client_id] = peer
                peer.client_ids.add(entry.client_id)
            kept.append(entry)
            if entry.state == "null":
                self.states.pop(entry.client_id, None)
            else:
                self.states[entry.client_id] = (entry.clock, entry.state)
        if not kept:
            return None
        unchanged = len(kept) == len(entries) and not stamped
        return kept, payload if unchanged else encode_awareness_update(kept)

    def apply_remote(self, payload: bytes, owner: RemoteOwner) -> bool:
        """Apply presence another process relayed (stamped there already); a client id a
        connection of this process speaks for stays its own. True if anything changed."""
        changed = False
        for entry in decode_awareness_update(payload):
            current = self.owners.get(entry.client_id)
            if current is not None and not isinstance(current, RemoteOwner):
                continue
            if current is not None and current is not owner:
                current.client_ids.discard(entry.client_id)
            changed = True
            if entry.state == "null":
                self.states.pop(entry.client_id, None)
                self.owners.pop(entry.client_id, None)
                owner.client_ids.discard(entry.client_id)
            else:
                self.states[entry.client_id] = (entry.clock, entry.state)
                self.owners[entry.client_id] = owner
                owner.client_ids.add(entry.client_id)
        return changed

    def local_snapshot(self) -> bytes | None:
        """The states of this process's own connections (for other processes)."""
        entries = [
            AwarenessEntry(cid, clock, state)
            for cid, (clock, state) in self.states.items()
            if not isinstance(self.owners.get(cid), RemoteOwner)
        ]
        return encode_awareness_update(entries) if entries else None

    def remove(self, peer: Peer | RemoteOwner) -> list[AwarenessEntry]:
        """Forget `peer`'s clients; return the entries that tell everyone they left."""
        gone = []
        for client_id in peer.client_ids:
            if self.owners.get(client_id) is peer:
                del self.owners[client_id]
                state = self.states.pop(client_id, None)
                # A client that cleared its state itself said goodbye already, with a clock
                # this one would not know: nothing more to announce.
                if state is not None:
                    gone.append(AwarenessEntry(client_id, state[0] + 1, "null"))
        peer.client_ids.clear()
        return gone

    def snapshot(self) -> bytes | None:
        """All known states, for a client that joins or asks."""
        if not self.states:
            return None
        return encode_awareness_update(
            [AwarenessEntry(cid, clock, state) for cid, (clock, state) in self.states.items()]
        )
