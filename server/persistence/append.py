"""The update log's hot write path: one group commit on the raw database driver.

A commit through SQLAlchemy's async layer costs about 1.4 ms of CPU on either database, most
of it in the greenlet bridge and in one thread hop per statement; the same transaction on
the driver itself costs 0.015-0.05 ms (sqlite3) to 0.3 ms (asyncpg). The writer commits many
times a second, so this one path talks to the drivers directly; everything else uses SQLAlchemy.
The SQL must match server/persistence/tables.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from server.persistence.listen import connect
from server.persistence.sqlite import (
    DEFAULT_SYNCHRONOUS,
    SqliteSynchronous,
    apply_pragmas,
    synchronous_of,
)
from server.persistence.store import UpdateRecord

log = logging.getLogger("tandem.persistence")

Touch = tuple[str, str | None]
"""A document row to create or touch: (document id, the user whose update it is, or None)."""

# A document's first stored update registers it: a client that opens an unknown id creates
# a workspace document titled with its id, created by the update's author. Later commits
# only refresh when (and by whom) it was last changed.
_UPSERT_DOCUMENT = (
    "INSERT INTO documents (id, created_at, updated_at, title, created_by, updated_by) "
    "VALUES ({0}, {1}, {1}, {0}, {2}, {2}) "
    "ON CONFLICT (id) DO UPDATE SET updated_at = excluded.updated_at, "
    "updated_by = COALESCE(excluded.updated_by, documents.updated_by)"
)


class Appender(Protocol):
    async def append(
        self,
        records: Sequence[UpdateRecord],
        touch: Sequence[Touch],
        stamp: datetime,
        *,
        key: int | None = None,
        again: bool = False,
    ) -> None:
        """Insert `records` (tagged with `key`) and create/touch the `touch` document rows
        (see _UPSERT_DOCUMENT),
        in one transaction; with `again`, nothing if rows tagged `key` are stored already."""
        ...

    def append_now(
        self, records: Sequence[UpdateRecord], touch: Sequence[Touch], stamp: datetime
    ) -> bool:
        """The same, on the spot, if that needs no waiting; False: nothing was written."""
        ...

    async def close(self) -> None: ...


def appender_for(
    engine: AsyncEngine, sqlite_synchronous: SqliteSynchronous = DEFAULT_SYNCHRONOUS
) -> Appender:
    if engine.dialect.name == "sqlite":
        return SqliteAppender(make_url(engine.url).database or ":memory:", sqlite_synchronous)
    if engine.dialect.name == "postgresql":
        return PostgresAppender(engine)
    raise ValueError(f"unsupported database {engine.dialect.name}")


# A small commit is made on the event loop; bigger ones go to the thread. Measured on a
# 2-vCPU VM: a one-row commit costs 15 µs of CPU on the driver with warm caches and 65-150 µs
# right after a fan-out, while sending it to a thread and back costs 300 µs or more in
# wake-ups. A batch of 256 small rows holds the loop for 1.3-2 ms, less than writing one
# frame to 500 peers does.
INLINE_MAX_ROWS = 256
INLINE_MAX_BYTES = 256 * 1024
# The appender's connections never checkpoint as part of a commit (that copies pages and
# syncs the file: milliseconds on the loop); the thread checkpoints instead, about as often
# as SQLite would by itself (every 1000 pages of log).
CHECKPOINT_AFTER_PAGES = 1000
PAGE_SIZE = 4096


class SqliteAppender:
    """Commits on sqlite3 itself, the small ones right on the event loop.

    Two connections, each used by one thread only (sqlite3 objects are not shared across
    threads). The loop's connection never waits for a lock: when another connection holds
    the database's write lock (a compaction, an API write, another process), the commit
    goes to the thread's connection, which waits up to 30 s like every other connection.
    The thread also takes big batches, the log checkpoints, and the commits that come
    while a checkpoint runs.
    """

    def __init__(self, path: str, synchronous: SqliteSynchronous = DEFAULT_SYNCHRONOUS) -> None:
        self.path = path
        self.synchronous = synchronous
        self._reported = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tandem-append")
        self._inline: sqlite3.Connection | None = None
        self._conn: sqlite3.Connection | None = None
        self._unchecked_pages = 0
        self._checkpointing: asyncio.Future[None] | None = None

    def _open(self, timeout: float) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=timeout)
        try:
            apply_pragmas(conn, self.synchronous)
            conn.execute("PRAGMA wal_autocheckpoint=0")
            level = synchronous_of(conn)
        except BaseException:
            conn.close()
            raise
        if not self._reported:
            # Read back from the connection: what an operator needs to know about durability.
            self._reported = True
            name = {1: "NORMAL", 2: "FULL"}.get(level, str(level))
            log.info("SQLite update log %s: synchronous=%s", self.path, name)
        return conn

    def _connection(self) -> sqlite3.Connection:
        """The thread's connection."""
        if self._conn is None:
            self._conn = self._open(timeout=30)
        return self._conn

    def _append_waiting(
        self,
        records: Sequence[UpdateRecord],
        touch: Sequence[Touch],
        stamp: str,
        key: int | None,
        again: bool,
    ) -> None:
        _write(self._connection(), records, touch, stamp, key, again)

    def _checkpoint(self) -> None:
        # PASSIVE: copies what it can without waiting for readers or blocking writers.
        self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    async def append(
        self,
        records: Sequence[UpdateRecord],
        touch: Sequence[Touch],
        stamp: datetime,
        *,
        key: int | None = None,
        again: bool = False,
    ) -> None:
        if self._now(records, touch, stamp, key, again):
            return
        text = _text(stamp)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self._executor, self._append_waiting, records, touch, text, key, again
        )
        self._written(records, touch, sum(len(r.data) for r in records))

    def append_now(
        self, records: Sequence[UpdateRecord], touch: Sequence[Touch], stamp: datetime
    ) -> bool:
        return self._now(records, touch, stamp, None, False)

    def _now(
        self,
        records: Sequence[UpdateRecord],
        touch: Sequence[Touch],
        stamp: datetime,
        key: int | None,
        again: bool,
    ) -> bool:
        # While the thread checkpoints, commits queue behind it: the first commit after a
        # complete checkpoint starts the log file from its beginning again, which a commit
        # made meanwhile on the loop would prevent (the log would only ever grow).
        if self._checkpointing is not None or len(records) + len(touch) > INLINE_MAX_ROWS:
            return False
        size = sum(len(r.data) for r in records)
        if size > INLINE_MAX_BYTES or not self._append_inline(
            records, touch, _text(stamp), key, again
        ):
            return False
        self._written(records, touch, size)
        return True

    def _written(self, records: Sequence[UpdateRecord], touch: Sequence[Touch], size: int) -> None:
        """Count the log pages a commit wrote, at most; checkpoint after ~1000 of them.

        Rows of different documents land on different pages of the (doc_id, seq) index: one
        page each at worst, besides the table's own pages. A lone row writes about three.
        """
        self._unchecked_pages += 2 + len(records) + len(touch) + size // PAGE_SIZE
        if self._unchecked_pages >= CHECKPOINT_AFTER_PAGES and self._checkpointing is None:
            self._unchecked_pages = 0
            self._start_checkpoint()

    def _append_inline(
        self,
        records: Sequence[UpdateRecord],
        touch: Sequence[Touch],
        stamp: str,
        key: int | None = None,
        again: bool = False,
    ) -> bool:
        """Commit on the loop's connection; False if the database is locked (nothing done)."""
        try:
            if self._inline is None:
                self._inline = self._open(timeout=0)
            _write(self._inline, records, touch, stamp, key, again)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            return False
        return True

    def _start_checkpoint(self) -> None:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._checkpoint)
        self._checkpointing = future

        def done(_: asyncio.Future[None]) -> None:
            self._checkpointing = None
            if not future.cancelled() and future.exception() is not None:
                log.warning("WAL checkpoint failed: %s", future.exception())

        future.add_done_callback(done)

    async def close(self) -> None:
        if self._checkpointing is not None:
            with contextlib.suppress(Exception):
                await self._checkpointing
        if self._inline is not None:
            self._inline.close()
            self._inline = None

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)


