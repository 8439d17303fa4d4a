"""Registry: the live rooms of this process; single-flight loading and graceful unloading."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator

from pycrdt import get_state, merge_updates

from server import metrics
from server.origin import Origin
from server.persistence.store import Store
from server.persistence.writer import Writer
from server.rooms.broker import RedisBroker, Retained
from server.rooms.room import EMPTY_UPDATE, Room
from server.rooms.room import LoadFailed as LoadFailed
from shared.documents import call_with_deep_stack

log = logging.getLogger("tandem.rooms")

_BIG_STATE = 256 * 1024  # merge stored rows in a worker thread above this size


class Registry:
    """Maps document ids to rooms.

    Every client that asks for a room while it loads awaits the same load, and nobody gets a
    room before its stored state is in it. A room whose last client left is unloaded after
    `grace` seconds, and only once the writer has committed all its updates; if storage is
    down the room stays in memory and the unload is retried.
    """

    def __init__(
        self,
        store: Store,
        writer: Writer,
        *,
        grace: float = 10.0,
        max_document_bytes: int = 0,
        presence_interval: float = 0.0,
    ) -> None:
        self.store = store
        self.writer = writer
        self.grace = grace
        self.max_document_bytes = max_document_bytes
        self.presence_interval = presence_interval
        self.rooms: dict[str, Room] = {}
        self._loads: dict[str, asyncio.Task[Room]] = {}
        self._refs: dict[str, int] = defaultdict(int)
        self._unloads: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Other processes hosting the same documents (None: this process is alone).
        self.broker: RedisBroker | None = None

    async def acquire(self, doc_id: str, *, warm: bool = True) -> Room:
        """The loaded room for `doc_id`; pair every successful call with `release`.

        With `warm=False` the room may still be cold (see Room): a sync session can answer
        its client from the stored bytes before the document is built.
        """
        self._refs[doc_id] += 1
        self._cancel_unload(doc_id)
        try:
            room = self.rooms.get(doc_id)
            if room is None:
                load = self._loads.get(doc_id)
                if load is None:
                    load = asyncio.get_running_loop().create_task(self._load(doc_id))
                    self._loads[doc_id] = load
                # Shielded: a client that gives up does not cancel the load others wait for.
                room = await asyncio.shield(load)
            if warm or room.broken is not None:
                room.warm()
        except BaseException as exc:
            if isinstance(exc, LoadFailed):
                self._evict_broken(doc_id)
            self.release(doc_id)
            raise
        return room

    def _evict_broken(self, doc_id: str) -> None:
        """Forget a room whose stored state would not apply, so the next client loads it
        again (and fails the same way) rather than sharing a room that cannot take edits."""
        room = self.rooms.get(doc_id)
        if room is not None and room.broken is not None:
            del self.rooms[doc_id]
            self.writer.forget(doc_id)
            metrics.ROOMS.set(len(self.rooms))

    async def _load(self, doc_id: str) -> Room:
        started = time.perf_counter()
        broker = self.broker
        retained = Retained([], None)
        try:
            if broker is not None:
                # Heard from now on; what other processes appended before is read back,
                # since their writers may not have stored it yet.
                retained = await broker.prepare(doc_id)
            stored = await self.store.load(doc_id)
            room = Room(
                doc_id,
                self.writer.add,
                max_bytes=self.max_document_bytes,
                presence_interval=self.presence_interval,
                full=self.writer.full,
                ledger=self.writer,
                publish=None if broker is None else broker.publish,
            )
            room.deleted = stored.deleted

            def decode() -> None:
                state = stored.merged()  # merges the rows
                if retained.updates:
                    state = bytes(merge_updates(*([state] if state else []), *retained.updates))
                room.load(state)  # reads the state vector

            try:
                if sum(map(len, stored.updates)) > _BIG_STATE:
                    await asyncio.to_thread(call_with_deep_stack, decode)
                else:
                    decode()
            except BaseException as exc:
                if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                    raise
                raise LoadFailed(f"stored state of {doc_id} does not decode: {exc}") from exc
        except BaseException as exc:
            if broker is not None:
                broker.unhost(doc_id)
            if not isinstance(exc, Exception):
                raise
            metrics.LOAD_FAILURES.inc()
            log.error("load of %s failed: %s", doc_id, exc)
            raise LoadFailed(str(exc)) from exc
        finally:
            self._loads.pop(doc_id, None)
        self.rooms[doc_id] = room
        if broker is not None:
            broker.host(room, retained)
        self.writer.track(doc_id, len(stored.updates), sum(map(len, stored.updates)))
        metrics.ROOMS.set(len(self.rooms))
        metrics.LOAD_SECONDS.observe(time.perf_counter() - started)
        if not self._refs.get(doc_id):
            self._schedule_unload(doc_id)  # everyone who asked has gone meanwhile
        return room

    @contextlib.asynccontextmanager
    async def use(self, doc_id: str) -> AsyncIterator[Room]:
        """The room for the duration of a block: server-side reads and edits go through it,
        so connected clients see them at once and they are logged like a client's."""
        room = await self.acquire(doc_id)
        try:
            yield room
        finally:
            self.release(doc_id)

    def deleted(self, doc_id: str, reason: str) -> None:
        """The document was deleted: close its connections (code 4404) and refuse new ones
        while its room stays loaded; a later load reads the deletion from the store."""
        room = self.rooms.get(doc_id)
        if room is not None:
            room.deleted = True
            room.close_all(4404, reason)
        load = self._loads.get(doc_id)
        if load is not None:  # it may have read the document before the deletion
            load.add_done_callback(lambda _: self.deleted(doc_id, reason))

    def release(self, doc_id: str) -> None:
        left = self._refs[doc_id] - 1
        if left > 0:
            self._refs[doc_id] = left
            return
        self._refs.pop(doc_id, None)
        if doc_id in self.rooms:
            self._schedule_unload(doc_id)

    def _schedule_unload(self, doc_id: str, delay: float | None = None) -> None:
        self._cancel_unload(doc_id)
        loop = asyncio.get_running_loop()
        self._unloads[doc_id] = loop.call_later(
            self.grace if delay is None else delay, self._start_unload, doc_id
        )

    def _cancel_unload(self, doc_id: str) -> None:
        handle = self._unloads.pop(doc_id, None)
        if handle is not None:
            handle.cancel()

    def _start_unload(self, doc_id: str) -> None:
        self._unloads.pop(doc_id, None)
        task = asyncio.get_running_loop().create_task(self._unload(doc_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _unload(self, doc_id: str) -> None:
        if self._refs.get(doc_id) or doc_id not in self.rooms:
            return
        try:
            await self.writer.flush(doc_id, timeout=30.0)
        except TimeoutError:
            log.warning("%s keeps unsaved updates; it stays loaded and unload is retried", doc_id)
            self._schedule_unload(doc_id)
            return
        if self._refs.get(doc_id) or self.writer.pending(doc_id):
            return  # someone came back meanwhile
        del self.rooms[doc_id]
        if self.broker is not None:
            self.broker.unhost(doc_id)
        self.writer.settle(doc_id)
        metrics.ROOMS.set(len(self.rooms))
        log.info("unloaded %s", doc_id)

    # -- what the broker asks (server/rooms/broker.py) -------------------------------------

    async def reconcile(self, doc_id: str) -> None:
        """Another process died: store what this room holds that the database lacks (its
        writer's last window, which lives on here). Any extra is stored twice, harmlessly."""
        room = self.rooms.get(doc_id)
        if room is None or room.cold or room.broken is not None:
            return
        try:
            stored = (await self.store.load(doc_id)).merged()
        except Exception as exc:
            log.warning("could not compare %s with the database: %s", doc_id, exc)
            return
        missing = room.doc.get_update(get_state(stored) if stored else b"\x00")
        if missing != EMPTY_UPDATE:
            self.writer.add(doc_id, missing, Origin("remote"))
            log.info("stored %d bytes of %s that a departed process held", len(missing), doc_id)

    async def refresh(self, doc_id: str) -> None:
        """Redis was unreachable: merge the stored state (what other processes' clients
        did meanwhile, as they stored it) into the room, and relay what was new here."""
        room = self.rooms.get(doc_id)
        if room is None:
            return
        try:
            stored = await self.store.load(doc_id)
        except Exception as exc:
            log.warning("could not re-read %s after the Redis outage: %s", doc_id, exc)
            return
        if stored.deleted and not room.deleted:
            self.deleted(doc_id, "document deleted")
            return
        state = stored.merged()
        if state:
            try:
                room.apply_remote(state)
            except (LoadFailed, ValueError) as exc:
                log.warning("stored state of %s not merged: %s", doc_id, exc)

    async def close(self) -> None:
        for handle in self._unloads.values():
            handle.cancel()
        self._unloads.clear()
        for task in list(self._tasks):
            task.cancel()
