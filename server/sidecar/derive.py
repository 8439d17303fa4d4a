"""What a change means: tasks' facts before and after, and the events that follow.

Pure functions over values; the processor (server/sidecar/processor.py) feeds them and
stores what they return. An event's key is made from what happened and the position of the
change that did it, so the same change read again yields the same keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from shared.board import Task
from shared.discussion import Message
from shared.documents import parse_timestamp

EXCERPT = 200  # characters of a message body carried by its event


@dataclass(frozen=True, slots=True)
class TaskFacts:
    """The facts of a task that notifications, reminders and the task list use."""

    title: str
    status: str
    assignee: str | None
    department: str | None
    due: str | None
    due_at: datetime | None
    priority: str
    watchers: tuple[str, ...]
    created_by: str | None


@dataclass(slots=True)
class NewEvent:
    key: str
    kind: str
    doc_id: str
    actor: str | None
    created_at: datetime
    recipients: set[str]
    task_id: str | None = None
    message_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    # A file in no document: who may read the folder hears of it (doc_id is "").
    folder_id: int | None = None


def due_moment(due: str | None, zone: ZoneInfo) -> datetime | None:
    """The moment a task is due, in UTC: a date without a time means the end of that day in
    `zone`; a date-time without an offset is in `zone`. None for junk."""
    if due is None:
        return None
    try:
        parsed = parse_timestamp(due)
    except (ValueError, OverflowError):
        return None
    try:
        if isinstance(parsed, datetime):
            moment = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=zone)
        else:
            moment = datetime.combine(parsed + timedelta(days=1), time(), tzinfo=zone)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


# What the projection's columns hold (server/persistence/tables.py): a longer value is junk
# to the sidecar (no one is named that way), never an error that would stop it.
NAME_MAX = 128  # users, task and message ids
DEPARTMENT_MAX = 64
DUE_MAX = 40


def name(value: str | None, limit: int = NAME_MAX) -> str | None:
    """A user, task or message name as the sidecar stores it: None if empty or too long."""
    return value if value and len(value) <= limit else None


def task_facts(task: Task, board_department: str | None, zone: ZoneInfo) -> TaskFacts:
    due = task.due if task.due is not None and len(task.due) <= DUE_MAX else None
    return TaskFacts(
        title=task.title,
        status=task.status,
        assignee=name(task.assignee),
        department=name(task.department, DEPARTMENT_MAX) or name(board_department, DEPARTMENT_MAX),
        due=due,
        due_at=due_moment(due, zone),
        priority=task.priority,
        watchers=tuple(sorted({w for w in task.watchers if name(w)})),
        created_by=name(task.created_by),
    )


def task_events(
    doc_id: str,
    task_id: str,
    before: TaskFacts | None,
    after: TaskFacts,
    *,
    actor: str | None,
    seq: int,
    at: datetime,
    context: dict[str, Any],
) -> list[NewEvent]:
    """Assignment and status change of one task, for everyone concerned but the actor."""
    events: list[NewEvent] = []
    data = {"title": after.title, **context}
    if after.assignee is not None and (before is None or before.assignee != after.assignee):
        events.append(
            NewEvent(
                key=f"assigned:{doc_id}:{task_id}:{after.assignee}:{seq}",
                kind="assigned",
                doc_id=doc_id,
                task_id=task_id,
                actor=actor,
                created_at=at,
                recipients={after.assignee} - {actor},
                data={
                    **data,
                    "assignee": after.assignee,
                    "due": after.due,
                    "summary": f"{actor or 'someone'} assigned you “{after.title}”",
                },
            )
        )
    if before is not None and before.status != after.status:
        events.append(
            NewEvent(
                key=f"status_changed:{doc_id}:{task_id}:{after.status}:{seq}",
                kind="status_changed",
                doc_id=doc_id,
                task_id=task_id,
                actor=actor,
                created_at=at,
                recipients=(
                    {w for w in (after.assignee, *after.watchers, *before.watchers) if w} - {actor}
                ),
                data={
                    **data,
                    "from_status": before.status,
                    "to_status": after.status,
                    "summary": f"{actor or 'someone'} moved “{after.title}” "
                    f"from {before.status} to {after.status}",
                },
            )
        )
    return events


def message_events(
    doc_id: str,
    message: Message,
    participants: Iterable[str],
    *,
    actor: str | None,
    at: datetime,
    context: dict[str, Any],
) -> list[NewEvent]:
    """A new message: the people mentioned hear of the mention, the other participants of
    the message. The author is the connection's user when known, not what the message says
    (a client can write any name there)."""
    author = actor or name(message.author)
    mentioned = {m for m in message.mentions if name(m)} - {author}
    excerpt = message.body if len(message.body) <= EXCERPT else message.body[: EXCERPT - 1] + "…"
    data = {**context, "body": excerpt, "reply_to": message.reply_to}
    events = []
    if mentioned:
        events.append(
            NewEvent(
                key=f"mentioned:{doc_id}:{message.id}",
                kind="mentioned",
                doc_id=doc_id,
                message_id=message.id,
                actor=author,
                created_at=at,
                recipients=mentioned,
                data={**data, "summary": f"{author or 'someone'} mentioned you"},
            )
        )
    others = set(participants) - mentioned - {author}
    others.discard("")
    if others:
        events.append(
            NewEvent(
                key=f"message:{doc_id}:{message.id}",
                kind="message",
                doc_id=doc_id,
                message_id=message.id,
                actor=author,
                created_at=at,
                recipients=others,
                data={**data, "summary": f"{author or 'someone'} wrote"},
            )
        )
    return events
