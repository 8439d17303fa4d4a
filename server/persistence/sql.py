"""SqlStore: the Store over SQLAlchemy's async engine (SQLite with WAL, or PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import ScalarSelect, delete, event, func, insert, select, text, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from server.persistence.append import Touch, appender_for
from server.persistence.sqlite import (
    DEFAULT_SYNCHRONOUS,
    SYNCHRONOUS_LEVELS,
    SqliteSynchronous,
    apply_pragmas,
)
from server.persistence.store import CompactionConflict, StoredDoc, UpdateRecord
from server.persistence.tables import documents, snapshots, updates

# Automatic snapshots kept per document besides the base; named versions are never pruned.
KEEP_AUTO_SNAPSHOTS = 10
_DELETE_CHUNK = 500
TOUCH_SECONDS = 5.0


def now() -> datetime:
    return datetime.now(UTC)


def next_version_number(doc_id: str) -> ScalarSelect[Any]:
    """The number the next version of `doc_id` gets: one above its highest, never reused.
    Use inside the inserting statement, after `lock_versions` in the same transaction."""
    return (
        select(func.coalesce(func.max(snapshots.c.number), 0) + 1)
        .where(snapshots.c.doc_id == doc_id)
        .scalar_subquery()
    )


async def lock_versions(conn: AsyncConnection, doc_id: str) -> None:
    """Serialize the transactions that add versions to `doc_id` until this one ends.

    PostgreSQL: the document row is locked, so a concurrent insert waits and then reads the
    number this one took. SQLite has one writer at a time and the insert computes its number
    in the same statement, so nothing is needed there (a read first would only risk a busy
    upgrade). The unique index on (doc_id, number) backs both up.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(
            # NO KEY UPDATE: the lock compaction's own UPDATE of the row takes anyway; it does
            # not hold up the update-log inserts that reference the row.
            select(documents.c.id).where(documents.c.id == doc_id).with_for_update(key_share=True)
        )


# The synchronous level each SQLite engine was made with, so that a SqlStore built on the
# engine opens its update-log connections with the same one.
_SYNCHRONOUS: WeakKeyDictionary[Engine, SqliteSynchronous] = WeakKeyDictionary()


