"""A PostgreSQL outage while ten clients type: a real `tandem serve` on a private PostgreSQL
instance that the test starts, stops for 30 seconds and starts again.

During the outage /readyz answers 503 at once, the clients keep syncing with each other in
memory until the writer's queue reaches its bound (then the senders of new edits are closed
with 1013 and keep their edits), REST edits are refused with 503 and not applied. When the
database is back every edit is stored exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REQUIRE_SERVICES, ServerFactory, ServerProcess, free_port
from helpers import api, metric, query
from pycrdt import Array, Doc, Map

from client.sync import SyncClient
from server.persistence.sql import SqlStore, create_engine

PG_ROOT = Path("/usr/lib/postgresql")
OUTAGE_SECONDS = 30.0
# TANDEM_MAX_PENDING_BYTES for this test: 100 updates a second (about 160 bytes each, with
# the bookkeeping) reach it some 10 s into the outage.
BOUND = 160 * 1024


class PostgresUnavailable(Exception):
    pass


def _postgres_bin() -> Path:
    versions = sorted(
        (p for p in PG_ROOT.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        raise PostgresUnavailable(f"no PostgreSQL server binaries under {PG_ROOT}")
    return versions[-1]


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own, in a temporary folder, run as the `postgres`
    user (PostgreSQL refuses to run as root), listening on 127.0.0.1 at a free port."""

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tandem-pg-", dir="/tmp"))
        self.data = self.dir / "data"
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    async def _run(self, *args: str, timeout: float = 60.0) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            async with asyncio.timeout(timeout):
                output, _ = await process.communicate()
        except TimeoutError:
            process.kill()
            raise PostgresUnavailable(f"{args[0]} did not finish in {timeout:.0f}s") from None
        if process.returncode != 0:
            raise PostgresUnavailable(
                f"{' '.join(args[:2])} failed ({process.returncode}): "
                f"{output.decode(errors='replace')[-1500:]}"
            )

    async def create(self) -> None:
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("runuser is missing: cannot run PostgreSQL as postgres")
            try:
                shutil.chown(self.dir, "postgres", "postgres")
            except (LookupError, OSError) as exc:
                raise PostgresUnavailable(f"no postgres user to run PostgreSQL as: {exc}") from exc
        await self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")
        await self.start()

    async def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        log = str(self.dir / "postgres.log")
        await self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    async def stop(self) -> None:
        """A fast shutdown: open connections are cut, transactions in flight roll back."""
        await self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    async def destroy(self) -> None:
        with contextlib.suppress(PostgresUnavailable):
            await self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    try:
        pg = PrivatePostgres()
        await pg.create()
    except PostgresUnavailable as exc:
        message = f"a private PostgreSQL instance could not be started: {exc}"
        if REQUIRE_SERVICES:
            pytest.fail(f"PostgreSQL is required (TANDEM_REQUIRE_SERVICES=1), but {message}")
        pytest.skip(message)
    try:
        yield pg
    finally:
        await pg.destroy()


@dataclass
class Probe:
    """What /readyz said, sampled through the outage."""

    codes: list[int] = field(default_factory=list)
    slowest: float = 0.0
    max_pending_updates: int = 0
    max_pending_bytes: int = 0
    states: set[str] = field(default_factory=set)

    async def sample(self, server: ServerProcess, http: httpx.AsyncClient) -> int:
        started = time.monotonic()
        response = await http.get(f"{server.http_url}/readyz", timeout=10)
        self.slowest = max(self.slowest, time.monotonic() - started)
        body = response.json()
        self.codes.append(response.status_code)
        self.max_pending_updates = max(self.max_pending_updates, body["pending_updates"])
        self.max_pending_bytes = max(self.max_pending_bytes, body["pending_bytes"])
        self.states.add(body["persistence"])
        return response.status_code


