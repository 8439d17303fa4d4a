"""The catalog: keeps each document's workspace record in step with its content.

A document's row is created by its first stored update (server/persistence/append.py), with
its id as title and no kind. After commits, the catalog reads what the content says about
the document and writes what differs into the row:

- its kind, while the row has none or `raw`: `meta.kind`, else what the roots make it
  (shared/roots.py). A recognised board, doc or discussion stays one;
- its title, from a non-empty `meta.title`;
- its tags, from `meta.tags` when that is a list of strings.

So a document that stock Yjs clients create is listed, typed and titled like one created over
REST, and a client that renames a document in `meta` renames it in the workspace. REST
changes write both sides (server/api/docs.py), so the two agree whichever side changes.

Cost on the commit path: one set lookup per committed row. Each document is checked at most
once per `delay` seconds while it changes, on a private copy in a worker thread (reading a
root re-types it, which must never happen to a live room's document), and the database is
asked only when what the content says has changed since the last check.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from pycrdt import Array, Doc, Map
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from server.api.fields import MAX_TAGS
from server.persistence.store import Store
from server.persistence.tables import documents
from server.rooms.registry import Registry
from shared.documents import AnyKind, call_with_deep_stack, known_kind
from shared.roots import recognise, root_shape

log = logging.getLogger("tandem.catalog")

TITLE_MAX = 300
TAG_MAX = 64
REMEMBERED = 10_000
"""Documents whose last reading is kept; past that the memory starts over (a reading costs
one extra query per document then, nothing more)."""


@dataclass(frozen=True, slots=True)
class Reading:
    """What a document's content says about its record; None: it says nothing."""

    kind: AnyKind
    title: str | None
    tags: tuple[str, ...] | None


def read_content(state: bytes) -> Reading:
    """Read a document's stored or live state (an update) on a private copy."""
    doc: Doc[Any] = Doc()
    if state:
        doc.apply_update(state)
    kind = recognise(doc)
    title: str | None = None
    tags: tuple[str, ...] | None = None
    shape = root_shape(doc, "meta") if "meta" in doc.keys() else None
    if shape is not None and shape[0] and shape[1] is None:  # a Map
        meta = doc.get("meta", type=Map)
        title = _title(meta.get("title"))
        tags = _tags(meta.get("tags"))
    return Reading(kind, title, tags)


def _title(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()[:TITLE_MAX]


def _tags(value: object) -> tuple[str, ...] | None:
    if isinstance(value, Array):
        value = value.to_py()
    if not isinstance(value, list | tuple):
        return None
    if not all(isinstance(item, str) for item in value):
        return None
    cleaned = [item.strip()[:TAG_MAX] for item in value if item.strip()]
    return tuple(dict.fromkeys(cleaned))[:MAX_TAGS]


class Catalog:
    """Schedules and runs the record checks; `changed` is the writer's commit hook."""

    def __init__(
        self, engine: AsyncEngine, store: Store, registry: Registry, *, delay: float = 2.0
    ) -> None:
        self.engine = engine
        self.store = store
        self.registry = registry
        self.delay = delay
        self._due: set[str] = set()
        self._last: dict[str, Reading] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._closed = False

    def changed(self, doc_id: str) -> None:
        """Rows of `doc_id` were committed: check its record within `delay` seconds."""
        if doc_id in self._due or self._closed:
            return
        self._due.add(doc_id)
        loop = asyncio.get_running_loop()
        self._timers[doc_id] = loop.call_later(self.delay, self._start, doc_id)

    def _start(self, doc_id: str) -> None:
        self._timers.pop(doc_id, None)
        task = asyncio.get_running_loop().create_task(self._run(doc_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, doc_id: str) -> None:
        # Commits from here on schedule the next check: this one may read a state before them.
        self._due.discard(doc_id)
        try:
            await self.check(doc_id)
        except Exception as exc:
            # The record stays as it was until the next change; the content is untouched.
            log.warning("%s: record not brought up to date: %s", doc_id, exc)

    async def check(self, doc_id: str) -> None:
        """Bring `doc_id`'s record in step with its content now."""
        room = self.registry.rooms.get(doc_id)
        if room is not None:
            state = room.doc.get_update()  # on the loop: the room's document is not shared
        else:
            state = (await self.store.load(doc_id)).merged()
        reading = await asyncio.to_thread(call_with_deep_stack, lambda: read_content(state))
        if self._last.get(doc_id) == reading:
            return
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(documents.c.kind, documents.c.title, documents.c.tags).where(
                        documents.c.id == doc_id, documents.c.deleted_at.is_(None)
                    )
                )
            ).first()
            if row is None:
                return
            values: dict[str, Any] = {}
            if known_kind(row.kind) is None and reading.kind != row.kind:
                values["kind"] = reading.kind
            if reading.title is not None and reading.title != row.title:
                values["title"] = reading.title
            if reading.tags is not None and list(reading.tags) != list(row.tags or ()):
                values["tags"] = list(reading.tags)
            if values:
                await conn.execute(
                    update(documents).where(documents.c.id == doc_id).values(**values)
                )
                log.info("%s: record follows its content: %s", doc_id, ", ".join(values))
        if len(self._last) >= REMEMBERED:
            self._last.clear()
        self._last[doc_id] = reading

    async def close(self, timeout: float = 10.0) -> None:
        """Stop scheduling; run the checks that are due now and wait for them (call after
        the last commit, so that the records follow every stored change)."""
        self._closed = True
        for doc_id, timer in list(self._timers.items()):
            timer.cancel()
            self._start(doc_id)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
