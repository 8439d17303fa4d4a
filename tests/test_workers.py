"""`tandem serve --workers N`: several processes on one port, sharing documents through Redis."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from conftest import REQUIRE_SERVICES, ROOT, ServerProcess, free_port
from helpers import wait_until
from pycrdt import Doc, Text

from client.sync import SyncClient

REDIS_URL = os.environ.get("TANDEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test alone on a reachable Redis; its keys are removed after."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (redis.ConnectionError, OSError) as exc:
        await client.aclose()
        if REQUIRE_SERVICES:
            pytest.fail(f"Redis is required but unreachable at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis unreachable: {exc}")
    prefix = f"test-workers-{secrets.token_hex(4)}"
    try:
        yield prefix
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def start_workers(tmp_path: Path, prefix: str, count: int = 2) -> ServerProcess:
    server = ServerProcess(
        f"sqlite+aiosqlite:///{tmp_path / 'tandem.db'}",
        tmp_path,
        {"TANDEM_REDIS_URL": REDIS_URL, "TANDEM_REDIS_PREFIX": prefix},
        args=["--workers", str(count)],
    )
    await server.start()
    return server


async def scrape(server: ServerProcess) -> tuple[str, int, str]:
    """One /metrics scrape on a new connection: the process that answered (its broker id
    and pid) and the whole text."""
    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)) as http:
        response = await http.get(f"{server.http_url}/metrics", timeout=5)
    response.raise_for_status()
    line = next(
        line for line in response.text.splitlines() if line.startswith("tandem_process_info{")
    )
    labels = dict(_LABEL.findall(line))
    return labels["process"], int(labels["pid"]), response.text


async def every_process(
    server: ServerProcess, count: int = 2, timeout: float = 30.0
) -> dict[str, tuple[int, str]]:
    """Scrape on fresh connections until `count` processes have answered: for each, its pid
    and the newest scrape."""
    seen: dict[str, tuple[int, str]] = {}
    async with asyncio.timeout(timeout):
        while len(seen) < count:
            process, pid, text = await scrape(server)
            seen[process] = (pid, text)
    return seen


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"metric {name} not exported"
    return float(match[1])


def running(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


async def test_workers_share_the_port_and_the_documents(tmp_path: Path, redis_prefix: str) -> None:
    server = await start_workers(tmp_path, redis_prefix)
    assert server.proc is not None
    try:
        # Fresh connections reach both processes; /readyz names the one that answered.
        answered: set[str] = set()
        async with asyncio.timeout(30):
            while len(answered) < 2:
                async with httpx.AsyncClient(
                    limits=httpx.Limits(max_keepalive_connections=0)
                ) as http:
                    ready = (await http.get(f"{server.http_url}/readyz", timeout=5)).json()
                assert ready["status"] == "ok" and ready["redis"] == "ok", ready
                answered.add(ready["process"])
        processes = await every_process(server)
        assert set(processes) == answered
        pids = {pid for pid, _ in processes.values()}
        assert len(pids) == 2 and server.proc.pid not in pids
        assert all(parent_of(pid) == server.proc.pid for pid in pids)

        # Clients until both processes hold some: they edit one document and converge.
        clients: list[SyncClient] = []
        try:
            for _ in range(24):
                client = SyncClient(server.ws_url, "shared-notes", Doc())
                client.start()
                clients.append(client)
                await client.wait_synced()
                scraped = await every_process(server)
                held = {
                    process: sample(text, "tandem_connections")
                    for process, (_, text) in scraped.items()
                }
                if sum(held.values()) == len(clients) and all(held.values()):
                    break
            else:
                pytest.fail(f"{len(clients)} connections all reached one process")
            for number, client in enumerate(clients):
                client.doc.get("text", type=Text).insert(0, f"<{number}>")

            def converged() -> bool:
                texts = {str(c.doc.get("text", type=Text)) for c in clients}
                return len(texts) == 1 and all(
                    f"<{n}>" in next(iter(texts)) for n in range(len(clients))
                )

            await wait_until(converged, timeout=15)
            for _process, (_, text) in (await every_process(server)).items():
                # Each process applied the edits of the clients of the other.
                assert sample(text, "tandem_broker_received_total") > 0
        finally:
            for client in clients:
                await client.close()

        assert await server.stop() == 0
        await wait_until(lambda: not any(running(pid) for pid in pids), timeout=10)
        assert "tandem workers stopped" in server.log()
    finally:
        server.kill()


async def test_a_worker_that_dies_is_restarted(tmp_path: Path, redis_prefix: str) -> None:
    server = await start_workers(tmp_path, redis_prefix)
    try:
        before = {pid for pid, _ in (await every_process(server)).values()}
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: "restarting it in" in server.log(), timeout=10)
        async with asyncio.timeout(30):
            while True:
                after = {pid for pid, _ in (await every_process(server)).values()}
                if victim not in after and len(after) == 2:
                    break
                await asyncio.sleep(0.2)
        assert after - before and (before - {victim}) <= after
        assert "was killed by SIGKILL unexpectedly" in server.log()
        assert await server.stop() == 0
        assert not any(running(pid) for pid in after)
    finally:
        server.kill()


async def test_workers_stop_when_the_parent_is_killed(tmp_path: Path, redis_prefix: str) -> None:
    server = await start_workers(tmp_path, redis_prefix)
    try:
        pids = {pid for pid, _ in (await every_process(server)).values()}
    finally:
        server.kill()  # SIGKILL: the parent cannot pass anything on
    await wait_until(lambda: not any(running(pid) for pid in pids), timeout=40)
    assert server.log().count("the parent process is gone; stopping") == 2


def test_workers_need_redis(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TANDEM_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--workers", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--workers 2 needs TANDEM_REDIS_URL" in result.stderr
    assert not (tmp_path / "data").exists()  # refused before opening anything
    env.update(TANDEM_REDIS_URL="redis://127.0.0.1:6379/0", TANDEM_DATABASE_URL="memory://")
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--workers", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "memory:// keeps each process's documents to itself" in result.stderr


def test_a_failed_start_up_stops_the_workers(tmp_path: Path) -> None:
    """A child that cannot start (here: its Redis does not answer) makes the parent exit 1
    without starting the others, rather than serve with fewer processes."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TANDEM_")}
    env.update(
        PYTHONPATH=str(ROOT),
        TANDEM_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        TANDEM_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'tandem.db'}",
        TANDEM_PORT=str(free_port()),
    )
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--workers", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "worker 0" in result.stderr and "at start-up; stopping" in result.stderr
    assert "worker 1 started" not in result.stderr