def tokens(doc: Doc[Any]) -> list[str]:
    return [str(item) for item in doc.get("tokens", type=Array)]


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.postgres
@pytest.mark.chaos
async def test_a_30_second_database_outage_while_ten_clients_type(
    private_postgres: PrivatePostgres, make_server: ServerFactory
) -> None:
    pg = private_postgres
    doc_id = "outage-doc"
    server = await make_server(
        pg.url,
        TANDEM_MAX_PENDING_BYTES=str(BOUND),
        # Keep every update row, so duplicates would show.
        TANDEM_COMPACT_AFTER_UPDATES="100000000",
        TANDEM_COMPACT_AFTER_BYTES=str(1 << 40),
    )
    async with api(server) as rest:
        created = await rest.post("/docs", json={"kind": "board", "title": "Plan", "id": "board"})
        assert created.status_code == 201, created.text

    clients = [SyncClient(server.ws_url, doc_id) for _ in range(10)]
    typed: list[list[str]] = [[] for _ in clients]
    stop_typing = asyncio.Event()
    closed_1013 = [False] * len(clients)

    async def type_tokens(i: int) -> None:
        array = clients[i].doc.get("tokens", type=Array)
        for n in range(100_000):
            if stop_typing.is_set():
                return
            token = f"c{i}-{n}"
            array.append(token)
            typed[i].append(token)
            if clients[i].close_code == 1013:
                closed_1013[i] = True
            await asyncio.sleep(0.1)

    for client in clients:
        client.start()
    typists: list[asyncio.Task[None]] = []
    probe = Probe()
    try:
        for client in clients:
            await client.wait_synced()
        typists = [asyncio.create_task(type_tokens(i)) for i in range(len(clients))]
        await wait_until(
            lambda: all(len(tokens(c.doc)) >= 100 for c in clients), 20, "edits to spread"
        )
        async with httpx.AsyncClient() as http:
            assert await probe.sample(server, http) == 200

            await pg.stop()
            outage_started = time.monotonic()
            # Live editing goes on in memory: a token typed now reaches another client.
            newest = typed[0][-1]
            await wait_until(lambda: newest in tokens(clients[5].doc), 5, "live sync")
            # A REST edit is refused at once, and not applied.
            async with api(server) as rest:
                started = time.monotonic()
                refused = await rest.post("/docs/board/tasks", json={"title": "in the outage"})
                rest_seconds = time.monotonic() - started
            assert refused.status_code == 503, refused.text
            message = refused.json()["error"]["message"]
            assert message == "the database is unavailable; nothing was changed; try again later"
            assert rest_seconds < 3, f"a REST edit took {rest_seconds:.1f}s to be refused"

            live_checked = False
            while time.monotonic() - outage_started < OUTAGE_SECONDS:
                assert await probe.sample(server, http) == 503
                if not live_checked and time.monotonic() - outage_started > 4:
                    # Seconds into the outage, below the bound: still syncing in memory.
                    assert probe.max_pending_bytes < BOUND
                    latest = typed[3][-1]
                    await wait_until(
                        lambda t=latest: t in tokens(clients[8].doc), 5, "live sync"
                    )
                    live_checked = True
                await asyncio.sleep(0.25)
            outage_codes = list(probe.codes[1:])
            refused_frames = await metric(server, 'tandem_rejected_frames_total{code="1013"}')

            await pg.start()
            restarted = time.monotonic()
            while await probe.sample(server, http) != 200:
                assert time.monotonic() - restarted < 15, "/readyz stayed 503 after the restart"
                await asyncio.sleep(0.1)
            recovered_seconds = time.monotonic() - restarted
            # Typing goes on a little after the database is back.
            await asyncio.sleep(2)
    finally:
        stop_typing.set()
        await asyncio.gather(*typists)

    try:
        expected = {token for per_client in typed for token in per_client}
        edits_typed = sum(len(t) for t in typed)
        assert len(expected) == edits_typed
        await wait_until(
            lambda: all(set(tokens(c.doc)) == expected for c in clients), 40, "clients to converge"
        )
        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + 20
            while (await http.get(f"{server.http_url}/readyz")).json()["pending_updates"]:
                assert time.monotonic() < deadline, "the queued updates were not stored"
                await asyncio.sleep(0.1)
            after = await http.get(f"{server.http_url}/readyz")
        assert after.status_code == 200 and after.json()["persistence"] == "ok"
    finally:
        for client in clients:
            await client.close()

    async with SyncClient(server.ws_url, doc_id) as fresh:
        await fresh.wait_synced()
        assert set(tokens(fresh.doc)) == expected and len(tokens(fresh.doc)) == edits_typed

    # The database holds every edit, each update stored once.
    store = SqlStore(create_engine(pg.url))
    try:
        stored_doc: Doc[Any] = Doc()
        stored_doc.apply_update((await store.load(doc_id)).merged())
    finally:
        await store.close()
    stored = tokens(stored_doc)
    assert set(stored) == expected and len(stored) == edits_typed
    duplicates = await query(
        pg.url,
        "SELECT count(*) FROM (SELECT doc_id, data FROM updates "
        "GROUP BY doc_id, data HAVING count(*) > 1) AS twice",
    )
    assert duplicates == [(0,)]

    # The REST edit refused during the outage was not applied; REST edits work again.
    async with api(server) as rest:
        content = (await rest.get("/docs/board/content")).json()
        assert "in the outage" not in str(content)
        again = await rest.post("/docs/board/tasks", json={"title": "after the outage"})
        assert again.status_code == 201, again.text

    log = server.log()
    assert log.count("the database is unavailable") == 1, log[-3000:]
    assert log.count("the database is available again") == 1, log[-3000:]
    # Refused clients reconnect every 100 ms or so: one warning a minute, not one each.
    assert log.count("ws rejected frame") == 0, log[-3000:]

    print(
        f"\noutage figures: edits typed {edits_typed}, edits stored {len(stored)}, "
        f"duplicate rows {duplicates[0][0]}, /readyz during the outage "
        f"{sorted(set(outage_codes))} ({len(outage_codes)} samples, slowest "
        f"{probe.slowest * 1000:.0f} ms), after {after.status_code} "
        f"({recovered_seconds:.1f}s after the restart), max queue "
        f"{probe.max_pending_updates} updates / {probe.max_pending_bytes} bytes "
        f"(bound {BOUND}), frames refused with 1013: {refused_frames:.0f}, "
        f"clients closed with 1013: {sum(closed_1013)}, states {sorted(probe.states)}"
    )
    assert refused_frames > 0, "the writer's bound was never reached"
    assert probe.max_pending_bytes <= BOUND, probe.max_pending_bytes
    assert probe.slowest < 2.5, f"/readyz took {probe.slowest:.1f}s to answer"


