"""`tandem user disable` reaches running servers: open connections of that user close at once.

The command writes to the database directly; it tells servers through a PostgreSQL NOTIFY,
and through Redis when several processes share documents.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, ServerFactory, ServerProcess, postgres_database
from test_login import SECRET, login, seed_user
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


async def disable(url: str, user: str, **env: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "user", "disable", user,
        cwd=ROOT,
        env={**os.environ, "TANDEM_DATABASE_URL": url, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, err.decode()


async def open_as(server: ServerProcess, token: str) -> ClientConnection:
    ws = await connect(f"{server.ws_url}/plan?token={token}", open_timeout=10)
    await ws.recv()  # the greeting: admitted
    return ws


async def closed_after(ws: ClientConnection, since: float) -> tuple[int | None, float]:
    try:
        async with asyncio.timeout(10):
            async for _ in ws:
                pass
    except ConnectionClosed:
        pass
    return ws.close_code, time.perf_counter() - since


@pytest.mark.postgres
async def test_disabling_a_user_on_postgresql_closes_their_connections(
    make_server: ServerFactory,
) -> None:
    async with postgres_database() as url:
        await seed_user(url, "wang", "a-long-password")
        server = await make_server(url, TANDEM_SECRET=SECRET)
        token = (await login(server, "wang", "a-long-password")).json()["token"]
        ws = await open_as(server, token)
        started = time.perf_counter()
        closing = asyncio.ensure_future(closed_after(ws, started))
        code, err = await disable(url, "wang")
        ran = time.perf_counter() - started
        assert code == 0, err
        close, delay = await closing
        print(
            f"\nclosed {delay * 1000:.0f} ms after `tandem user disable` started "
            f"(it ran {ran * 1000:.0f} ms)"
        )
        assert close == 4403
        assert delay < ran + 1.0


async def test_disabling_a_user_reaches_every_process_through_redis(
    tmp_path: Path, redis_env: dict[str, str]
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'tandem.db'}"
    await seed_user(url, "li", "a-long-password")
    env = {**redis_env, "TANDEM_SECRET": SECRET}
    servers = [ServerProcess(url, tmp_path, env) for _ in range(2)]
    try:
        for server in servers:
            await server.start()
        token = (await login(servers[0], "li", "a-long-password")).json()["token"]
        sockets = [await open_as(server, token) for server in servers]
        started = time.perf_counter()
        closing = asyncio.gather(*(closed_after(ws, started) for ws in sockets))
        code, err = await disable(url, "li", **redis_env)
        ran = time.perf_counter() - started
        assert code == 0, err
        results = await closing
        print(
            f"\nclosed on both processes {max(d for _, d in results) * 1000:.0f} ms after "
            f"`tandem user disable` started ({ran * 1000:.0f} ms)"
        )
        assert [c for c, _ in results] == [4403, 4403]
        assert max(d for _, d in results) < ran + 1.0
    finally:
        for server in servers:
            await server.stop()
