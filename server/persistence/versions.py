"""Version history of a document: automatic snapshots, named versions, restore, change summaries.

A version is a row of `snapshots` holding the document's whole state: kind "auto" rows are
written by compaction (the newest `KEEP_AUTO_SNAPSHOTS` are kept), kind "named" rows by
`create_version` (a person saving a version, or a restore recording itself); compaction never
removes named rows. A version's number is counted per document (1, 2, 3…), stored in the row
when it is inserted and never reused: pruning automatic snapshots leaves gaps, never renumbers.

Restoring never rewrites history: the state it replaces is first saved as a named version
"before restoring version N", then the live document is edited, through its room, until it
reads exactly as the old version (shared.mirror), so connected clients receive the restore as
an ordinary change and converge to it; the restore is then saved as a named version of its own.

The room-side dependency is structural (`LiveDocuments`: the registry of live rooms satisfies it),
so this module imports nothing from the rooms layer.
"""

from __future__ import annotations

import asyncio
import difflib
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol, TypeVar

from pycrdt import Doc, Map
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.origin import Origin
from server.persistence import workspace
from server.persistence.compaction import build_snapshot
from server.persistence.sql import lock_versions, next_version_number, now
from server.persistence.store import Store, StoredDoc
from server.persistence.tables import documents, snapshots, updates
from server.persistence.writer import Writer
from shared.board import Board, Task, read_board
from shared.discussion import Discussion, Message, read_discussion
from shared.documents import AnyKind, JsonValue, call_with_deep_stack, known_kind
from shared.mirror import TooDeep, mirror_document
from shared.raw import RawDocument, read_raw
from shared.richtext import TextDocument, plain_text, read_doc
from shared.roots import private_copy, recognise

__all__ = [
    "LiveDocuments",
    "RestoreFailed",
    "Restored",
    "Version",
    "VersionNotFound",
    "create_version",
    "current_state",
    "doc_from_state",
    "get_version",
    "kind_of",
    "list_versions",
    "restore_version",
    "state_at",
    "summarize_changes",
    "version_at",
    "version_state",
]

T = TypeVar("T")

FLUSH_TIMEOUT = 10.0
_RESTORE_ATTEMPTS = 3
_BIG_STATE = 256 * 1024  # merge stored rows in a worker thread above this size
_COLUMNS = (
    snapshots.c.number,
    snapshots.c.doc_id,
    snapshots.c.kind,
    snapshots.c.name,
    snapshots.c.created_by,
    snapshots.c.created_at,
    snapshots.c.upto_seq,
)


@dataclass(frozen=True, slots=True)
class Version:
    number: int
    doc_id: str
    kind: str
    """"auto" (a compaction snapshot) or "named"."""
    name: str | None
    created_by: str | None
    created_at: datetime
    upto_seq: int
    """The highest update-log sequence number folded into this version (0: none)."""

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "number": self.number,
            "kind": self.kind,
            "name": self.name,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
            "upto_seq": self.upto_seq,
        }


class VersionNotFound(LookupError):
    """No version with this number for this document (never made, or an automatic snapshot
    that compaction has pruned since)."""


class RestoreFailed(RuntimeError):
    """The restore edit failed part-way; what it changed was propagated like any edit."""


@dataclass(frozen=True, slots=True)
class Restored:
    before: Version
    """The named version "before restoring version N": the state the restore replaced."""
    restored: Version
    """The named version "restored from version N": the state the restore made."""


class LiveRoom(Protocol):
    @property
    def doc(self) -> Doc[Any]: ...

    def apply_update(self, update: bytes, origin: Origin) -> bytes | None: ...

    def edit(self, origin: Origin, change: Callable[[Doc[Any]], T]) -> T: ...


class LiveDocuments(Protocol):
    """What a restore needs from the live rooms (server.rooms.registry.Registry has it)."""

    @property
    def rooms(self) -> Mapping[str, LiveRoom]: ...

    @property
    def writer(self) -> Writer: ...

    def use(self, doc_id: str) -> AbstractAsyncContextManager[LiveRoom]: ...


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _version(row: Any) -> Version:
    return Version(
        number=int(row.number),
        doc_id=row.doc_id,
        kind=row.kind,
        name=row.name,
        created_by=row.created_by,
        created_at=_utc(row.created_at),
        upto_seq=int(row.upto_seq),
    )


# --- reading the history --------------------------------------------------------------------


async def list_versions(engine: AsyncEngine, doc_id: str) -> list[Version]:
    """Every version of `doc_id` still stored, newest first."""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(*_COLUMNS)
                .where(snapshots.c.doc_id == doc_id)
                .order_by(snapshots.c.number.desc())
            )
        ).all()
    return [_version(row) for row in rows]


