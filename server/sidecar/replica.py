"""What the sidecar holds of a document: a replica of its content, what the projection
says of it, and which of its tasks or messages the last change touched."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Array, Doc, Map, merge_updates
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from server.persistence.tables import snapshots, updates
from server.sidecar.derive import TaskFacts
from shared.documents import call_with_deep_stack, detect_kind
from shared.roots import private_copy, recognise_by_content

log = logging.getLogger("tandem.sidecar")


@dataclass(slots=True)
class Replica:
    """What the processor holds of one document."""

    doc_id: str
    kind: str | None
    doc: Doc[Any]
    title: str | None = None
    department: str | None = None
    owner: str | None = None
    tasks: dict[str, TaskFacts] = field(default_factory=dict)  # the projection as stored
    messages: set[str] = field(default_factory=set)
    participants: set[str] = field(default_factory=set)
    touched: set[str] = field(default_factory=set)
    messages_touched: bool = False
    checked: float = 0.0  # when its record was last read (time.monotonic)
    followed: list[tuple[str, Any, Any]] = field(default_factory=list)
    loaded: bool = True  # False: `doc` is empty (the content is not kept for this kind)


def follow(replica: Replica) -> None:
    """Note which tasks (and whether messages) each applied update touches."""
    doc = replica.doc

    def tasks_changed(events: list[Any]) -> None:
        for event in events:
            path = list(event.path)
            if path:
                replica.touched.add(str(path[0]))
            else:
                replica.touched.update(str(k) for k in event.keys)

    def messages_changed(events: list[Any]) -> None:
        replica.messages_touched = True

    keys = set(doc.keys())
    try:
        # The shared types and subscriptions are kept: dropped, they stop observing.
        if "tasks" in keys or "messages" not in keys:
            tasks = doc.get("tasks", type=Map)
            replica.followed.append(("tasks", tasks, tasks.observe_deep(tasks_changed)))
        if "messages" in keys or "tasks" not in keys:
            messages = doc.get("messages", type=Array)
            replica.followed.append(("messages", messages, messages.observe_deep(messages_changed)))
    except Exception:
        log.info("document %s has roots of other types; not followed", replica.doc_id)


def refollow_if_retyped(replica: Replica) -> None:
    """Reading an empty root looks at it through other types too, which re-types it, and
    subscriptions on the old type may stop hearing of nested changes: take them anew."""
    root = "tasks" if replica.kind == "board" else "messages"
    if any(name == root and size(shared) == 0 for name, shared, _ in replica.followed):
        unfollow(replica)
        follow(replica)


def unfollow(replica: Replica) -> None:
    for _, shared, subscription in replica.followed:
        with contextlib.suppress(Exception):
            shared.unobserve(subscription)
    replica.followed.clear()


async def load_doc(
    conn: AsyncConnection, doc_id: str, snapshot_id: int | None, after: int
) -> Doc[Any]:
    """The document's snapshot and its rows up to `after` (all its rows, if the snapshot
    already covers rows beyond `after`)."""
    parts: list[bytes] = []
    upto = 0
    if snapshot_id is not None:
        snap = (
            await conn.execute(
                select(snapshots.c.state, snapshots.c.upto_seq).where(snapshots.c.id == snapshot_id)
            )
        ).first()
        if snap is not None:
            parts.append(snap.state)
            upto = int(snap.upto_seq)
    query = select(updates.c.data).where(updates.c.doc_id == doc_id).order_by(updates.c.seq)
    if upto <= after:
        query = query.where(updates.c.seq <= after)
    parts.extend(row.data for row in await conn.execute(query))
    doc: Doc[Any] = Doc()
    if parts:
        merged = parts[0] if len(parts) == 1 else bytes(merge_updates(*parts))
        try:
            call_with_deep_stack(lambda: doc.apply_update(merged))
        except Exception as exc:
            log.warning("document %s does not load in the sidecar: %s", doc_id, exc)
    return doc


def size(shared: Any) -> int:
    try:
        return len(shared)
    except Exception:
        return 0


def recognise(doc: Doc[Any]) -> str | None:
    kind: str | None = detect_kind(doc)
    if kind is None:
        kind = call_with_deep_stack(lambda: str(recognise_by_content(private_copy(doc))))
    return kind if kind in ("board", "discussion", "doc") else None
