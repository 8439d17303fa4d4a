"""Work done once when several `tandem serve` processes share one database (server/leases.py).

Real server processes on one PostgreSQL database or one SQLite file, sharing documents through
the test Redis: one runs the sidecar and the other stands by; an assignment is notified once,
also on the live stream of the process standing by; when the leader is killed the other takes
over within a few seconds. Two processes do not compact one document at once.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from pycrdt import Doc, Map, Text

from client.sync import SyncClient
from server.persistence.sql import SqlStore, create_engine
from tests.conftest import REDIS_URL, ServerFactory, ServerProcess
from tests.helpers import metric, query
from tests.test_sidecar import SECRET, Stream, new_board, token

LEADER = "tandem_sidecar_leader"


async def leaders(servers: list[ServerProcess]) -> list[float]:
    return [await metric(server, LEADER) for server in servers]


async def wait_leader(server: ServerProcess, timeout: float) -> float:
    """Seconds until `server` runs the sidecar."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while await metric(server, LEADER) != 1:
            await asyncio.sleep(0.05)
    return time.monotonic() - started


async def assigned(url: str, user: str) -> int:
    rows = await query(
        url,
        "SELECT count(*) FROM notifications WHERE user_name = :user AND kind = 'assigned'",
        user=user,
    )
    return int(rows[0][0])


