"""Writer: write-behind group commit of effective updates, and the compaction trigger.

Rooms hand every effective update to `add`, which never waits: it commits a lone update on
the spot when the store can do that without waiting, and queues everything else. One task
commits what has gathered every `delay` seconds in a single transaction; updates of one
document from one origin are merged into one row first. A failed commit keeps the batch and
retries with backoff, and `flush(doc_id)` only returns once that document's updates are
committed, so a room is never unloaded with unsaved changes.

While the database is down the queue grows in memory, up to `max_pending_bytes`: past it,
rooms refuse new client updates (`full`) before applying them, and nothing already queued is
dropped. Each batch carries a random key, stored with its rows; a retry asks the store to
write nothing if rows with that key are there already (a commit whose answer was lost), so
every update is stored once.

Records are numbered as they are queued and committed in that order: `mark` is the newest
number, and `when_stored(mark, callback)` calls back once the commits have reached it, which
is how a durable connection learns that its updates are stored (server/rooms/durable.py).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from pycrdt import merge_updates

from server import metrics
from server.origin import Origin
from server.persistence.compaction import compact
from server.persistence.store import Store, UpdateRecord
from shared.documents import call_with_deep_stack

log = logging.getLogger("tandem.persistence")
# The most updates merged in one call (see `merge`).
MERGE_STEP = 128

# The longest wait between two attempts of a failed commit: when the database returns, the
# queue starts draining within this many seconds.
MAX_BACKOFF = 2.0
# A commit attempt that has run this long without an answer counts as stalled (/readyz: 503).
STALL_SECONDS = 5.0
# What a queued update costs in memory besides its bytes (the record, the bytes object's
# header, the queue's slot; measured: about 121). Counted with the bytes against the bound,
# so a flood of tiny updates is bounded too.
RECORD_OVERHEAD = 128


@dataclass
class _Outage:
    """Commits have been failing since `started` (monotonic time)."""

    started: float
    stored_before: int  # `Writer._stored` when the first commit failed
    failures: int = 1
    # Set by the first commit that succeeds: the outage is over once every update queued by
    # then is stored (None: still failing).
    drain_to: int | None = None


class Writer:
    def __init__(
        self,
        store: Store,
        *,
        delay: float = 0.25,
        max_batch: int = 5000,
        compact_after_updates: int = 500,
        compact_after_bytes: int = 4 * 1024 * 1024,
        settle_after_updates: int = 16,
        settle_after_bytes: int = 64 * 1024,
        max_pending_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.delay = delay
        self.max_batch = max_batch
        self.compact_after_updates = compact_after_updates
        self.compact_after_bytes = compact_after_bytes
        # When a room unloads, a smaller backlog is enough to compact: the room's next load
        # then reads one snapshot instead of merging rows, and builds its document from a
        # garbage-collected encoding, which pycrdt applies about twice as fast.
        self.settle_after_updates = settle_after_updates
        self.settle_after_bytes = settle_after_bytes
        self._queue: list[UpdateRecord] = []
        self._pending: dict[str, int] = defaultdict(int)
        # Records are numbered as they are queued and committed in that order: `_stored` of
        # them are committed, `_newest[doc]` is the number of the doc's newest queued record.
        self._queued = 0
        self._stored = 0
        self._newest: dict[str, int] = {}
        # Callbacks waiting for `_stored` to reach a number (`when_stored`): a heap of
        # (number, arrival, callback), the arrival breaking ties so callbacks never compare.
        self._waiters: list[tuple[int, int, Callable[[], None]]] = []
        self._arrivals = itertools.count()
        self._wake = asyncio.Event()
        # When the newest update was queued, and how long after the one before it.
        self._last_add = -float("inf")
        self._gap = float("inf")
        self._committed = asyncio.Condition()
        # Resolved when the commit window ends: by its timer, or early by `flush`.
        self._window: asyncio.Future[None] | None = None
        # Rows and bytes stored per document since its last snapshot: the compaction trigger.
        self._backlog: dict[str, list[int]] = {}
        self._compacting: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.healthy = True
        # Memory the uncommitted updates take (their bytes plus RECORD_OVERHEAD each), and
        # the ceiling past which rooms refuse new client updates (0: none).
        self.max_pending_bytes = max_pending_bytes
        self._pending_bytes = 0
        self._outage: _Outage | None = None
        self._refusing = False  # `full` said yes since the last commit
        self._refusal_logged = -float("inf")
        self._attempt_started: float | None = None  # the commit attempt under way
        # Called with every committed row (the catalog's and the activity log's hook): it
        # runs once per row, so it must stay cheap.
        self.on_commit: Callable[[UpdateRecord], None] | None = None
        # With several processes on one database: held around each compaction, by name
        # (`compact:{doc_id}`), it says whether this process may compact now, so that two
        # never compact one document at once (server/leases.py `compaction_lease`).
        self.lease: Callable[[str], AbstractAsyncContextManager[bool]] | None = None
        # Read when /metrics is scraped, rather than set on every commit.
        metrics.PERSIST_PENDING.set_function(self.uncommitted)
        metrics.PERSIST_PENDING_BYTES.set_function(self.pending_bytes)

    def add(self, doc_id: str, update: bytes, origin: Origin) -> None:
        now = time.monotonic()
        self._gap = gap = now - self._last_add
        self._last_add = now
        record = UpdateRecord(doc_id, update, origin.source, origin.author)
        # An update that comes alone (`delay` or more after the one before it, nothing
        # queued or being committed) is committed on the spot when the store can do that
        # without waiting: a window would batch nothing, and waking the commit task for it
        # costs more CPU than the commit (see `run`).
        if gap >= self.delay and self._queued == self._stored and self._commit_now(record):
            return
        self._queue.append(record)
        self._pending[doc_id] += 1
        self._pending_bytes += len(update) + RECORD_OVERHEAD
        self._queued += 1
        self._newest[doc_id] = self._queued
        self._wake.set()

    def _commit_now(self, record: UpdateRecord) -> bool:
        started = time.perf_counter()
        try:
            if not self.store.append_now((record,)):
                return False
        except Exception as exc:  # queued instead: the commit task retries it
            # A store that commits on the spot (memory, SQLite on this thread) knows an
            # error means nothing was written, so the retry under a new key is safe.
            self._failed(exc, 1)
            return False
        self._queued += 1
        self._stored += 1
        # Nothing was pending, so no `flush` is waiting for this record.
        self._committed_rows((record,), 1, started)
        if self._waiters:
            self._call_stored()
        return True

    def mark(self) -> int:
        """The number of the newest record queued (or committed on the spot) so far: once
        `committed()` reaches it, everything handed to `add` before this call is stored."""
        return self._queued

    def committed(self) -> int:
        """How many records are committed: records are numbered as queued (see `mark`) and
        committed in that order, so every record numbered up to this is stored."""
        return self._stored

    def when_stored(self, mark: int, callback: Callable[[], None]) -> None:
        """Call `callback()` once every record up to `mark` is committed: at once if that is
        so already, otherwise right after the commit that gets there (while the database is
        down, that waits for it). A callback must not raise and must stay cheap: it runs in
        the commit path."""
        if self._stored >= mark:
            callback()
            return
        heapq.heappush(self._waiters, (mark, next(self._arrivals), callback))

    def _call_stored(self) -> None:
        """Call the `when_stored` callbacks whose records are all committed now."""
        waiters = self._waiters
        stored = self._stored
        while waiters and waiters[0][0] <= stored:
            callback = heapq.heappop(waiters)[2]
            try:
                callback()
            except Exception:  # one caller's bug must not stop the commit loop
                log.exception("a when_stored callback failed")

    def track(self, doc_id: str, rows: int, size: int) -> None:
        """Seed the compaction trigger with what a load found in the store."""
        self._backlog[doc_id] = [rows, size]
        self._maybe_compact(doc_id)

    def forget(self, doc_id: str) -> None:
        self._backlog.pop(doc_id, None)

    def settle(self, doc_id: str) -> None:
        """The document's room is unloading: forget it, compacting it first if its next load
        would otherwise merge a sizeable tail of update rows."""
        backlog = self._backlog.pop(doc_id, None)
        if backlog is None or doc_id in self._compacting:
            return
        rows, size = backlog
        if rows and (rows >= self.settle_after_updates or size >= self.settle_after_bytes):
            self._start_compaction(doc_id)

    def uncommitted(self) -> int:
        """Updates queued and not yet committed, the batch being committed included."""
        return self._queued - self._stored

    def pending_bytes(self) -> int:
        """Memory the uncommitted updates take, the batch being committed included: their
        bytes plus RECORD_OVERHEAD each."""
        return self._pending_bytes

    def full(self, incoming: int) -> bool:
        """Whether a new update of `incoming` bytes would take the uncommitted updates past
        `max_pending_bytes`; rooms then refuse it. With nothing pending an update is always
        taken, however big."""
        pending = self._pending_bytes
        if not self.max_pending_bytes or not pending:
            return False
        if pending + incoming + RECORD_OVERHEAD <= self.max_pending_bytes:
            return False
        self._refusing = True
        now = time.monotonic()
        if now - self._refusal_logged >= 60.0:  # at most once a minute
            self._refusal_logged = now
            log.warning(
                "%d bytes of updates wait to be stored (TANDEM_MAX_PENDING_BYTES %d): new "
                "client updates are refused with 1013 until the queue drains",
                pending,
                self.max_pending_bytes,
            )
        return True

    def available(self) -> bool:
        """Whether an edit made now would be stored soon: commits succeed and the queue is
        under its bound. REST edits are refused (503, not applied) otherwise."""
        return self.state() == "ok" and not self.full(1)

    def state(self) -> str:
        """`ok`; `retrying` (commits fail); `stalled` (a commit has waited for the database
        for STALL_SECONDS or more); `full` (new client updates are refused)."""
        if not self.healthy:
            return "retrying"
        attempt = self._attempt_started
        if attempt is not None and time.monotonic() - attempt >= STALL_SECONDS:
            return "stalled"
        if self._refusing:
            return "full"
        return "ok"

    def pending(self, doc_id: str | None = None) -> int:
        return len(self._queue) if doc_id is None else self._pending.get(doc_id, 0)

    async def flush(self, doc_id: str | None = None, timeout: float | None = None) -> None:
        """Wait until the updates of `doc_id` (or all) queued so far are committed; updates
        queued after the call do not hold it up, so a busy document does not delay it."""
        target = self._queued if doc_id is None else self._newest.get(doc_id, 0)
        window = self._window
        if self._stored < target and window is not None and not window.done():
            window.set_result(None)  # someone waits for this batch: end its window now
        async with asyncio.timeout(timeout), self._committed:
            await self._committed.wait_for(lambda: self._stored >= target)

    async def run(self) -> None:
        """The commit loop; runs until cancelled.

        Updates that come in a stream gather for `delay` seconds into one transaction. An
        update that comes alone, `delay` or more after the one before it, is committed at
        once: by `add` itself when the store can commit without waiting (SQLite, memory),
        or here on the loop's next turn (PostgreSQL, or SQLite while locked), while the loop
        is still awake for the frame that brought it. Waiting would not batch anything, and
        on a VM a separate timer wake-up costs about 0.25 ms of CPU.
        """
        while True:
            await self._wake.wait()
            queued = len(self._queue)
            alone = queued == 1 and self._gap >= self.delay
            # A full batch waits for nothing: under a burst, batches follow each other as
            # fast as they commit, not one per window. Even alone, yield once: the frame that
            # queued the update finishes first.
            full = queued >= self.max_batch
            if alone or full:
                await asyncio.sleep(0)
            else:
                await self._gather()
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            if not self._queue:
                self._wake.clear()
            await self._commit(batch)

    async def _gather(self) -> None:
        """Wait out the commit window (what `asyncio.sleep` does), unless `flush` ends it."""
        loop = asyncio.get_running_loop()
        self._window = window = loop.create_future()
        timer = loop.call_later(self.delay, _end, window)
        try:
            await window
        finally:
            timer.cancel()
            self._window = None

    async def _commit(self, batch: list[UpdateRecord]) -> None:
        # merge_updates holds the GIL, and its cost grows faster than linearly: big batches
        # are merged in steps (`merge`) on a thread, so the loop gets the GIL between steps.
        if len(batch) > MERGE_STEP:
            rows = await asyncio.to_thread(call_with_deep_stack, lambda: coalesce(batch))
        else:
            rows = coalesce(batch)
        # Kept across the attempts: a retry writes nothing if an attempt whose answer was
        # lost (the connection dropped during COMMIT) stored the rows after all.
        key = random.getrandbits(63)
        again = False
        backoff = 0.1
        while True:
            started = time.perf_counter()
            self._attempt_started = time.monotonic()
            try:
                await self.store.append(rows, key=key, again=again)
            except Exception as exc:  # any storage failure: keep the batch and retry
                self._attempt_started = None
                self._failed(exc, len(batch))
                again = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            break
        self._attempt_started = None
        self._stored += len(batch)
        self._pending_bytes -= sum(len(record.data) for record in batch)
        self._pending_bytes -= RECORD_OVERHEAD * len(batch)
        self._refusing = False
        for record in batch:
            left = self._pending[record.doc_id] - 1
            if left:
                self._pending[record.doc_id] = left
            else:
                del self._pending[record.doc_id]
                self._newest.pop(record.doc_id, None)
        self._committed_rows(rows, len(batch), started)
        if self._waiters:
            self._call_stored()
        async with self._committed:
            self._committed.notify_all()

    def _failed(self, exc: Exception, updates: int) -> None:
        """A commit failed: the first failure of an outage is logged as a warning, the
        retries that follow at debug level only."""
        self.healthy = False
        metrics.PERSIST_FAILURES.inc()
        outage = self._outage
        if outage is None:
            self._outage = _Outage(time.monotonic(), self._stored)
            log.warning(
                "the database is unavailable: a commit of %d updates failed (%s); updates "
                "are kept in memory and retried until it answers",
                updates,
                _short(exc),
            )
            return
        outage.failures += 1
        outage.drain_to = None
        log.debug("commit of %d updates failed again: %s", updates, _short(exc))

    def _recovered(self) -> None:
        """After a successful commit during an outage: once everything queued while it lasted
        is stored, say so."""
        outage = self._outage
        assert outage is not None
        if outage.drain_to is None:
            outage.drain_to = self._queued
        if self._stored < outage.drain_to:
            return
        self._outage = None
        log.info(
            "the database is available again after %.1f s: stored the %d updates queued "
            "meanwhile (%d failed commits)",
            time.monotonic() - outage.started,
            outage.drain_to - outage.stored_before,
            outage.failures,
        )

    def _committed_rows(self, rows: Sequence[UpdateRecord], updates: int, started: float) -> None:
        """Metrics and the compaction trigger, after a commit of `updates` updates as `rows`."""
        self.healthy = True
        if self._outage is not None:
            self._recovered()
        metrics.PERSIST_SECONDS.observe(time.perf_counter() - started)
        metrics.PERSIST_BATCH_UPDATES.observe(updates)
        hook = self.on_commit
        for row in rows:
            if hook is not None:
                hook(row)
            backlog = self._backlog.get(row.doc_id)
            if backlog is not None:
                backlog[0] += 1
                backlog[1] += len(row.data)
                self._maybe_compact(row.doc_id)

    def _maybe_compact(self, doc_id: str) -> None:
        rows, size = self._backlog[doc_id]
        if doc_id in self._compacting:
            return
        if rows < self.compact_after_updates and size < self.compact_after_bytes:
            return
        self._start_compaction(doc_id)

    def _start_compaction(self, doc_id: str) -> None:
        self._compacting.add(doc_id)
        task = asyncio.get_running_loop().create_task(self._compact(doc_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _compact(self, doc_id: str) -> None:
        try:
            if self.lease is None:
                result = await compact(self.store, doc_id)
            else:
                async with self.lease(f"compact:{doc_id}") as may:
                    result = await compact(self.store, doc_id) if may else None
                if not may:
                    # Another process is compacting what is stored, this process's rows
                    # included: count afresh from here.
                    metrics.COMPACTIONS_SKIPPED.inc()
                    log.info("compaction of %s left to the process holding its lease", doc_id)
                    backlog = self._backlog.get(doc_id)
                    if backlog is not None:
                        backlog[0] = backlog[1] = 0
            backlog = self._backlog.get(doc_id)
            if result is not None and backlog is not None:
                backlog[0] = max(0, backlog[0] - result.merged_rows)
                backlog[1] = 0
        except Exception:
            log.exception("compaction of %s failed; the update rows stay", doc_id)
            self._compacting.discard(doc_id)
            return
        self._compacting.discard(doc_id)
        if doc_id in self._backlog:
            self._maybe_compact(doc_id)  # rows that arrived meanwhile may be over the bar

    async def close(self, timeout: float = 30.0) -> None:
        """Commit everything queued, then wait for compactions, those that a finishing
        compaction starts (rows that came in while it ran) included."""
        try:
            await self.flush(timeout=timeout)
        except TimeoutError:
            log.error("shutdown: %d updates could not be committed", self.uncommitted())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._tasks), timeout=left)


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _end(window: asyncio.Future[None]) -> None:
    if not window.done():
        window.set_result(None)


def merge(updates: list[bytes]) -> bytes:
    """`merge_updates(*updates)`, in steps of at most MERGE_STEP updates, then the merged
    steps again, and so on. One call over thousands of updates costs far more than the
    steps (4000 map entries: about 150 ms at once, 10 ms in steps of 128), and holds the GIL
    throughout; between steps other threads (the event loop) get it back."""
    while len(updates) > 1:
        updates = [
            bytes(merge_updates(*updates[i : i + MERGE_STEP]))
            if i + 1 < len(updates)
            else updates[i]
            for i in range(0, len(updates), MERGE_STEP)
        ]
    return updates[0]


def coalesce(batch: list[UpdateRecord]) -> list[UpdateRecord]:
    """Merge the updates of each (document, origin, author) in a batch into one row."""
    groups: dict[tuple[str, str, str | None], list[bytes]] = {}
    for record in batch:
        groups.setdefault((record.doc_id, record.origin, record.author), []).append(record.data)
    rows: list[UpdateRecord] = []
    for (doc_id, origin, author), data in groups.items():
        if len(data) > 1:
            try:
                data = [merge(data)]
            except Exception:
                # Rooms only queue updates pycrdt produced, so this is not expected; if it
                # happens, the updates are stored one row each rather than not at all.
                log.exception(
                    "could not merge %d updates of %s; storing them apart", len(data), doc_id
                )
        rows.extend(UpdateRecord(doc_id, update, origin, author) for update in data)
    return rows
