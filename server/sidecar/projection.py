"""The projection the sidecar keeps in SQL, written once per step in one transaction: task
rows, messages seen, editing bursts, the events and notifications, and the checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from server.access import AccessControl
from server.persistence.tables import (
    documents,
    edit_bursts,
    feed_checkpoints,
    message_index,
    task_index,
    watches,
)
from server.sidecar.derive import NewEvent, TaskFacts
from server.sidecar.emit import emit

CHECKPOINT = "updates"


@dataclass(slots=True)
class Pending:
    """What one step writes."""

    tasks: dict[tuple[str, str], tuple[TaskFacts | None, datetime, str | None]] = field(
        default_factory=dict
    )
    messages: list[dict[str, Any]] = field(default_factory=list)
    bursts: dict[tuple[str, str], tuple[int, datetime]] = field(default_factory=dict)
    events: list[NewEvent] = field(default_factory=list)


async def write(
    conn: AsyncConnection, pending: Pending, position: int, access: AccessControl, now: datetime
) -> list[int]:
    for (doc_id, task_id), (facts, at, actor) in pending.tasks.items():
        await conn.execute(
            delete(task_index).where(task_index.c.doc_id == doc_id, task_index.c.task_id == task_id)
        )
        if facts is not None:
            await conn.execute(
                insert(task_index).values(
                    doc_id=doc_id,
                    task_id=task_id,
                    title=facts.title,
                    status=facts.status,
                    assignee=facts.assignee,
                    department=facts.department,
                    due=facts.due,
                    due_at=facts.due_at,
                    priority=facts.priority,
                    watchers=list(facts.watchers),
                    created_by=facts.created_by,
                    updated_at=at,
                    updated_by=actor,
                )
            )
    if pending.messages:
        await conn.execute(insert(message_index), pending.messages)
    await _write_bursts(conn, pending)
    made = await emit(conn, pending.events, access)
    await save_checkpoint(conn, CHECKPOINT, position, now)
    return made


async def _write_bursts(conn: AsyncConnection, pending: Pending) -> None:
    for (doc_id, user), (started, last_at) in pending.bursts.items():
        done = await conn.execute(
            update(edit_bursts)
            .where(edit_bursts.c.doc_id == doc_id, edit_bursts.c.user_name == user)
            .values(started_seq=started, last_at=last_at)
        )
        if done.rowcount == 0:
            await conn.execute(
                insert(edit_bursts).values(
                    doc_id=doc_id, user_name=user, started_seq=started, last_at=last_at
                )
            )
    # The people a document's change goes to: its owner and its watchers.
    for event in pending.events:
        if event.kind != "doc_changed":
            continue
        rows = await conn.execute(
            select(watches.c.user_name).where(watches.c.doc_id == event.doc_id)
        )
        owner = (
            await conn.execute(select(documents.c.created_by).where(documents.c.id == event.doc_id))
        ).scalar()
        people = {r.user_name for r in rows}
        if owner:
            people.add(owner)
        event.recipients = people - {event.actor or ""}


def facts_of(row: Any) -> TaskFacts:
    watchers = row.watchers if isinstance(row.watchers, list) else []
    due_at = row.due_at
    if due_at is not None and due_at.tzinfo is None:
        due_at = due_at.replace(tzinfo=UTC)
    return TaskFacts(
        title=row.title,
        status=row.status,
        assignee=row.assignee,
        department=row.department,
        due=row.due,
        due_at=due_at,
        priority=row.priority,
        watchers=tuple(watchers),
        created_by=row.created_by,
    )


async def save_checkpoint(conn: AsyncConnection, name: str, position: int, at: datetime) -> None:
    done = await conn.execute(
        update(feed_checkpoints)
        .where(feed_checkpoints.c.name == name)
        .values(position=position, updated_at=at)
    )
    if done.rowcount == 0:
        await conn.execute(
            insert(feed_checkpoints).values(name=name, position=position, updated_at=at)
        )