async def get_version(engine: AsyncEngine, doc_id: str, number: int) -> Version | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(*_COLUMNS).where(snapshots.c.doc_id == doc_id, snapshots.c.number == number)
            )
        ).first()
    return _version(row) if row is not None else None


async def version_state(engine: AsyncEngine, doc_id: str, number: int) -> tuple[Version, bytes]:
    """Version `number` of `doc_id` and its whole state (a Yjs update). Raises VersionNotFound."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(*_COLUMNS, snapshots.c.state).where(
                    snapshots.c.doc_id == doc_id, snapshots.c.number == number
                )
            )
        ).first()
    if row is None:
        raise VersionNotFound(f"document {doc_id} has no version {number}")
    return _version(row), bytes(row.state)


async def version_at(engine: AsyncEngine, doc_id: str, when: datetime) -> Version | None:
    """The newest version of `doc_id` made at or before `when` (None: none that early).

    The resolution is that of the stored versions, not of single edits: compaction folds update
    rows into snapshots and deletes them, so the state between two versions is not kept. A time
    after the newest version gives the newest version, not edits made since.
    """
    moment = _utc(when).astimezone(UTC)
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(*_COLUMNS)
                .where(snapshots.c.doc_id == doc_id, snapshots.c.created_at <= moment)
                .order_by(snapshots.c.created_at.desc(), snapshots.c.number.desc())
                .limit(1)
            )
        ).first()
    return _version(row) if row is not None else None


async def state_at(engine: AsyncEngine, doc_id: str, when: datetime) -> tuple[Version, bytes]:
    """The version `version_at` picks, and its state. Raises VersionNotFound when there is
    none that early. Same resolution as `version_at`: the snapshot granularity."""
    found = await version_at(engine, doc_id, when)
    if found is None:
        raise VersionNotFound(f"document {doc_id} has no version at or before {when.isoformat()}")
    return await version_state(engine, doc_id, found.number)


async def current_state(store: Store, live: LiveDocuments, doc_id: str) -> bytes:
    """The document as it is now: the live room's state when it is loaded, else the stored one
    (which then holds every acknowledged edit)."""
    room = live.rooms.get(doc_id)
    if room is not None:
        return bytes(room.doc.get_update())
    stored = await store.load(doc_id)
    if sum(map(len, stored.updates)) > _BIG_STATE:
        return await asyncio.to_thread(call_with_deep_stack, stored.merged)
    return stored.merged()


def doc_from_state(state: bytes) -> Doc[Any]:
    """A private document holding `state` (applied on a deep stack; may block: use a thread)."""
    doc: Doc[Any] = Doc()
    if state:
        call_with_deep_stack(lambda: doc.apply_update(state))
    return doc


def kind_of(recorded: str | None, doc: Doc[Any]) -> AnyKind:
    """The kind to read the private document `doc` as: the one recorded in the workspace,
    else `meta.kind`, else what its roots make it (shared.roots.recognise; `raw` when
    nothing fits)."""
    recorded_kind = known_kind(recorded)
    if recorded_kind is not None:
        return recorded_kind
    kind: AnyKind = call_with_deep_stack(lambda: recognise(doc))
    return kind


# --- writing the history --------------------------------------------------------------------


async def _insert_version(
    conn: AsyncConnection,
    doc_id: str,
    *,
    state: bytes,
    state_vector: bytes,
    upto_seq: int,
    name: str | None,
    created_by: str | None,
) -> Version:
    await lock_versions(conn, doc_id)
    row = (
        await conn.execute(
            insert(snapshots)
            .values(
                doc_id=doc_id,
                number=next_version_number(doc_id),
                upto_seq=upto_seq,
                state=state,
                state_vector=state_vector,
                kind="named",
                name=name,
                created_by=created_by,
                created_at=now(),
            )
            .returning(*_COLUMNS)
        )
    ).one()
    return _version(row)


def _snapshot_of(stored: StoredDoc) -> tuple[bytes, bytes]:
    if stored.empty:
        empty: Doc[Any] = Doc()
        return bytes(empty.get_update()), bytes(empty.get_state())
    return build_snapshot(stored)


async def create_version(
    engine: AsyncEngine,
    store: Store,
    writer: Writer,
    doc_id: str,
    name: str | None,
    *,
    created_by: str | None = None,
    flush_timeout: float = FLUSH_TIMEOUT,
) -> Version:
    """Save the document's current stored state as a named version.

    Waits until the writer has committed every update of `doc_id` queued so far (TimeoutError
    if storage does not take them in `flush_timeout` seconds), so the version holds every edit
    acknowledged before the call; then merges the base snapshot and the update rows, the way
    compaction does, and stores the result. Compaction never removes it.
    """
    await writer.flush(doc_id, timeout=flush_timeout)
    stored = await store.load(doc_id)
    state, state_vector = await asyncio.to_thread(
        call_with_deep_stack, lambda: _snapshot_of(stored)
    )
    async with engine.begin() as conn:
        upto = max(stored.seqs, default=0)
        if not stored.seqs and stored.snapshot_id is not None:
            base = await conn.execute(
                select(snapshots.c.upto_seq).where(snapshots.c.id == stored.snapshot_id)
            )
            upto = int(base.scalar() or 0)
        return await _insert_version(
            conn,
            doc_id,
            state=state,
            state_vector=state_vector,
            upto_seq=upto,
            name=name,
            created_by=created_by,
        )


async def _stored_upto(engine: AsyncEngine, doc_id: str) -> int:
    """The highest update-log entry stored for `doc_id` (the base snapshot's when none)."""
    async with engine.connect() as conn:
        top = (
            await conn.execute(select(func.max(updates.c.seq)).where(updates.c.doc_id == doc_id))
        ).scalar()
        if top is not None:
            return int(top)
        base = await conn.execute(
            select(snapshots.c.upto_seq)
            .select_from(documents.join(snapshots, snapshots.c.id == documents.c.snapshot_id))
            .where(documents.c.id == doc_id)
        )
        return int(base.scalar() or 0)


def _state_vector(state: bytes) -> bytes:
    return bytes(doc_from_state(state).get_state())


async def _save_before(
    engine: AsyncEngine, doc_id: str, state: bytes, upto: int, number: int, user: str | None
) -> Version:
    """Save `state`, what the document held just before restoring version `number`."""
    vector = await asyncio.to_thread(_state_vector, state)
    async with engine.begin() as conn:
        return await _insert_version(
            conn,
            doc_id,
            state=state,
            state_vector=vector,
            upto_seq=upto,
            name=f"before restoring version {number}",
            created_by=user,
        )


def _meta_title(doc: Doc[Any]) -> str | None:
    if "meta" not in doc.keys():
        return None
    try:
        title = doc.get("meta", type=Map).get("title")
    except Exception:
        return None
    if isinstance(title, str) and 0 < len(title.strip()) <= 300:
        return title.strip()
    return None


def _mirrored_update(base: bytes, old: Doc[Any]) -> bytes | None:
    """The update that makes a document holding `base` read as `old` (None: it already does).
    Runs on a deep stack, off the event loop."""
    copy: Doc[Any] = Doc()
    copy.apply_update(base)
    captured: list[bytes] = []
    copy.observe(lambda event: captured.append(bytes(event.update)))
    with copy.transaction():
        mirror_document(copy, old)
    return captured[-1] if captured else None


def _mirror_in_place(old: Doc[Any], number: int, doc: Doc[Any]) -> BaseException | None:
    # An exception must not escape Room.edit: what changed before it has to reach the peers
    # and the log like any edit, or the room would differ from both.
    try:
        call_with_deep_stack(lambda: mirror_document(doc, old))
    except TooDeep as exc:
        return exc
    except Exception as exc:
        return RestoreFailed(f"restore of version {number} failed: {exc}")
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise
        return RestoreFailed(f"restore of version {number} failed in the CRDT library")
    return None


async def restore_version(
    engine: AsyncEngine,
    store: Store,
    live: LiveDocuments,
    doc_id: str,
    number: int,
    *,
    user: str | None,
    flush_timeout: float = FLUSH_TIMEOUT,
) -> Restored:
    """Make the document read exactly as version `number`, as a new change, and save that as a
    named version "restored from version N". The state it replaced, exactly as the room held
    it when the change was applied, is saved first as the named version "before restoring
    version N", so restoring that one undoes the restore. Both versions are returned.

    The change is a server-side edit of the live room by ("rest", user): every connected client
    receives it and converges to the old content; nothing stored is rewritten or deleted, so
    the restore itself can be undone by restoring a later version. The change is worked out on
    a copy in a worker thread and applied if the document did not change meanwhile (else tried
    again, and in the end made in place), so even a huge document holds up the event loop only
    for encoding and applying one update. The workspace title follows the restored `meta.title`.

    Raises VersionNotFound; shared.mirror.TooDeep (nothing changed) for a version nesting
    shared types too deeply; RestoreFailed if the edit broke off part-way.
    """
    _, state = await version_state(engine, doc_id, number)
    old = await asyncio.to_thread(doc_from_state, state)
    origin = Origin("rest", user)
    async with live.use(doc_id) as room:
        # Stored rows then cover at least what the room holds now: the "before" version's
        # upto_seq (edits arriving meanwhile are in its state, not counted in upto_seq).
        await live.writer.flush(doc_id, timeout=flush_timeout)
        upto = await _stored_upto(engine, doc_id)
        for _ in range(_RESTORE_ATTEMPTS):
            # The work is done off the event loop, on a copy; its update is applied to the room
            # only if nobody changed the document meanwhile, so the result is exact.
            base = bytes(room.doc.get_update())
            try:
                update = await asyncio.to_thread(
                    call_with_deep_stack, partial(_mirrored_update, base, old)
                )
            except TooDeep:
                raise
            except BaseException as exc:
                if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
                    raise
                raise RestoreFailed(f"restore of version {number} failed: {exc}") from exc
            if bytes(room.doc.get_update()) == base:
                if update is not None:
                    room.apply_update(update, origin)
                break
        else:
            # A document edited without pause: change it in place, on the loop.
            base = bytes(room.doc.get_update())
            failure = room.edit(origin, partial(_mirror_in_place, old, number))
            if failure is not None:
                # Part of it may be applied: keep what it replaced all the same.
                await _save_before(engine, doc_id, base, upto, number, user)
                raise failure
    before = await _save_before(engine, doc_id, base, upto, number, user)
    title = call_with_deep_stack(lambda: _meta_title(old))
    if title is not None:
        async with engine.begin() as conn:
            row = await workspace.get_document(conn, doc_id)
            if row is not None and row.title != title:
                await workspace.update_document(conn, doc_id, {"title": title}, updated_by=user)
    restored = await create_version(
        engine,
        store,
        live.writer,
        doc_id,
        f"restored from version {number}",
        created_by=user,
        flush_timeout=flush_timeout,
    )
    return Restored(before, restored)


# --- what changed between two versions ------------------------------------------------------


def _field_changes(before: Mapping[str, JsonValue], after: Mapping[str, JsonValue]) -> list[Any]:
    return [
        {"field": key, "before": before.get(key), "after": after.get(key)}
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]


def _board_changes(before: Board, after: Board) -> dict[str, JsonValue]:
    old: dict[str, Task] = {t.id: t for t in before.tasks}
    new: dict[str, Task] = {t.id: t for t in after.tasks}
    added: list[JsonValue] = [
        {"task_id": t.id, "title": t.title, "status": t.status, "assignee": t.assignee}
        for t in after.tasks
        if t.id not in old
    ]
    removed: list[JsonValue] = [
        {"task_id": t.id, "title": t.title, "status": t.status, "assignee": t.assignee}
        for t in before.tasks
        if t.id not in new
    ]
    changed: list[JsonValue] = []
    for task in after.tasks:
        previous = old.get(task.id)
        if previous is None:
            continue
        for change in _field_changes(previous.to_json(), task.to_json()):
            changed.append({"task_id": task.id, "title": task.title, **change})
    summary = []
    if added:
        summary.append(f"{len(added)} task{'s' if len(added) != 1 else ''} added")
    if removed:
        summary.append(f"{len(removed)} task{'s' if len(removed) != 1 else ''} removed")
    touched = len({c["task_id"] for c in changed if isinstance(c, dict)})
    if touched:
        summary.append(f"{touched} task{'s' if touched != 1 else ''} changed")
    return {
        "meta_changed": _field_changes(before.meta.to_json(), after.meta.to_json()),
        "tasks_added": added,
        "tasks_removed": removed,
        "tasks_changed": changed,
        "summary": ", ".join(summary),
    }


def _text_changes(before: TextDocument, after: TextDocument) -> dict[str, JsonValue]:
    old_text = plain_text(before.content)
    new_text = plain_text(after.content)
    old_lines, new_lines = old_text.split("\n"), new_text.split("\n")
    diff = list(difflib.unified_diff(old_lines, new_lines, "before", "after", lineterm=""))
    added: list[JsonValue] = []
    removed: list[JsonValue] = []
    matcher = difflib.SequenceMatcher(a=old_lines, b=new_lines, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op in ("replace", "delete"):
            removed.extend(line for line in old_lines[i1:i2] if line)
        if op in ("replace", "insert"):
            added.extend(line for line in new_lines[j1:j2] if line)
    text_changed = old_text != new_text
    formatting_changed = not text_changed and before.content != after.content
    summary = []
    if text_changed:
        summary.append(f"{len(added)} lines added, {len(removed)} lines removed")
    elif formatting_changed:
        summary.append("formatting changed")
    return {
        "meta_changed": _field_changes(before.meta.to_json(), after.meta.to_json()),
        "text_changed": text_changed,
        "formatting_changed": formatting_changed,
        "lines_added": added,
        "lines_removed": removed,
        "unified_diff": "\n".join(diff),
        "text_before": old_text,
        "text_after": new_text,
        "summary": ", ".join(summary),
    }


def _message_json(message: Message) -> dict[str, JsonValue]:
    return {"id": message.id, "author": message.author, "body": message.body}


def _discussion_changes(before: Discussion, after: Discussion) -> dict[str, JsonValue]:
    old = {m.id: m for m in before.messages}
    new = {m.id: m for m in after.messages}
    added: list[JsonValue] = [_message_json(m) for m in after.messages if m.id not in old]
    removed: list[JsonValue] = [_message_json(m) for m in before.messages if m.id not in new]
    edited: list[JsonValue] = []
    deleted: list[JsonValue] = []
    undeleted: list[JsonValue] = []
    for message in after.messages:
        previous = old.get(message.id)
        if previous is None:
            continue
        if message.deleted and not previous.deleted:
            deleted.append(_message_json(previous))
        elif previous.deleted and not message.deleted:
            undeleted.append(_message_json(message))
        elif previous.body != message.body:
            edited.append(
                {
                    "id": message.id,
                    "author": message.author,
                    "before": previous.body,
                    "after": message.body,
                }
            )
    counts = [
        (len(added), "added"),
        (len(edited), "edited"),
        (len(deleted), "deleted"),
        (len(removed), "removed"),
        (len(undeleted), "undeleted"),
    ]
    summary = [f"{n} message{'s' if n != 1 else ''} {what}" for n, what in counts if n]
    return {
        "meta_changed": _field_changes(before.meta.to_json(), after.meta.to_json()),
        "messages_added": added,
        "messages_edited": edited,
        "messages_deleted": deleted,
        "messages_removed": removed,
        "messages_undeleted": undeleted,
        "summary": ", ".join(summary),
    }


def _raw_changes(before: RawDocument, after: RawDocument) -> dict[str, JsonValue]:
    old, new = before.roots, after.roots
    added: list[JsonValue] = [name for name in new if name not in old]
    removed: list[JsonValue] = [name for name in old if name not in new]
    changed: list[JsonValue] = [name for name in new if name in old and old[name] != new[name]]
    counts = [(len(added), "added"), (len(removed), "removed"), (len(changed), "changed")]
    summary = [f"{n} root{'s' if n != 1 else ''} {what}" for n, what in counts if n]
    return {
        "meta_changed": _field_changes(before.meta.to_json(), after.meta.to_json()),
        "roots_added": added,
        "roots_removed": removed,
        "roots_changed": changed,
        "summary": ", ".join(summary),
    }


def summarize_changes(kind: AnyKind, before: Doc[Any], after: Doc[Any]) -> dict[str, JsonValue]:
    """What changed from `before` to `after`, both read as `kind`, as JSON.

    board: `tasks_added`, `tasks_removed` and `tasks_changed` (one entry per task and field:
    `{task_id, title, field, before, after}`); doc: the plain text before and after, the lines
    added and removed and a unified diff; discussion: messages added, edited, deleted (soft),
    removed and undeleted; raw: the names of the roots added, removed and changed (whose JSON,
    see shared/raw.py, differs). Every kind: `meta_changed` (`{field, before, after}`),
    `changed` and a one-line `summary`. Reads tolerate any content (see shared/ readers).
    """
    changes: dict[str, JsonValue]
    if kind == "raw":
        # Reading a raw document re-types its roots: read copies.
        changes = _raw_changes(read_raw(private_copy(before))[0], read_raw(private_copy(after))[0])
    elif kind == "board":
        changes = _board_changes(read_board(before)[0], read_board(after)[0])
    elif kind == "doc":
        changes = _text_changes(read_doc(before)[0], read_doc(after)[0])
    else:
        changes = _discussion_changes(read_discussion(before)[0], read_discussion(after)[0])
    lists = [v for k, v in changes.items() if k not in ("summary", "unified_diff")]
    changed = any(isinstance(v, list) and v for v in lists) or any(v is True for v in lists)
    if not changes["summary"] and changes["meta_changed"]:
        changes["summary"] = "details changed"
    return {"kind": kind, "changed": changed, **changes}
