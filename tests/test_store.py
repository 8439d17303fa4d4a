"""One contract suite run by every Store: in memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import postgres_database, upgrade_schema
from pycrdt import Array, Doc, Map, Text, TransactionEvent

from server.persistence.compaction import compact
from server.persistence.memory import MemoryStore
from server.persistence.sql import SqlStore, create_engine
from server.persistence.store import CompactionConflict, Store, UpdateRecord


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path / 'tandem.db'}"
        else:
            url = await stack.enter_async_context(postgres_database())
        await upgrade_schema(url)
        sql = SqlStore(create_engine(url))
        yield sql
        await sql.close()


def record(
    doc_id: str, data: bytes, origin: str = "ws", author: str | None = "ana"
) -> UpdateRecord:
    return UpdateRecord(doc_id, data, origin, author)


def random_history(seed: int, steps: int = 200) -> tuple[list[bytes], dict[str, Any]]:
    """Edits by three writers with Chinese and emoji text; returns the updates and the view."""
    rng = random.Random(seed)
    docs: list[Doc[Any]] = [Doc(client_id=i + 1) for i in range(3)]
    updates: list[bytes] = []

    def keep(event: TransactionEvent) -> None:
        updates.append(event.update)

    for doc in docs:
        doc.observe(keep)
    words = ["双十一", "客服", "😀", "plan", "🚀", "运营"]
    for _ in range(steps):
        doc = rng.choice(docs)
        text = doc.get("text", type=Text)
        choice = rng.random()
        if choice < 0.5:
            # pycrdt indexes text in UTF-8 bytes: insert only at character boundaries.
            chars = str(text)
            at = len(chars[: rng.randint(0, len(chars))].encode())
            text.insert(at, rng.choice(words))
        elif choice < 0.7 and len(str(text)) > 2:
            chars = str(text)
            start = rng.randint(0, len(chars) - 2)
            lo, hi = len(chars[:start].encode()), len(chars[: start + 1].encode())
            del text[lo:hi]
        elif choice < 0.9:
            doc.get("map", type=Map)[rng.choice("abc")] = rng.choice(words)
        else:
            doc.get("list", type=Array).append(rng.randint(0, 100))
        # Deliver to one other writer now and then, so histories interleave.
        other = rng.choice(docs)
        if other is not doc:
            other.apply_update(doc.get_update(other.get_state()))
    final: Doc[Any] = Doc()
    for update in updates:
        final.apply_update(update)
    return updates, view(final)


def view(doc: Doc[Any]) -> dict[str, Any]:
    return {
        "text": str(doc.get("text", type=Text)),
        "map": doc.get("map", type=Map).to_py(),
        "list": doc.get("list", type=Array).to_py(),
    }


def doc_from(state: bytes) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    doc.apply_update(state)
    return doc


async def test_unknown_document_loads_empty(store: Store) -> None:
    stored = await store.load("nothing-here")
    assert stored.empty
    assert stored.merged() == b""


async def test_append_then_load_round_trips(store: Store) -> None:
    updates, expected = random_history(seed=1)
    await store.append([record("plan", u) for u in updates[:100]])
    await store.append([record("plan", u) for u in updates[100:]])
    await store.append([record("other", updates[0])])
    stored = await store.load("plan")
    assert len(stored.updates) == len(updates)
    assert stored.seqs == sorted(stored.seqs)
    assert view(doc_from(stored.merged())) == expected


async def test_an_append_retried_with_its_key_is_stored_once(store: Store) -> None:
    """A retry (`again`) of a commit whose answer was lost writes nothing if that commit's
    rows are stored; a retry of one that did not commit writes them."""
    first = [record("plan", b"a"), record("other", b"b")]
    await store.append(first, key=41)
    await store.append(first, key=41, again=True)  # the first attempt had committed
    await store.append([record("plan", b"c")], key=42, again=True)  # nothing with 42 yet
    await store.append([record("plan", b"d")], key=41)  # not a retry: always written
    assert (await store.load("plan")).updates == [b"a", b"c", b"d"]
    assert (await store.load("other")).updates == [b"b"]


async def test_append_now_commits_all_or_nothing(store: Store) -> None:
    done = store.append_now([record("plan", b"a"), record("other", b"b")])
    # Memory and SQLite commit on the spot; PostgreSQL only talks asynchronously.
    assert done == (not isinstance(store, SqlStore) or store.engine.dialect.name == "sqlite")
    expected = [b"a"] if done else []
    assert (await store.load("plan")).updates == expected


async def test_rows_out_of_causal_order_and_duplicates_load(store: Store) -> None:
    updates, expected = random_history(seed=2)
    shuffled = updates + updates[:20]
    random.Random(3).shuffle(shuffled)
    await store.append([record("plan", u) for u in shuffled])
    assert view(doc_from((await store.load("plan")).merged())) == expected


@pytest.mark.parametrize("seed", [4, 5, 6])
async def test_compaction_keeps_content(store: Store, seed: int) -> None:
    updates, expected = random_history(seed=seed)
    # Out of causal order: the first stored row depends on rows after it (pending on apply).
    reordered = [updates[-1], *updates[:-1]]
    await store.append([record("plan", u) for u in reordered[:150]])
    first = await compact(store, "plan")
    assert first is not None and first.merged_rows == 150
    await store.append([record("plan", u) for u in reordered[150:]])
    stored = await store.load("plan")
    assert stored.snapshot is not None
    assert len(stored.updates) == len(reordered) - 150
    assert view(doc_from(stored.merged())) == expected
    second = await compact(store, "plan")
    assert second is not None
    stored = await store.load("plan")
    assert stored.updates == []
    assert view(doc_from(stored.merged())) == expected
    assert await compact(store, "plan") is None  # nothing left to fold


async def test_compaction_only_deletes_rows_it_merged(store: Store) -> None:
    updates, expected = random_history(seed=7)
    await store.append([record("plan", u) for u in updates[:100]])
    stored = await store.load("plan")
    # A row committed after the compactor read the document must survive its delete.
    await store.append([record("plan", u) for u in updates[100:]])
    await store.replace("plan", stored.snapshot_id, stored.merged(), b"\x00", stored.seqs)
    after = await store.load("plan")
    assert len(after.updates) == len(updates) - 100
    assert view(doc_from(after.merged())) == expected


async def test_a_row_stored_after_compaction_comes_after_every_row_before(store: Store) -> None:
    """The sidecar reads the log in the order of `seq`: a number is never given twice, not
    even when compaction deleted the newest rows (SQLite reuses a rowid then, unless the
    table is AUTOINCREMENT)."""
    updates, _ = random_history(seed=11, steps=40)
    await store.append([record("plan", u) for u in updates[:30]])
    stored = await store.load("plan")
    await store.replace("plan", stored.snapshot_id, stored.merged(), b"\x00", stored.seqs)
    await store.append([record("plan", updates[30])])
    after = await store.load("plan")
    assert after.seqs[0] > max(stored.seqs)


async def test_racing_compaction_loses_cleanly(store: Store) -> None:
    updates, expected = random_history(seed=8)
    await store.append([record("plan", u) for u in updates])
    stale = await store.load("plan")
    assert await compact(store, "plan") is not None
    with pytest.raises(CompactionConflict):
        await store.replace("plan", stale.snapshot_id, b"\x00\x00", b"\x00", stale.seqs)
    assert view(doc_from((await store.load("plan")).merged())) == expected


# -- SQLite's appender: small commits on the event loop, never waiting there -----------------


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[tuple[SqlStore, Path]]:
    path = tmp_path / "tandem.db"
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade_schema(url)
    sql = SqlStore(create_engine(url))
    yield sql, path
    await sql.close()


@contextlib.contextmanager
def write_lock_held_elsewhere(path: Path) -> Iterator[None]:
    """Another connection holds the database's write lock meanwhile."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("COMMIT")
        other.close()