def _text(stamp: datetime) -> str:
    """The text form SQLAlchemy's SQLite DateTime reads back (naive, UTC)."""
    return stamp.strftime("%Y-%m-%d %H:%M:%S.%f")


# Whether a commit with this key stored its rows. One document's rows, through the
# (doc_id, seq) index: the key has no index of its own, as it is only read on a retry.
STORED_ALREADY = "SELECT 1 FROM updates WHERE doc_id = {} AND batch_key = {} LIMIT 1"


def _write(
    conn: sqlite3.Connection,
    records: Sequence[UpdateRecord],
    touch: Sequence[Touch],
    stamp: str,
    key: int | None = None,
    again: bool = False,
) -> None:
    """One transaction: create/touch the document rows, insert the update rows (nothing if
    `again` and rows tagged `key` are stored already)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if again and key is not None and records:
            found = conn.execute(STORED_ALREADY.format("?", "?"), (records[0].doc_id, key))
            if found.fetchone() is not None:
                conn.execute("ROLLBACK")
                return
        if touch:
            conn.executemany(
                _UPSERT_DOCUMENT.format("?1", "?2", "?3"),
                [(doc_id, stamp, author) for doc_id, author in touch],
            )
        conn.executemany(
            "INSERT INTO updates (doc_id, data, origin, author, created_at, batch_key) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(r.doc_id, r.data, r.origin, r.author, stamp, key) for r in records],
        )
    except BaseException:
        _rollback(conn)
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        # A COMMIT that fails (SQLITE_BUSY, I/O error) may leave the transaction open; the
        # connection's next BEGIN would then fail for good. Rolled back, nothing is stored,
        # so the writer's retry cannot store it twice.
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


# PostgreSQL delivers a NOTIFY when its transaction commits, never before.
FEED_CHANNEL = "tandem_updates"
NOTIFY_UPDATES = f"NOTIFY {FEED_CHANNEL}"


class PostgresAppender:
    """A dedicated asyncpg connection: borrowing one from SQLAlchemy's pool costs a
    reset round trip per commit. Reconnects after a failure."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.url = engine.url
        self._conn: Any = None

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            self._conn = await connect(self.url)
        return self._conn

    async def append(
        self,
        records: Sequence[UpdateRecord],
        touch: Sequence[Touch],
        stamp: datetime,
        *,
        key: int | None = None,
        again: bool = False,
    ) -> None:
        conn = await self._connection()
        try:
            async with conn.transaction():
                if again and key is not None and records:
                    check = STORED_ALREADY.format("$1", "$2")
                    if await conn.fetchval(check, records[0].doc_id, key) is not None:
                        return  # the earlier attempt committed: its answer was lost
                if touch:
                    await conn.executemany(
                        _UPSERT_DOCUMENT.format("$1", "$2", "$3"),
                        [(doc_id, stamp, author) for doc_id, author in touch],
                    )
                await conn.executemany(
                    "INSERT INTO updates (doc_id, data, origin, author, created_at, batch_key) "
                    "VALUES ($1, $2, $3, $4, $5, $6)",
                    [(r.doc_id, r.data, r.origin, r.author, stamp, key) for r in records],
                )
                # Wakes the sidecar's change feed (server/sidecar/feed.py) at commit.
                await conn.execute(NOTIFY_UPDATES)
        except BaseException:
            # A connection in an unknown state is not reused.
            await self._discard()
            raise

    def append_now(
        self, records: Sequence[UpdateRecord], touch: Sequence[Touch], stamp: datetime
    ) -> bool:
        return False  # asyncpg only talks asynchronously

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
