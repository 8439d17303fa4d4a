"""Storing events and the notifications they make, inside the caller's transaction.

A notification never tells anyone about a document they cannot read: each recipient is
checked against the access rules, then against their preferences (muted documents, kinds
turned off). The event itself is stored in any case (webhooks get every event).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import weakref
from collections.abc import Sequence

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.access import AccessControl, at_least
from server.notifications import load_preferences
from server.persistence.tables import events, notifications
from server.sidecar.derive import NewEvent, name

log = logging.getLogger("tandem.sidecar")


NOTIFICATIONS_CHANNEL = "tandem_notifications"

_writing: weakref.WeakKeyDictionary[AsyncEngine, asyncio.Lock] = weakref.WeakKeyDictionary()


def writing(engine: AsyncEngine) -> asyncio.Lock:
    """Held while events are written to this database from this process: readers follow
    events by id (webhooks), and on PostgreSQL two transactions inserting at once could
    commit their ids out of order."""
    lock = _writing.get(engine)
    if lock is None:
        lock = _writing[engine] = asyncio.Lock()
    return lock


async def emit(conn: AsyncConnection, new: Sequence[NewEvent], access: AccessControl) -> list[int]:
    """Store the events whose keys are new, and a notification for each recipient who may
    read the document and wants to hear of it. Returns the new notifications' ids."""
    if not new:
        return []
    for event in new:
        event.key = _fits(event.key)
        event.recipients = {r for r in event.recipients if name(r)}
    keys = [e.key for e in new]
    known: set[str] = set()
    for i in range(0, len(keys), 500):
        rows = await conn.execute(select(events.c.key).where(events.c.key.in_(keys[i : i + 500])))
        known.update(row.key for row in rows)
    fresh: dict[str, NewEvent] = {}
    for event in new:
        if event.key not in known:
            fresh.setdefault(event.key, event)
    if not fresh:
        return []
    prefs = await load_preferences(conn, {r for e in fresh.values() for r in e.recipients})
    made: list[int] = []
    for event in fresh.values():
        result = await conn.execute(
            insert(events).values(
                key=event.key,
                kind=event.kind,
                doc_id=event.doc_id,
                task_id=event.task_id,
                message_id=event.message_id,
                actor=event.actor,
                data=event.data,
                created_at=event.created_at,
            )
        )
        event_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        for user in sorted(event.recipients):
            if not prefs[user].wants(event.kind, event.doc_id):
                continue
            if not await _may_read(access, user, event):
                continue
            note = await conn.execute(
                insert(notifications).values(
                    event_id=event_id,
                    user_name=user,
                    kind=event.kind,
                    doc_id=event.doc_id,
                    created_at=event.created_at,
                )
            )
            made.append(int(note.inserted_primary_key[0]))  # type: ignore[index]
    if made and conn.dialect.name == "postgresql":
        # Delivered at commit: servers' live streams read the new notifications at once.
        await conn.execute(text(f"NOTIFY {NOTIFICATIONS_CHANNEL}"))
    return made


KEY_MAX = 400  # events.key


def _fits(key: str) -> str:
    """A key as stored: one longer than the column keeps its start and a digest of it all."""
    if len(key) <= KEY_MAX:
        return key
    return key[: KEY_MAX - 65] + "#" + hashlib.sha256(key.encode()).hexdigest()


async def _may_read(access: AccessControl, user: str, event: NewEvent) -> bool:
    if not access.enabled:
        return True
    person = await access.person(user)
    if not person.active:
        return False
    if event.doc_id:
        return at_least(await access.document(user, event.doc_id), "read")
    if event.folder_id is not None:
        return at_least(await access.folder(user, event.folder_id), "read")
    return False