async def test_a_rest_edit_whose_commit_waits_too_long_answers_503_and_is_stored_later(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    """SQLite locked by another process: the edit is applied and queued, the answer after
    10 s is 503 saying so (not a success), /readyz reports the stalled commit, and the edit
    is stored once the lock is released."""
    server = await make_server()
    async with api(server) as rest:
        created = await rest.post("/docs", json={"kind": "board", "title": "Plan", "id": "board"})
        assert created.status_code == 201, created.text
        # Another process holds the database's write lock (a backup, a long migration).
        lock = sqlite3.connect(tmp_path / "tandem.db", timeout=0, isolation_level=None)
        try:
            lock.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            edit = asyncio.create_task(
                rest.post("/docs/board/tasks", json={"title": "while locked"})
            )
            await asyncio.sleep(6.5)
            async with httpx.AsyncClient() as http:
                ready = await http.get(f"{server.http_url}/readyz", timeout=5)
            assert ready.status_code == 503 and ready.json()["persistence"] == "stalled"
            assert ready.json()["pending_updates"] >= 1
            done, _ = await asyncio.wait({edit}, timeout=8.5)
            assert done, "no answer 15 s after a REST edit"
            answer = edit.result()
            seconds = time.monotonic() - started
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "5"
            message = answer.json()["error"]["message"]
            assert "applied to the live document and is queued" in message, message
            assert "not stored yet" in message and 9 < seconds < 14, (message, seconds)
            # Applied: the live document has it, and connected clients saw it.
            content = await rest.get("/docs/board/content")
            assert "while locked" in content.text
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + 15
            while (await http.get(f"{server.http_url}/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "the queued edit was not stored"
                await asyncio.sleep(0.1)
    stored = await query(
        server.database_url, "SELECT count(*) FROM updates WHERE doc_id = 'board'"
    )
    store = SqlStore(create_engine(server.database_url))
    try:
        doc: Doc[Any] = Doc()
        doc.apply_update((await store.load("board")).merged())
    finally:
        await store.close()
    titles = [str(task.get("title")) for task in doc.get("tasks", type=Map).values()]
    assert "while locked" in titles, (titles, stored)