async def test_sqlite_append_waits_off_the_loop_for_a_lock_held_elsewhere(
    sqlite_store: tuple[SqlStore, Path],
) -> None:
    store, path = sqlite_store
    await store.append([record("plan", b"first")])
    with write_lock_held_elsewhere(path):
        pending = asyncio.ensure_future(store.append([record("plan", b"second")]))
        ticks = 0
        for _ in range(10):  # the loop keeps running while the commit waits
            await asyncio.sleep(0.02)
            ticks += 1
        assert ticks == 10 and not pending.done()
    await asyncio.wait_for(pending, 10)
    assert (await store.load("plan")).updates == [b"first", b"second"]


async def test_sqlite_append_now_declines_while_another_connection_writes(
    sqlite_store: tuple[SqlStore, Path],
) -> None:
    store, path = sqlite_store
    assert store.append_now([record("plan", b"first")])
    with write_lock_held_elsewhere(path):
        assert not store.append_now([record("plan", b"second")])  # nothing written, no wait
    assert store.append_now([record("plan", b"third")])
    assert (await store.load("plan")).updates == [b"first", b"third"]


@pytest.mark.parametrize(("documents", "commits", "limit_mb"), [(1, 3000, 8), (200, 150, 16)])
async def test_sqlite_log_is_checkpointed_beside_the_commits(
    sqlite_store: tuple[SqlStore, Path], documents: int, commits: int, limit_mb: int
) -> None:
    # One document: two pages or more a commit, 24 MB of log if it never started afresh
    # (about 4 MB when it does). 200 documents a commit: index pages all over the file,
    # 45 MB of log when only the table's pages were counted towards a checkpoint.
    store, path = sqlite_store
    wal = path.with_name(path.name + "-wal")
    for i in range(commits):
        await store.append([record(f"doc{j}", i.to_bytes(4, "big")) for j in range(documents)])
        # Small commits never yield: let a finished checkpoint's result land, now and then
        # one that is still running.
        await asyncio.sleep(0.01 if i % 100 == 0 else 0)
    assert wal.stat().st_size < limit_mb * 1024 * 1024
    stored = await store.load(f"doc{documents - 1}")
    assert [int.from_bytes(u, "big") for u in stored.updates] == list(range(commits))
