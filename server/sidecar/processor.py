"""The feed processor: reads the update log from its checkpoint, keeps a replica of each
board and discussion, and turns changes into the task projection, events and notifications.

One step is one transaction: the projection rows, the messages seen, the editing bursts,
the events, the notifications and the new checkpoint commit together or not at all. A
process killed in the middle resumes from the old checkpoint with nothing half-written, and
the same changes give the same event keys, so every notification is made exactly once.

What a change did is found by comparing the projection as stored (not the replica's
previous state) with the replica after the change, for the tasks the change touched.
A replica is loaded from the document's snapshot plus its rows up to the checkpoint. When
compaction has merged rows the processor had not read yet into a snapshot, the replica
starts from that snapshot instead, and the comparison finds what those rows changed, in one
step, attributed to no one (the rows and their authors are gone).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from pycrdt import Doc
from sqlalchemy import func, or_, select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from server.access import AccessControl
from server.persistence.tables import (
    documents,
    feed_checkpoints,
    message_index,
    snapshots,
    task_index,
    updates,
)
from server.settings import Settings
from server.sidecar import files
from server.sidecar.clock import Clock, SystemClock
from server.sidecar.derive import NewEvent, message_events, name, task_events, task_facts
from server.sidecar.emit import writing
from server.sidecar.feed import Change, ChangeFeed
from server.sidecar.projection import CHECKPOINT, Pending, facts_of, save_checkpoint, write
from server.sidecar.replica import (
    Replica,
    follow,
    load_doc,
    recognise,
    refollow_if_retyped,
    unfollow,
)
from shared.board import read_board, read_task
from shared.discussion import read_discussion
from shared.documents import call_with_deep_stack, is_panic

log = logging.getLogger("tandem.sidecar")

BATCH = 500  # changes per step (one transaction)
REPLICAS = 256  # documents kept in memory; others are loaded again when they change
RECONCILE_EVERY = 5.0  # seconds between looks for snapshots beyond the checkpoint
KINDS = ("board", "discussion", "doc")
FOLLOWED = ("board", "discussion")  # the kinds whose content the sidecar keeps
# A step that failed this many times in a row (not for the database) is retried one change
# at a time, and a single change that fails as often is skipped.
RETRIES = 3
RECHECK_SECONDS = 30.0  # how often the record of a document of another kind is read again


class Processor:
    def __init__(
        self,
        engine: AsyncEngine,
        feed: ChangeFeed,
        settings: Settings,
        access: AccessControl,
        clock: Clock | None = None,
    ) -> None:
        self.engine = engine
        self.feed = feed
        self.settings = settings
        self.access = access
        self.clock = clock or SystemClock()
        self.zone = ZoneInfo(settings.timezone)
        self.base_url = (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip(
            "/"
        )
        self.checkpoint: int | None = None
        self._replicas: OrderedDict[str, Replica] = OrderedDict()
        self._bursts: dict[tuple[str, str], tuple[int, datetime]] = {}
        self._reconciled_at = 0.0
        self._started = False
        self._last_after = -1  # the checkpoint the latest step started from
        self.files_checkpoint: int | None = None
        self._reconciled: dict[str, int] = {}  # doc id -> the snapshot's upto_seq, handled
        self.on_notified: Callable[[list[int]], None] | None = None
        self.on_tasks_changed: Callable[[], None] | None = None
        # How long the feed waits when nothing wakes it (in the server's process every
        # commit and upload wakes it, and this is only a fallback).
        self.poll_seconds = settings.sidecar_poll_ms / 1000

    # -- the loop ------------------------------------------------------------------------------

    async def step(self, limit: int = BATCH) -> int:
        """Process what the feed has (at most `limit` changes); returns how many."""
        try:
            return await self._step(limit)
        except BaseException:
            # Memory may be ahead of what was stored: start again from the database.
            self._forget()
            raise

    async def _step(self, limit: int) -> int:
        if self.checkpoint is None:
            self.checkpoint = await self._load_checkpoint()
        after = self.checkpoint
        self._last_after = after
        pending = Pending()
        reconcile = await self._due_for_reconcile(after)
        changes = await self.feed.read(after, limit)
        files_after = self.files_checkpoint
        async with self.engine.connect() as conn:
            if files_after is None:
                files_after = await files.checkpoint(conn)
                if files_after is None:  # a first start: earlier uploads are not news
                    files_after = await files.newest(conn)
            uploads, files_upto = await files.file_events(conn, files_after, self.base_url)
        if not changes and not reconcile and self._started and files_upto == files_after:
            self.files_checkpoint = files_upto
            return 0
        pending.events.extend(uploads)
        self._started = True  # the first step writes the checkpoint: "this process is at work"
        for doc_id, upto in reconcile:
            replica = await self._replica(doc_id, after)
            if replica is not None:
                self._derive(replica, None, upto, self.clock.now(), pending, all_tasks=True)
        for change in changes:
            replica = await self._replica(change.doc_id, change.seq - 1)
            if replica is None:
                continue
            self._apply(replica, change, pending)
        position = changes[-1].seq if changes else after
        log.debug("feed: %d changes after %d, up to %d", len(changes), after, position)
        async with writing(self.engine), self.engine.begin() as conn:
            made = await write(conn, pending, position, self.access, self.clock.now())
            await save_checkpoint(conn, files.CHECKPOINT, files_upto, self.clock.now())
        self.checkpoint = position
        self.files_checkpoint = files_upto
        if made and self.on_notified is not None:
            self.on_notified(made)
        if pending.tasks and self.on_tasks_changed is not None:
            self.on_tasks_changed()
        return len(changes)

    async def run(self) -> None:
        """Step forever. A step that keeps failing for a reason other than the database (a
        change that breaks the derivation) is retried one change at a time, and the change
        that keeps failing alone is skipped with an error in the log: one bad change never
        stops the sidecar."""
        poll = self.poll_seconds
        failures, failed_after, single_left = 0, -1, 0
        while True:
            limit = 1 if single_left > 0 else BATCH
            try:
                consumed = await self.step(limit)
            except Exception as exc:
                outage = _is_outage(exc)
                log.log(
                    logging.WARNING if outage else logging.ERROR,
                    "the sidecar could not process the change feed after seq %d (%s); trying again",
                    self._last_after,
                    exc,
                    exc_info=not outage,
                )
                if not outage:
                    same = self._last_after == failed_after
                    failures, failed_after = (failures + 1 if same else 1), self._last_after
                    if failures >= RETRIES and single_left == 0:
                        single_left, failures = BATCH, 0  # narrow it down
                    elif failures >= RETRIES:
                        await self._skip(failed_after)
                        failures = 0
                        continue
                await self.clock.sleep(1.0)
                continue
            failures = 0
            single_left = max(single_left - consumed, 0)
            if consumed < limit:
                await self.feed.wait(poll)

    async def _skip(self, after: int) -> None:
        """Move the checkpoint past the one change after `after`, deriving nothing from it."""
        changes = await self.feed.read(after, 1)
        if not changes:
            return
        change = changes[0]
        log.error(
            "change %d of %s breaks the sidecar every time; skipped (nothing derived from it)",
            change.seq,
            change.doc_id,
        )
        async with self.engine.begin() as conn:
            await save_checkpoint(conn, CHECKPOINT, change.seq, self.clock.now())
        self._forget()

    # -- replicas ------------------------------------------------------------------------------

    def _forget(self) -> None:
        self.files_checkpoint = None
        self._replicas.clear()
        self._reconciled.clear()
        self._bursts.clear()
        self.checkpoint = None

    async def _replica(self, doc_id: str, upto: int) -> Replica | None:
        """The replica of `doc_id`; a new one holds the document's rows up to `upto`."""
        replica = self._replicas.get(doc_id)
        if replica is not None:
            self._replicas.move_to_end(doc_id)
            # Boards, discussions and text documents keep their kind. Another document's
            # record is read again now and then: the catalog may have recognised it since.
            if replica.kind in KINDS or time.monotonic() - replica.checked < RECHECK_SECONDS:
                return replica
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        documents.c.kind,
                        documents.c.title,
                        documents.c.department,
                        documents.c.created_by,
                        documents.c.snapshot_id,
                        documents.c.deleted_at,
                    ).where(documents.c.id == doc_id)
                )
            ).first()
            if row is None or row.deleted_at is not None:
                return None
            kind = row.kind if row.kind in KINDS else None
            # Content is kept for boards and discussions only, and read once to recognise
            # a document its record does not name yet.
            wanted = kind in FOLLOWED or (kind is None and replica is None)
            if replica is None or (wanted and not replica.loaded):
                doc = await load_doc(conn, doc_id, row.snapshot_id, upto) if wanted else Doc()
                replica = Replica(doc_id=doc_id, kind=None, doc=doc, loaded=wanted)
                if wanted:
                    follow(replica)
            replica.title, replica.department, replica.owner = (
                row.title,
                row.department,
                row.created_by,
            )
            replica.checked = time.monotonic()
            if kind is None:
                kind = (recognise(replica.doc) if replica.loaded else None) or "raw"
            replica.kind = kind
            if kind not in FOLLOWED and replica.loaded:
                unfollow(replica)
                replica.doc, replica.loaded = Doc(), False
            if replica.kind == "board" and not replica.tasks:
                rows = await conn.execute(select(task_index).where(task_index.c.doc_id == doc_id))
                replica.tasks = {r.task_id: facts_of(r) for r in rows}
            if replica.kind == "discussion" and not replica.messages:
                rows = await conn.execute(
                    select(message_index.c.message_id, message_index.c.author).where(
                        message_index.c.doc_id == doc_id
                    )
                )
                for r in rows:
                    replica.messages.add(r.message_id)
                    if r.author:
                        replica.participants.add(r.author)
                if replica.owner:
                    replica.participants.add(replica.owner)
        self._replicas[doc_id] = replica
        if len(self._replicas) > REPLICAS:
            self._replicas.popitem(last=False)
        return replica

    # -- one change ----------------------------------------------------------------------------

    def _apply(self, replica: Replica, change: Change, pending: Pending) -> None:
        if replica.kind == "doc" and change.author:
            self._burst(replica, change, pending)
        if replica.kind not in FOLLOWED:
            return  # a text document's or another document's content is not needed here
        replica.touched.clear()
        replica.messages_touched = False
        try:
            call_with_deep_stack(lambda: replica.doc.apply_update(change.data))
        except Exception as exc:
            log.warning("change %d of %s does not apply: %s", change.seq, change.doc_id, exc)
            return
        except BaseException as exc:
            if not is_panic(exc):
                raise
            log.warning("change %d of %s does not apply (panic)", change.seq, change.doc_id)
            return
        self._derive(replica, change.author, change.seq, change.created_at, pending)

    def _derive(
        self,
        replica: Replica,
        actor: str | None,
        seq: int,
        at: datetime,
        pending: Pending,
        *,
        all_tasks: bool = False,
    ) -> None:
        if replica.kind == "board":
            self._board(replica, actor, seq, at, pending, all_tasks)
        elif replica.kind == "discussion" and (replica.messages_touched or all_tasks):
            self._discussion(replica, actor, at, pending)
        else:
            return
        refollow_if_retyped(replica)

    def _board(
        self,
        replica: Replica,
        actor: str | None,
        seq: int,
        at: datetime,
        pending: Pending,
        all_tasks: bool,
    ) -> None:
        doc_id = replica.doc_id
        if all_tasks:
            board, _ = read_board(replica.doc)
            current = {t.id: t for t in board.tasks}
            touched = set(current) | set(replica.tasks)
        else:
            touched = set(replica.touched)
            current = {}
            for task_id in touched:
                task = read_task(replica.doc, task_id)
                if task is not None:
                    current[task_id] = task
        context = {"board_title": replica.title, "department": replica.department}
        for task_id in sorted(touched):
            if name(task_id) is None:
                continue  # an id no column holds: not a task the sidecar can follow
            task = current.get(task_id)
            before = replica.tasks.get(task_id)
            if task is None:
                if before is not None:
                    del replica.tasks[task_id]
                    pending.tasks[(doc_id, task_id)] = (None, at, actor)
                continue
            after = task_facts(task, replica.department, self.zone)
            if after == before:
                continue
            url = f"{self.base_url}/api/docs/{doc_id}/tasks/{task_id}"
            pending.events.extend(
                task_events(
                    doc_id,
                    task_id,
                    before,
                    after,
                    actor=actor,
                    seq=seq,
                    at=at,
                    context={**context, "url": url},
                )
            )
            replica.tasks[task_id] = after
            pending.tasks[(doc_id, task_id)] = (after, at, actor)

    def _discussion(
        self, replica: Replica, actor: str | None, at: datetime, pending: Pending
    ) -> None:
        discussion, _ = read_discussion(replica.doc)
        context = {"title": replica.title or discussion.meta.title, "doc_title": replica.title}
        for message in discussion.messages:
            if message.id in replica.messages or name(message.id) is None:
                continue
            replica.messages.add(message.id)
            author = actor or name(message.author)
            url = f"{self.base_url}/api/docs/{replica.doc_id}/messages/{message.id}"
            if not message.deleted:
                pending.events.extend(
                    message_events(
                        replica.doc_id,
                        message,
                        replica.participants,
                        actor=actor,
                        at=at,
                        context={**context, "url": url},
                    )
                )
            if author:
                replica.participants.add(author)
            pending.messages.append(
                {
                    "doc_id": replica.doc_id,
                    "message_id": message.id,
                    "author": author,
                    "created_at": at,
                }
            )

    def _burst(self, replica: Replica, change: Change, pending: Pending) -> None:
        """Edits of a document: its owner and watchers hear once per burst of one editor."""
        author = change.author or ""
        key = (replica.doc_id, author)
        known = self._bursts.get(key)
        window = self.settings.edit_burst_seconds
        if known is not None and (change.created_at - known[1]).total_seconds() <= window:
            self._bursts[key] = (known[0], change.created_at)
            pending.bursts[key] = (known[0], change.created_at)
            return
        self._bursts[key] = (change.seq, change.created_at)
        pending.bursts[key] = (change.seq, change.created_at)
        pending.events.append(
            NewEvent(
                key=f"doc_changed:{replica.doc_id}:{author}:{change.seq}",
                kind="doc_changed",
                doc_id=replica.doc_id,
                actor=author,
                created_at=change.created_at,
                recipients=set(),  # the owner and the watchers, filled in when written
                data={
                    "title": replica.title,
                    "summary": f"{author} is editing “{replica.title or replica.doc_id}”",
                    "url": f"{self.base_url}/api/docs/{replica.doc_id}",
                },
            )
        )

    # -- writing -------------------------------------------------------------------------------

    # -- checkpoint and compaction -------------------------------------------------------------

    async def _load_checkpoint(self) -> int:
        async with self.engine.connect() as conn:
            position = (
                await conn.execute(
                    select(feed_checkpoints.c.position).where(feed_checkpoints.c.name == CHECKPOINT)
                )
            ).scalar()
        if position is not None:
            return int(position)
        return await self._bootstrap()

    async def _bootstrap(self) -> int:
        """A first start: what happened before is not news. The checkpoint starts at the end
        of the log, and the projection is built from the documents as they are, silently."""
        async with self.engine.connect() as conn:
            last = (await conn.execute(select(func.max(updates.c.seq)))).scalar()
            position = int(last or 0)
            ids = [
                r.id
                for r in await conn.execute(
                    select(documents.c.id).where(
                        documents.c.deleted_at.is_(None),
                        or_(
                            documents.c.kind.in_(("board", "discussion")),
                            documents.c.kind.is_(None),
                        ),
                    )
                )
            ]
        pending = Pending()
        for doc_id in ids:
            replica = await self._replica(doc_id, position)
            if replica is not None:
                self._derive(replica, None, position, self.clock.now(), pending, all_tasks=True)
        pending.events.clear()
        async with writing(self.engine), self.engine.begin() as conn:
            await write(conn, pending, position, self.access, self.clock.now())
        if ids:
            log.info(
                "sidecar: first start, %d documents indexed, feed from seq %d", len(ids), position
            )
        return position

    async def _due_for_reconcile(self, after: int) -> list[tuple[str, int]]:
        """Documents whose snapshot holds rows beyond the checkpoint: compaction merged
        them while the processor was behind; their replicas start from that snapshot."""
        now = time.monotonic()
        if now - self._reconciled_at < RECONCILE_EVERY:
            return []
        self._reconciled_at = now
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(snapshots.c.doc_id, snapshots.c.upto_seq)
                .join(documents, documents.c.snapshot_id == snapshots.c.id)
                .where(snapshots.c.upto_seq > after, documents.c.deleted_at.is_(None))
            )
            found = [
                (r.doc_id, int(r.upto_seq))
                for r in rows
                if self._reconciled.get(r.doc_id) != int(r.upto_seq)
            ]
        for doc_id, upto in found:
            self._reconciled[doc_id] = upto
            # Load it again, from the snapshot that covers the rows it did not read.
            self._replicas.pop(doc_id, None)
        return found


def _is_outage(exc: BaseException) -> bool:
    """The database (or the way to it) failed, not the change: never a reason to skip."""
    if isinstance(exc, OSError | TimeoutError | OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)
