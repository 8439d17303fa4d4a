"""Events and notifications as JSON, and people's notification preferences.

The sidecar writes them (server/sidecar/); the API reads them (server/api/notifications.py),
the webhook and e-mail senders send them. Everyone renders an event with `event_json`, so a
webhook receiver, an e-mail and the live stream say the same thing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from server.persistence.tables import notification_prefs

# What the sidecar tells people about; each kind can be turned off per user.
KINDS = (
    "assigned",  # a task was assigned to you
    "status_changed",  # a task you own or watch changed status
    "message",  # a new message in a discussion you take part in
    "mentioned",  # you were mentioned in a message
    "doc_changed",  # a document you own or watch was edited by someone else (once a burst)
    "file_changed",  # a new version of a file you own or watch
    "due_soon",  # a task you own is due within remind_first_hours
    "due_imminent",  # ... within remind_last_hours
    "overdue",  # a task you own is past due and not done
)
EMAIL_MODES = ("off", "each", "digest")


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # SQLite hands back naive UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_json(row: Any) -> dict[str, Any]:
    """An event row (of `events`) as the JSON webhooks, e-mails and streams carry."""
    return {
        "id": row.id,
        "key": row.key,
        "kind": row.kind,
        "doc_id": row.doc_id,
        "task_id": row.task_id,
        "message_id": row.message_id,
        "actor": row.actor,
        "created_at": iso(row.created_at),
        "data": row.data,
    }


def notification_json(row: Any) -> dict[str, Any]:
    """A notification joined with its event (columns of both; `id`, `read_at` and
    `user_name` are the notification's, `event_id` the event's)."""
    return {
        "id": row.id,
        "event_id": row.event_id,
        "kind": row.kind,
        "doc_id": row.doc_id,
        "task_id": row.task_id,
        "message_id": row.message_id,
        "actor": row.actor,
        "created_at": iso(row.created_at),
        "read": row.read_at is not None,
        "read_at": iso(row.read_at),
        "data": row.data,
    }


@dataclass(frozen=True, slots=True)
class Preferences:
    """What one person wants to hear of: nothing from muted documents, no event of a kind
    turned off, e-mail off, for each event, or as an hourly digest."""

    muted: frozenset[str] = frozenset()
    off: frozenset[str] = frozenset()
    email: str = "off"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def wants(self, kind: str, doc_id: str) -> bool:
        return kind not in self.off and doc_id not in self.muted

    def to_json(self) -> dict[str, Any]:
        return {"muted": sorted(self.muted), "off": sorted(self.off), "email": self.email}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Preferences:
        """Tolerant: what does not fit is left at its default (the API validates input)."""
        if not isinstance(data, Mapping):
            return cls()
        muted = data.get("muted")
        off = data.get("off")
        email = data.get("email")
        return cls(
            muted=frozenset(m for m in muted if isinstance(m, str))
            if isinstance(muted, list)
            else frozenset(),
            off=frozenset(k for k in off if isinstance(k, str))
            if isinstance(off, list)
            else frozenset(),
            email=email if email in EMAIL_MODES else "off",
        )


async def load_preferences(conn: AsyncConnection, users: Iterable[str]) -> dict[str, Preferences]:
    """Each named user's preferences (the defaults for one who never set any)."""
    names = sorted(set(users))
    found: dict[str, Preferences] = {name: Preferences() for name in names}
    if not names:
        return found
    rows = await conn.execute(
        select(notification_prefs.c.user_name, notification_prefs.c.data).where(
            notification_prefs.c.user_name.in_(names)
        )
    )
    for name, data in rows:
        found[name] = Preferences.from_json(data)
    return found
