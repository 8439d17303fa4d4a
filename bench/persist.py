"""How many updates per second Tandem persists, with group commit and without.

Drives the real write path (server.persistence.writer.Writer over SqlStore) with small,
realistic pycrdt updates (keystrokes and the odd deletion, from three authors per document),
on SQLite and on PostgreSQL, and prints one table:

* group commit: the server's defaults (250 ms commit window, up to 5000 updates a transaction,
  updates of one document and author merged into one row);
* per-update: commit delay 0 and max_batch=1, one transaction per update, for comparison.

Updates are offered as fast as the event loop takes them; the clock stops when flush()
returns, i.e. when every update is committed. Compaction is not triggered (no room loads).

Run it from the repository root:

    .venv/bin/python bench/persist.py
    .venv/bin/python bench/persist.py --updates 100000 --docs 50 --baseline-updates 2000
    .venv/bin/python bench/persist.py --skip-postgres
    .venv/bin/python bench/persist.py --skip-postgres --sqlite-synchronous full

--postgres-url names a server and a database to connect to; a scratch database is created
beside it for the run and dropped afterwards. Each scenario gives up after --timeout seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrdt import Doc, Text
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from server.origin import Origin
from server.persistence import migrate
from server.persistence.sql import SqlStore, create_engine
from server.persistence.sqlite import SqliteSynchronous
from server.persistence.store import StoredDoc, UpdateRecord
from server.persistence.tables import updates as updates_table
from server.persistence.writer import Writer

DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
AUTHORS = ("ana", "bo", "chen")


@dataclass(frozen=True)
class Load:
    """Updates in arrival order, and the text each document must end up with."""

    items: list[tuple[str, bytes, Origin]]
    expected: dict[str, str]

    @property
    def size(self) -> int:
        return len(self.items)


def make_load(updates: int, docs: int, seed: int = 7) -> Load:
    """`updates` keystroke-sized updates over `docs` documents, interleaved at random.

    Each document has three authors, each with its own replica (its own Yjs client id) kept
    in sync with the others, as in a live session.
    """
    rng = random.Random(seed)
    per_doc: dict[str, list[tuple[bytes, Origin]]] = {}
    expected: dict[str, str] = {}
    for d in range(docs):
        doc_id = f"bench-{d:04d}"
        replicas: list[Doc[Any]] = [Doc() for _ in AUTHORS]
        captured: list[bytes] = []
        for replica in replicas:
            replica.observe(lambda event, out=captured: out.append(event.update))
        share = updates // docs + (1 if d < updates % docs else 0)
        made: list[tuple[bytes, Origin]] = []
        for _ in range(share):
            who = rng.randrange(len(AUTHORS))
            body = replicas[who].get("text", type=Text)
            length = len(body)
            captured.clear()
            if length > 10 and rng.random() < 0.1:
                del body[rng.randrange(length)]  # a backspace somewhere
            elif length and rng.random() < 0.2:
                body.insert(rng.randrange(length), rng.choice("abcdefgh "))  # an edit mid-text
            else:
                body += rng.choice(("a", "b", "c", "d", "e", " ", "the ", "and ", ", "))
            (update,) = captured
            made.append((update, Origin("ws", AUTHORS[who])))
            for other, replica in enumerate(replicas):
                if other != who:
                    replica.apply_update(update)
        texts = {str(replica.get("text", type=Text)) for replica in replicas}
        assert len(texts) == 1, "replicas diverged"
        per_doc[doc_id] = made
        expected[doc_id] = texts.pop()
    # Interleave the documents, each document's updates kept in the order they were made.
    queues = {doc_id: list(reversed(items)) for doc_id, items in per_doc.items() if items}
    items: list[tuple[str, bytes, Origin]] = []
    while queues:
        doc_id = rng.choice(list(queues))
        data, origin = queues[doc_id].pop()
        items.append((doc_id, data, origin))
        if not queues[doc_id]:
            del queues[doc_id]
    return Load(items, expected)


class TimedStore(SqlStore):
    """SqlStore that records how long each commit of the update log takes."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.commit_seconds: list[float] = []
        self.rows = 0

    async def append(
        self, records: Sequence[UpdateRecord], *, key: int | None = None, again: bool = False
    ) -> None:
        started = time.perf_counter()
        await super().append(records, key=key, again=again)
        self.commit_seconds.append(time.perf_counter() - started)
        self.rows += len(records)


