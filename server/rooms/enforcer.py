"""Access taken away takes effect on connections already open.

When access changes (server/access_events.py), every open connection is checked again against
the rules and the revoked token ids: one that may no longer read its document is closed with
4403 and a reason, one that may now only read is switched to read-only (its updates are
dropped from then on, as any read-only peer's are), and one whose token was revoked is closed.
Rules are read once per change and each document's placement once per room, so a change costs
a few queries and a pass over the connections, not a query each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.access import AccessControl, lowest
from server.access_events import AccessChange
from server.auth import AuthError, Principal
from server.persistence.tables import revoked_tokens, share_links
from server.persistence.users import prune_revoked
from server.persistence.workspace import now
from server.rooms.registry import Registry

log = logging.getLogger("tandem.access")

WITHDRAWN = 4403


@dataclass(frozen=True, slots=True)
class Admission:
    read_only: bool
    identity: dict[str, Any] | None  # what presence shows for the connection (None: as sent)


SHARE_IDENTITY = {"id": "share-link", "name": "share link (read-only)", "department": None}


async def admit(access: AccessControl, principal: Principal, doc_id: str) -> Admission:
    """Whether `principal` may open `doc_id` over the socket, and how: AuthError 4401 for a
    disabled user, 4403 without read access; read-only unless token and rules allow writes."""
    if not principal.may_open(doc_id):
        raise AuthError(4403, "token is not valid for this document")
    if not access.enabled:
        return Admission(principal.read_only, None)
    if principal.share:
        return Admission(True, dict(SHARE_IDENTITY))
    person = await access.person(principal.user)
    if not person.active:
        raise AuthError(4401, "this user is disabled")
    level = await access.document(principal.user, doc_id)
    if level == "none":
        raise AuthError(4403, "you have no access to this document")
    identity = {
        "id": person.name,
        "name": person.display_name or person.name,
        "department": person.department,
    }
    return Admission(principal.read_only or level == "read", identity)


class Enforcer:
    def __init__(
        self, registry: Registry, access: AccessControl, *, max_connections_per_user: int = 0
    ) -> None:
        self.registry = registry
        self.access = access
        self.revoked: set[str] = set()
        # Open connections per signed-in user, against `max_connections_per_user` (0: none).
        self.max_connections_per_user = max_connections_per_user
        self._connections: dict[str, int] = {}

    def connected(self, principal: Principal) -> bool:
        """Count a new connection of `principal`; False (not counted) past the limit. Only
        signed-in users are counted: without sign-in everyone is the one local user."""
        if not self.access.enabled or principal.share:
            return True  # a share link's viewers are anonymous: no user to count them for
        held = self._connections.get(principal.user, 0)
        if self.max_connections_per_user and held >= self.max_connections_per_user:
            return False
        self._connections[principal.user] = held + 1
        return True

    def disconnected(self, principal: Principal) -> None:
        if not self.access.enabled or principal.share:
            return
        held = self._connections.get(principal.user, 0) - 1
        if held > 0:
            self._connections[principal.user] = held
        else:
            self._connections.pop(principal.user, None)

    def is_revoked(self, token_id: str | None) -> bool:
        return token_id is not None and token_id in self.revoked

    async def load_revoked(self, engine: AsyncEngine) -> None:
        """The token ids revoked before this process started: signed-out tokens that have
        not expired yet, and revoked share links."""
        stamp = now()
        async with engine.begin() as conn:
            await prune_revoked(conn)  # tokens that expired need no list
        async with engine.connect() as conn:
            signed_out = await conn.execute(
                select(revoked_tokens.c.jti).where(
                    or_(revoked_tokens.c.expires_at.is_(None), revoked_tokens.c.expires_at > stamp)
                )
            )
            self.revoked.update(row.jti for row in signed_out)
            links = await conn.execute(
                select(share_links.c.id).where(share_links.c.revoked_at.is_not(None))
            )
            self.revoked.update(row.id for row in links)

    async def apply(self, change: AccessChange) -> None:
        self.revoked |= change.revoked
        for doc_id in change.deleted:
            self.registry.deleted(doc_id, "document was deleted")
        if change.rules:
            self.access.changed()
        if not self.access.enabled:
            return
        for doc_id, room in list(self.registry.rooms.items()):
            peers = [peer for peer in room.peers if not peer.closed and peer.principal]
            if not peers:
                continue
            placement = await self.access.placement(doc_id) if change.rules else None
            for peer in peers:
                principal = peer.principal
                if principal is None or peer.closed:
                    continue
                if self.is_revoked(principal.token_id):
                    log.info("peer %d doc=%s closed: its token was revoked", peer.id, doc_id)
                    peer.close(WITHDRAWN, "access revoked: this token or link was revoked")
                    continue
                if placement is None:
                    continue
                level = await self.access.document(principal.user, doc_id, placement)
                if principal.read_only:
                    level = lowest(level, "read")
                if level == "none":
                    log.info("peer %d doc=%s user=%s closed: no access", peer.id, doc_id,
                             principal.user)
                    peer.close(WITHDRAWN, "access to this document was withdrawn")
                elif level == "read" and not peer.read_only:
                    log.info("peer %d doc=%s user=%s is read-only now", peer.id, doc_id,
                             principal.user)
                    peer.read_only = True
                elif level == "write" and peer.read_only:
                    peer.read_only = False