def create_engine(
    url: str, *, sqlite_synchronous: SqliteSynchronous = DEFAULT_SYNCHRONOUS
) -> AsyncEngine:
    """An async engine; for SQLite the file's folder is created, WAL mode is switched on and
    commits are synced as `sqlite_synchronous` says (server/persistence/sqlite.py)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if sqlite_synchronous not in SYNCHRONOUS_LEVELS:
            raise ValueError(f"unknown SQLite synchronous level {sqlite_synchronous!r}")
        database = parsed.database
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        def pragmas(dbapi_connection: Any, _record: Any) -> None:
            apply_pragmas(dbapi_connection, sqlite_synchronous)
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        event.listen(engine.sync_engine, "connect", pragmas)
        _SYNCHRONOUS[engine.sync_engine] = sqlite_synchronous
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def sqlite_synchronous(engine: AsyncEngine) -> SqliteSynchronous:
    """The synchronous level `engine` was created with (the default for other engines)."""
    return _SYNCHRONOUS.get(engine.sync_engine, DEFAULT_SYNCHRONOUS)


class SqlStore:
    """Documents as an append-only update log plus snapshots, in one SQL database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._appender = appender_for(engine, sqlite_synchronous(engine))
        # When each document row was last created or touched by `append`: its updated_at is
        # refreshed at most every TOUCH_SECONDS, so a busy document costs one row per commit.
        self._touched: dict[str, float] = {}

    async def load(self, doc_id: str) -> StoredDoc:
        async with self.engine.connect() as conn:
            # Update rows first, then the snapshot: a compaction that lands in between only
            # adds a snapshot holding rows we already read (a harmless duplicate), never a gap.
            rows = (
                await conn.execute(
                    select(updates.c.seq, updates.c.data)
                    .where(updates.c.doc_id == doc_id)
                    .order_by(updates.c.seq)
                )
            ).all()
            base = (
                await conn.execute(
                    select(snapshots.c.id, snapshots.c.state, documents.c.deleted_at)
                    .select_from(
                        documents.outerjoin(snapshots, snapshots.c.id == documents.c.snapshot_id)
                    )
                    .where(documents.c.id == doc_id)
                )
            ).first()
        snapshot = base if base is not None and base.id is not None else None
        return StoredDoc(
            snapshot_id=snapshot.id if snapshot else None,
            snapshot=bytes(snapshot.state) if snapshot else None,
            seqs=[row.seq for row in rows],
            updates=[bytes(row.data) for row in rows],
            deleted=base is not None and base.deleted_at is not None,
        )

    async def append(
        self, records: Sequence[UpdateRecord], *, key: int | None = None, again: bool = False
    ) -> None:
        if not records:
            return
        clock, stale = self._stale(records)
        await self._appender.append(records, stale, now(), key=key, again=again)
        self._touch(clock, stale)

    def append_now(self, records: Sequence[UpdateRecord]) -> bool:
        if not records:
            return True
        clock, stale = self._stale(records)
        if not self._appender.append_now(records, stale, now()):
            return False
        self._touch(clock, stale)
        return True

    def _stale(self, records: Sequence[UpdateRecord]) -> tuple[float, list[Touch]]:
        """The documents whose row is due to be created or touched, each with the author of
        its last update in `records` that has one."""
        clock = time.monotonic()
        touched = self._touched
        authors: dict[str, str | None] = {}
        for r in records:
            if clock - touched.get(r.doc_id, -TOUCH_SECONDS) >= TOUCH_SECONDS:
                if r.author is not None or r.doc_id not in authors:
                    authors[r.doc_id] = r.author
        # Sorted, so concurrent writers lock document rows in the same order.
        return clock, sorted(authors.items())

    def _touch(self, clock: float, stale: list[Touch]) -> None:
        for doc_id, _ in stale:
            self._touched[doc_id] = clock

    async def replace(
        self,
        doc_id: str,
        base_snapshot_id: int | None,
        state: bytes,
        state_vector: bytes,
        merged_seqs: Sequence[int],
    ) -> int:
        async with self.engine.begin() as conn:
            await lock_versions(conn, doc_id)
            result = await conn.execute(
                insert(snapshots).values(
                    doc_id=doc_id,
                    number=next_version_number(doc_id),
                    upto_seq=max(merged_seqs, default=0),
                    state=state,
                    state_vector=state_vector,
                    kind="auto",
                    created_at=now(),
                )
            )
            new_id = result.inserted_primary_key[0]  # type: ignore[index]
            base = (
                documents.c.snapshot_id.is_(None)
                if base_snapshot_id is None
                else documents.c.snapshot_id == base_snapshot_id
            )
            moved = await conn.execute(
                update(documents).where(documents.c.id == doc_id, base).values(snapshot_id=new_id)
            )
            if moved.rowcount != 1:
                raise CompactionConflict(doc_id)  # leaving the block rolls back
            seqs = list(merged_seqs)
            for i in range(0, len(seqs), _DELETE_CHUNK):
                await conn.execute(
                    delete(updates).where(
                        updates.c.doc_id == doc_id, updates.c.seq.in_(seqs[i : i + _DELETE_CHUNK])
                    )
                )
            await _prune_auto_snapshots(conn, doc_id, int(new_id))
        return int(new_id)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self._appender.close()
        await self.engine.dispose()


async def _prune_auto_snapshots(conn: AsyncConnection, doc_id: str, base_id: int) -> None:
    keep = (
        select(snapshots.c.id)
        .where(snapshots.c.doc_id == doc_id, snapshots.c.kind == "auto")
        .order_by(snapshots.c.id.desc())
        .limit(KEEP_AUTO_SNAPSHOTS)
    )
    kept = {row.id for row in (await conn.execute(keep)).all()} | {base_id}
    await conn.execute(
        delete(snapshots).where(
            snapshots.c.doc_id == doc_id,
            snapshots.c.kind == "auto",
            snapshots.c.id.not_in(kept),
        )
    )