@dataclass(frozen=True)
class Result:
    backend: str
    mode: str
    docs: int
    offered: int
    committed: int
    commits: int
    rows: int
    seconds: float
    median_commit_ms: float
    p95_commit_ms: float
    complete: bool
    verified: bool

    @property
    def rate(self) -> float:
        return self.committed / self.seconds if self.seconds else 0.0


async def reset(url: str) -> None:
    engine = create_engine(url)  # schema and deletes: the synchronous level does not matter
    try:
        await migrate.upgrade(engine)
        async with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                await conn.execute(
                    text("TRUNCATE updates, snapshots, documents RESTART IDENTITY CASCADE")
                )
            else:
                for table in ("updates", "snapshots", "documents"):
                    await conn.execute(text(f"DELETE FROM {table}"))
    finally:
        await engine.dispose()


async def verify(store: SqlStore, load: Load, offered: int) -> bool:
    """Every document in the database holds exactly the text its updates make."""
    expected = load.expected
    if offered < load.size:  # a prefix was offered: replay it to know what to expect
        docs: dict[str, Doc[Any]] = {}
        for doc_id, data, _ in load.items[:offered]:
            docs.setdefault(doc_id, Doc()).apply_update(data)
        expected = {d: str(doc.get("text", type=Text)) for d, doc in docs.items()}
    async with store.engine.connect() as conn:
        stored_rows = await conn.scalar(select(func.count()).select_from(updates_table))
    if not stored_rows:
        return False
    for doc_id, want in expected.items():
        stored: StoredDoc = await store.load(doc_id)
        doc: Doc[Any] = Doc()
        doc.apply_update(stored.merged())  # as the server loads it
        if str(doc.get("text", type=Text)) != want:
            return False
    return True


async def run_scenario(
    backend: str,
    url: str,
    load: Load,
    *,
    mode: str,
    offered: int,
    timeout: float,
    sqlite_synchronous: SqliteSynchronous,
) -> Result:
    await reset(url)
    store = TimedStore(create_engine(url, sqlite_synchronous=sqlite_synchronous))
    never = {"compact_after_updates": 2**62, "compact_after_bytes": 2**62}
    if mode == "group commit":
        writer = Writer(store, **never)  # the server's defaults otherwise
    else:
        writer = Writer(store, delay=0, max_batch=1, **never)
    loop_task = asyncio.get_running_loop().create_task(writer.run())
    complete = True
    try:
        await store.ping()  # connect before the clock starts
        started = time.perf_counter()
        for i, (doc_id, data, origin) in enumerate(load.items[:offered]):
            writer.add(doc_id, data, origin)
            if i % 100 == 99:
                await asyncio.sleep(0)  # let the commit loop run, as a busy server would
        try:
            await writer.flush(timeout=timeout)
        except TimeoutError:
            complete = False
        seconds = time.perf_counter() - started
        committed = offered - writer.pending()
    finally:
        loop_task.cancel()
        try:
            await loop_task
        except asyncio.CancelledError:
            pass
    try:
        verified = complete and await verify(store, load, offered)
    finally:
        await store.close()
    latencies = sorted(store.commit_seconds)
    return Result(
        backend=backend,
        mode=mode,
        docs=len({doc_id for doc_id, _, _ in load.items[:offered]}),
        offered=offered,
        committed=committed,
        commits=len(latencies),
        rows=store.rows,
        seconds=seconds,
        median_commit_ms=statistics.median(latencies) * 1000 if latencies else 0.0,
        p95_commit_ms=latencies[int(0.95 * (len(latencies) - 1))] * 1000 if latencies else 0.0,
        complete=complete,
        verified=verified,
    )