async def wait_assigned(url: str, user: str, count: int, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while await assigned(url, user) < count:
            await asyncio.sleep(0.1)


async def assign(server: ServerProcess, board: str, task: str, who: str, author: str) -> None:
    """A Python client of `server` assigns the task, and waits until it is stored."""
    async with SyncClient(server.ws_url, board, token=token(author)) as client:
        await client.wait_synced()
        tasks = client.doc.get("tasks", type=Map)
        assert task in tasks
        tasks[task]["assignee"] = who
        await client.wait_stored()


async def test_one_process_runs_the_sidecar_and_another_takes_over_when_it_dies(
    make_server: ServerFactory, database_url: str, redis_env: dict[str, str]
) -> None:
    env = {**redis_env, "TANDEM_SECRET": SECRET}
    first = await make_server(database_url, **env)
    second = await make_server(database_url, **env)
    await wait_leader(first, 10)
    await asyncio.sleep(2.5)  # the second has tried the lock at least once more
    assert await leaders([first, second]) == [1, 0]
    assert "this process runs the sidecar" in first.log()
    assert "this process runs the sidecar" not in second.log()
    assert "standing by: another process runs the sidecar" in second.log()

    board, (task, other) = await new_board(second, "刘洋", ["备货 10,000 件", "发货"])
    # The notification, written by the first process, reaches a stream of the second.
    async with Stream(second, "王小明") as stream:
        started = time.perf_counter()
        await assign(second, board, task, "王小明", "刘洋")
        await stream.wait_for(1, timeout=10)
        latency = stream.arrived[0] - started
        await asyncio.sleep(1.5)  # a second sidecar would have written its row by now
        assert len(stream.events) == 1
    assert stream.events[0]["kind"] == "assigned" and stream.events[0]["task_id"] == task
    assert await assigned(database_url, "王小明") == 1

    first.kill()
    took = await wait_leader(second, 10)
    assert "this process runs the sidecar" in second.log()
    await assign(second, board, other, "周婷", "刘洋")
    await wait_assigned(database_url, "周婷", 1)
    await asyncio.sleep(1.5)
    assert await assigned(database_url, "周婷") == 1
    assert await assigned(database_url, "王小明") == 1  # nothing read twice after takeover
    print(
        f"assignment on the standby -> its stream: {latency * 1000:.0f} ms; "
        f"takeover after SIGKILL: {took:.2f} s"
    )


async def test_a_stopped_leader_hands_over_and_a_new_process_stands_by(
    make_server: ServerFactory, database_url: str, redis_env: dict[str, str]
) -> None:
    env = {**redis_env, "TANDEM_SECRET": SECRET}
    first = await make_server(database_url, **env)
    second = await make_server(database_url, **env)
    await wait_leader(first, 10)
    assert await first.stop() == 0
    took = await wait_leader(second, 10)
    third = await make_server(database_url, **env)
    await asyncio.sleep(2.5)
    assert await leaders([second, third]) == [1, 0]
    board, (task,) = await new_board(third, "刘洋", ["对账"])
    await assign(third, board, task, "王小明", "刘洋")
    await wait_assigned(database_url, "王小明", 1)
    await asyncio.sleep(1.5)
    assert await assigned(database_url, "王小明") == 1
    print(f"takeover after a clean stop: {took:.2f} s")


def stored_text(stored: Any) -> str:
    doc: Doc[Any] = Doc()
    for update in ([stored.snapshot] if stored.snapshot is not None else []) + stored.updates:
        doc.apply_update(update)
    return str(doc.get("text", type=Text))


async def stored(url: str, doc_id: str) -> Any:
    engine = create_engine(url)
    try:
        return await SqlStore(engine).load(doc_id)
    finally:
        await engine.dispose()


async def type_into(client: SyncClient, words: list[str], pause: float) -> None:
    text = client.doc.get("text", type=Text)
    for word in words:
        text += word
        await asyncio.sleep(pause)


async def total(servers: list[ServerProcess], name: str) -> float:
    return sum([await metric(server, name) for server in servers])


async def test_two_processes_never_compact_one_document_at_once(
    make_server: ServerFactory, database_url: str, redis_env: dict[str, str]
) -> None:
    env = {**redis_env, "TANDEM_COMPACT_AFTER_UPDATES": "5", "TANDEM_COMMIT_DELAY_MS": "5"}
    servers = [await make_server(database_url, **env) for _ in range(2)]
    doc_id = "compacted-by-one"
    lease = f"{redis_env['TANDEM_REDIS_PREFIX']}:lease:compact:{doc_id}"
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with (
            SyncClient(servers[0].ws_url, doc_id) as one,
            SyncClient(servers[1].ws_url, doc_id) as two,
        ):
            await asyncio.gather(one.wait_synced(), two.wait_synced())
            # Someone else holds the lease: neither process compacts, both leave it.
            assert await redis.set(lease, b"someone-else", px=60_000, nx=True)
            await asyncio.gather(
                type_into(one, [f"a{i} " for i in range(20)], 0.03),
                type_into(two, [f"b{i} " for i in range(20)], 0.03),
            )
            await asyncio.gather(one.wait_stored(), two.wait_stored())
            await asyncio.sleep(0.5)
            assert await total(servers, "tandem_compactions_total") == 0
            for server in servers:
                assert await metric(server, "tandem_compactions_skipped_total") >= 1
            assert (await stored(database_url, doc_id)).snapshot_id is None
            await redis.delete(lease)

            # Both type at once, many small edits on a large document: each process is
            # over the bar again and again, and takes the lease or leaves the compaction.
            filler = "长" * 20_000
            one.doc.get("text", type=Text).insert(0, filler)
            await asyncio.gather(
                type_into(one, [f"c{i} " for i in range(150)], 0.005),
                type_into(two, [f"d{i} " for i in range(150)], 0.005),
            )
            await asyncio.gather(one.wait_stored(), two.wait_stored())
            await asyncio.sleep(1.0)  # compactions under way finish
            expected = str(one.doc.get("text", type=Text))
            assert str(two.doc.get("text", type=Text)) == expected
        compactions = await total(servers, "tandem_compactions_total")
        skipped = await total(servers, "tandem_compactions_skipped_total")
        assert compactions >= 2
        final = await stored(database_url, doc_id)
        assert final.snapshot_id is not None
        assert stored_text(final) == expected
        for server in servers:
            # The store's check would have caught a second compaction of one base.
            assert "lost a race" not in server.log()
        print(f"compactions: {compactions:.0f}, left to the lease holder: {skipped:.0f}")
    finally:
        await redis.aclose()


async def test_a_standalone_sidecar_stands_by_beside_a_server(
    make_server: ServerFactory, database_url: str, tmp_path: Path
) -> None:
    """Without Redis too: `tandem sidecar` beside a server that runs its own waits."""
    server = await make_server(database_url, TANDEM_SECRET=SECRET)
    await wait_leader(server, 10)
    log_path = tmp_path / "sidecar.log"
    with log_path.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server",
            "sidecar",
            env={**os.environ, "TANDEM_DATABASE_URL": database_url, "TANDEM_SECRET": SECRET},
            stdout=out,
            stderr=out,
        )
    try:
        async with asyncio.timeout(15):
            while "standing by" not in log_path.read_text():
                await asyncio.sleep(0.1)
        server.kill()
        started = time.monotonic()
        async with asyncio.timeout(10):
            while "this process runs the sidecar" not in log_path.read_text():
                await asyncio.sleep(0.05)
        took = time.monotonic() - started
        assert "sidecar running" in log_path.read_text()
        print(f"standalone sidecar took over in {took:.2f} s")
    finally:
        process.terminate()
        await process.wait()
