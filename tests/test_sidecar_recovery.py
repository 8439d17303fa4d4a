"""The sidecar as a process of its own (`tandem sidecar`): killed with SIGKILL in the middle
of a burst, or stopped while compaction folds thousands of updates into a snapshot, it
resumes and makes every expected notification exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from client.documents import BoardClient
from client.sync import SyncClient
from server.auth import issue_token
from tests.conftest import ServerFactory, ServerProcess
from tests.helpers import api, query

SECRET = "sidecar-recovery-secret-with-32-bytes-or-more"
PEOPLE = ["王小明", "周婷", "刘洋", "李俊杰", "Ana", "Bo", "Chen"]


def token(user: str) -> str:
    return issue_token(SECRET, user, ttl=3600)


class SidecarProcess:
    def __init__(self, database_url: str, log: Path, poll_ms: int = 50) -> None:
        self.database_url = database_url
        self.log = log
        self.poll_ms = poll_ms
        self.process: asyncio.subprocess.Process | None = None
        self.started = datetime.now(UTC)

    async def start(self) -> None:
        self.started = datetime.now(UTC)
        env = {
            **os.environ,
            "TANDEM_DATABASE_URL": self.database_url,
            "TANDEM_SECRET": SECRET,
            "TANDEM_SIDECAR_POLL_MS": str(self.poll_ms),
        }
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "server", "sidecar", env=env, stdout=out, stderr=out
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@pytest.fixture
async def sidecars(tmp_path: Path) -> AsyncIterator[Callable[[str], Awaitable[SidecarProcess]]]:
    started: list[SidecarProcess] = []

    async def start(database_url: str) -> SidecarProcess:
        sidecar = SidecarProcess(database_url, tmp_path / "sidecar.log")
        await sidecar.start()
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        await sidecar.stop()


async def scalar(url: str, sql: str) -> Any:
    return (await query(url, sql))[0][0]


async def caught_up(url: str, since: datetime, timeout: float = 60.0) -> int:
    """Wait until a sidecar started after `since` has read every row of the update log (its
    first step writes the checkpoint, having read what compaction folded into snapshots)."""
    async with asyncio.timeout(timeout):
        while True:
            rows = await query(
                url, "SELECT position, updated_at FROM feed_checkpoints WHERE name = 'updates'"
            )
            if rows and aware(rows[0][1]) >= since:
                position = int(rows[0][0])
                unread = await scalar(url, f"SELECT count(*) FROM updates WHERE seq > {position}")
                if unread == 0:
                    return position
            await asyncio.sleep(0.1)


def aware(moment: Any) -> datetime:
    if isinstance(moment, str):  # SQLite through a raw query
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def new_board(server: ServerProcess) -> str:
    async with api(server, token("ops")) as http:
        made = await http.post("/docs", json={"kind": "board", "title": "大促作战板"})
        assert made.status_code == 201, made.text
        return str(made.json()["id"])


@pytest.mark.chaos
async def test_a_sidecar_killed_mid_burst_makes_each_notification_once(
    make_server: ServerFactory,
    database_url: str,
    sidecars: Callable[[str], Awaitable[SidecarProcess]],
) -> None:
    server = await make_server(database_url, TANDEM_SECRET=SECRET, TANDEM_SIDECAR="0")
    board_id = await new_board(server)
    sidecar = await sidecars(database_url)
    async with SyncClient(server.ws_url, board_id, token=token("ops")) as client:
        await client.wait_synced()
        board = BoardClient(client)
        with client.doc.transaction():
            tasks = [board.add(f"任务 {i}") for i in range(1000)]
        await client.wait_stored()
        await caught_up(database_url, sidecar.started)
        assert await scalar(database_url, "SELECT count(*) FROM task_index") == 1000

        # The burst: 1000 assignments, one change each, while the sidecar is killed.
        expected = {(PEOPLE[i % len(PEOPLE)], task) for i, task in enumerate(tasks)}
        sent = 0

        async def burst() -> None:
            nonlocal sent
            for i, task in enumerate(tasks):
                board.assign(task, PEOPLE[i % len(PEOPLE)])
                sent += 1
                if i % 2 == 0:
                    await asyncio.sleep(0.01)

        sending = asyncio.create_task(burst())
        made_before_kill = 0
        async with asyncio.timeout(60):
            while made_before_kill < 50:
                made_before_kill = await scalar(database_url, "SELECT count(*) FROM notifications")
                await asyncio.sleep(0.02)
        sidecar.kill()
        sent_at_kill = sent
        await sending
        await client.wait_stored()

    await sidecar.process.wait()  # type: ignore[union-attr]
    assert sent_at_kill < len(tasks), "the kill came after the burst"
    resumed = await sidecars(database_url)
    await caught_up(database_url, resumed.started)
    rows = await query(
        database_url,
        "SELECT n.user_name, e.task_id, e.kind FROM notifications n "
        "JOIN events e ON e.id = n.event_id",
    )
    print(
        f"killed after {made_before_kill} notifications and {sent_at_kill} of 1000 changes; "
        f"after the restart: {len(rows)} notifications"
    )
    assert {kind for _, _, kind in rows} == {"assigned"}
    made = [(user, task) for user, task, _ in rows]
    assert len(made) == len(set(made)), "a notification was made twice"
    assert set(made) == expected


@pytest.mark.chaos
async def test_a_stopped_sidecar_catches_up_from_the_snapshot_compaction_made(
    make_server: ServerFactory,
    database_url: str,
    sidecars: Callable[[str], Awaitable[SidecarProcess]],
) -> None:
    # Updates stored as they come, and compacted every 100 rows.
    server = await make_server(
        database_url,
        TANDEM_SECRET=SECRET,
        TANDEM_SIDECAR="0",
        TANDEM_COMMIT_DELAY_MS="0",
        TANDEM_COMPACT_AFTER_UPDATES="100",
    )
    board_id = await new_board(server)
    sidecar = await sidecars(database_url)
    async with SyncClient(server.ws_url, board_id, token=token("ops")) as client:
        await client.wait_synced()
        board = BoardClient(client)
        with client.doc.transaction():
            tasks = [board.add(f"任务 {i}") for i in range(20)]
        await client.wait_stored()
        checkpoint = await caught_up(database_url, sidecar.started)
        await sidecar.stop()

        # 5000 updates while the sidecar is away: 4980 edits of descriptions and 20
        # assignments, one for each task, spread among them.
        expected = set()
        for i in range(5000):
            if i % 250 == 0:
                task = tasks[i // 250]
                board.assign(task, PEOPLE[i // 250 % len(PEOPLE)])
                expected.add((PEOPLE[i // 250 % len(PEOPLE)], task))
            else:
                board.update(tasks[i % 20], description=f"第 {i} 稿")
            if i % 50 == 0:
                await asyncio.sleep(0.01)
        await client.wait_stored(timeout=120)

    # Compaction runs after each 100 rows of the board; wait for the last one.
    async with asyncio.timeout(60):
        while True:
            last = await scalar(database_url, "SELECT coalesce(max(seq), 0) FROM updates")
            covered = await scalar(
                database_url,
                "SELECT coalesce(max(s.upto_seq), 0) FROM snapshots s "
                "JOIN documents d ON d.snapshot_id = s.id",
            )
            if covered > checkpoint and last - covered < 100:
                break
            await asyncio.sleep(0.2)
    left = await scalar(database_url, f"SELECT count(*) FROM updates WHERE seq > {checkpoint}")
    written = max(last, covered) - checkpoint
    print(
        f"rows written while the sidecar was away: {written}, still in the log: {left}; "
        f"the snapshot covers up to seq {covered}"
    )
    assert left < written / 2  # most of what it had not read is gone from the log

    resumed = await sidecars(database_url)
    await caught_up(database_url, resumed.started)
    rows = await query(
        database_url,
        "SELECT n.user_name, e.task_id FROM notifications n JOIN events e ON e.id = n.event_id "
        "WHERE e.kind = 'assigned'",
    )
    assert sorted(rows) == sorted(expected)
    descriptions = await query(database_url, "SELECT count(*) FROM task_index")
    assert descriptions[0][0] == 20

    # Restarted once more, it finds nothing new to say.
    await resumed.stop()
    again = await sidecars(database_url)
    await asyncio.sleep(2.0)
    await again.stop()
    assert len(await query(database_url, "SELECT id FROM notifications")) == len(rows)


@pytest.mark.postgres
async def test_on_postgresql_a_sidecar_of_its_own_reaches_the_streams_at_once(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    """With the sidecar in a process of its own, PostgreSQL's NOTIFY carries the news both
    ways: the committed update wakes the sidecar, the committed notification wakes the
    server's streams. Both poll only every 5 s here, so only NOTIFY can make it quick."""
    from tests import test_sidecar as embedded
    from tests.conftest import postgres_database

    async with postgres_database() as url:
        server = await make_server(
            url,
            TANDEM_SECRET=embedded.SECRET,
            TANDEM_SIDECAR="0",
            TANDEM_SIDECAR_POLL_MS="5000",
        )
        sidecar = SidecarProcess(url, tmp_path / "sidecar.log", poll_ms=5000)
        await sidecar.start()
        try:
            board_id, (task,) = await embedded.new_board(server, "ops", ["排班"])
            await caught_up(url, sidecar.started)
            async with (
                embedded.Stream(server, "王小明") as stream,
                SyncClient(server.ws_url, board_id, token=embedded.token("ops")) as client,
            ):
                await client.wait_synced()
                started = time.perf_counter()
                BoardClient(client).assign(task, "王小明")
                await stream.wait_for(1, timeout=4)
                latency = stream.arrived[0] - started
        finally:
            await sidecar.stop()
    print(f"separate sidecar on PostgreSQL: assignment -> stream in {latency * 1000:.0f} ms")
    assert latency < 1.0