async def run_backend(
    backend: str, url: str, loads: list[Load], args: argparse.Namespace
) -> list[Result]:
    results: list[Result] = []
    for load in loads:
        for mode, offered in (
            ("group commit", load.size),
            ("per-update", min(load.size, args.baseline_updates)),
        ):
            result = await run_scenario(
                backend,
                url,
                load,
                mode=mode,
                offered=offered,
                timeout=args.timeout,
                sqlite_synchronous=args.sqlite_synchronous,
            )
            results.append(result)
            print(
                f"  {backend:<10} {mode:<12} docs={result.docs:<3} "
                f"{result.committed}/{result.offered} updates in {result.seconds:.2f}s",
                file=sys.stderr,
            )
    return results


async def postgres_scratch(url: str) -> tuple[str, object]:
    """Create a scratch database next to `url`; (its URL, an admin connection to drop it)."""
    import asyncpg

    parsed = make_url(url)
    admin = await asyncpg.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username,
        password=parsed.password,
        database=parsed.database,
        timeout=5,
    )
    name = f"tandem_bench_{secrets.token_hex(4)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    return parsed.set(database=name).render_as_string(hide_password=False), admin


def print_table(results: list[Result]) -> None:
    header = (
        "backend",
        "mode",
        "docs",
        "updates",
        "commits",
        "rows",
        "seconds",
        "updates/s",
        "median commit ms",
        "p95 commit ms",
        "ok",
    )
    rows = [
        (
            r.backend,
            r.mode,
            str(r.docs),
            f"{r.committed}" + ("" if r.complete else f"/{r.offered} (timeout)"),
            str(r.commits),
            str(r.rows),
            f"{r.seconds:.2f}",
            f"{r.rate:,.0f}",
            f"{r.median_commit_ms:.2f}",
            f"{r.p95_commit_ms:.2f}",
            "yes" if r.verified else "NO",
        )
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print()
    for backend in dict.fromkeys(r.backend for r in results):
        for docs in dict.fromkeys(r.docs for r in results if r.backend == backend):
            pair = {r.mode: r for r in results if r.backend == backend and r.docs == docs}
            if {"group commit", "per-update"} <= pair.keys() and pair["per-update"].rate:
                gain = pair["group commit"].rate / pair["per-update"].rate
                print(f"{backend}, {docs} doc(s): group commit persists {gain:,.0f}x as fast")


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--skip-postgres", action="store_true")
    # Enough that the burst outlasts the first commit window by far.
    parser.add_argument("--updates", type=int, default=100_000)
    parser.add_argument("--docs", type=int, default=50)
    parser.add_argument(
        "--baseline-updates",
        type=int,
        default=2000,
        help="updates offered in the per-update runs (one transaction each), default 2000",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per scenario")
    parser.add_argument(
        "--sqlite-synchronous",
        choices=("normal", "full"),
        default="normal",
        help="SQLite's PRAGMA synchronous, as TANDEM_SQLITE_SYNCHRONOUS (default normal)",
    )
    args = parser.parse_args(argv)
    if args.updates < 1 or args.docs < 1 or args.baseline_updates < 1:
        parser.error("--updates, --docs and --baseline-updates must be positive")

    started = time.perf_counter()
    print(f"generating {args.updates} updates ...", file=sys.stderr)
    loads = [make_load(args.updates, args.docs)]
    if args.docs != 1:
        loads.append(make_load(args.updates, 1))
    print(f"  generated in {time.perf_counter() - started:.1f}s", file=sys.stderr)

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="tandem-bench-") as tmp:
        sqlite_url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        results += await run_backend("sqlite", sqlite_url, loads, args)
    if not args.skip_postgres:
        try:
            pg_url, admin = await postgres_scratch(args.postgres_url)
        except (OSError, TimeoutError) as exc:
            print(f"PostgreSQL skipped: cannot connect ({exc})", file=sys.stderr)
        else:
            try:
                results += await run_backend("postgresql", pg_url, loads, args)
            finally:
                name = make_url(pg_url).database
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[attr-defined]
                await admin.close()  # type: ignore[attr-defined]

    print()
    print_table(results)
    print(
        f"\n(total {time.perf_counter() - started:.0f}s; per-update runs offer at most "
        f"{args.baseline_updates} updates; updates/s counts updates offered, not rows; "
        f"SQLite synchronous={args.sqlite_synchronous.upper()})"
    )
    return 0 if all(r.verified for r in results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
