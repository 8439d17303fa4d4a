"""Presence (y-protocols awareness) as one client sees it: its own state and the others'.

Awareness frames carry (client id, clock, JSON state) entries; a receiver keeps an entry whose
clock is newer than the one it has, and `null` means the client left. Stock clients drop a
state not renewed for 30 s, so the owner re-sends it every `RENEW_SECONDS`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from shared.protocol import AwarenessEntry, decode_awareness_update, encode_awareness_update

__all__ = ["OUTDATED_SECONDS", "RENEW_SECONDS", "Presence"]

RENEW_SECONDS = 15.0
OUTDATED_SECONDS = 30.0


class Presence:
    """The awareness states of one document's clients, seen from client `client_id`."""

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.clock = 0
        self.local: dict[str, Any] | None = None
        # client id -> (clock, state or None when it left, when last heard of)
        self._others: dict[int, tuple[int, dict[str, Any] | None, float]] = {}

    def set_local(self, state: dict[str, Any] | None, bump: int = 1) -> bytes:
        """Set (None: remove) the own state; returns the awareness payload announcing it."""
        self.local = None if state is None else dict(state)
        self.clock += bump
        text = "null" if self.local is None else json.dumps(self.local, ensure_ascii=False)
        return encode_awareness_update([AwarenessEntry(self.client_id, self.clock, text)])

    def renew(self, bump: int = 1) -> bytes | None:
        """The payload that renews the own state (None when there is none). `bump` 2 after a
        reconnect: the server told the others we left with our clock + 1."""
        return None if self.local is None else self.set_local(self.local, bump)

    def apply(self, payload: bytes) -> bool:
        """Apply an awareness update from the server; whether any other client's state
        changed. Raises ProtocolError for a malformed payload."""
        now = time.monotonic()
        changed = False
        for entry in decode_awareness_update(payload):
            if entry.client_id == self.client_id:
                continue
            known = self._others.get(entry.client_id)
            state = json.loads(entry.state)
            if not isinstance(state, dict):
                state = None
            if known is not None:
                clock, old, _ = known
                # A leave is taken whatever its clock: when a client removes its state and
                # then disconnects, the server's own leave notice (clock: its last known
                # state's + 1) can replace the client's removal in the server's batch.
                if state is not None and entry.clock <= clock:
                    continue
                if state is None and entry.clock < clock:
                    self._others[entry.client_id] = (clock, None, now)
                    changed = changed or old is not None
                    continue
                changed = changed or old != state
            else:
                changed = changed or state is not None
            self._others[entry.client_id] = (entry.clock, state, now)
        return changed

    def expire(self) -> bool:
        """Drop the states not renewed within OUTDATED_SECONDS; whether any went."""
        cutoff = time.monotonic() - OUTDATED_SECONDS
        stale = [
            cid
            for cid, (_, state, seen) in self._others.items()
            if seen < cutoff and state is not None
        ]
        for cid in stale:
            clock, _, seen = self._others[cid]
            self._others[cid] = (clock, None, seen)
        return bool(stale)

    def forget_others(self) -> bool:
        """Offline: nobody else's state is known any more; whether there were some."""
        had = any(state is not None for _, state, _ in self._others.values())
        self._others.clear()
        return had

    def others(self) -> dict[int, dict[str, Any]]:
        return {cid: state for cid, (_, state, _) in self._others.items() if state is not None}
