"""One log line when a connection opens and one when it closes: at ten thousand connections
the log is the first bottleneck a user sees."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import websockets

from tests.conftest import ServerProcess


async def test_a_connection_logs_one_line_when_it_opens_and_one_when_it_closes(
    server: ServerProcess,
) -> None:
    async with websockets.connect(f"{server.ws_url}/log-probe") as ws:
        port = ws.local_address[1]
        await ws.recv()  # the server's sync step 1: the connection is open
    await asyncio.sleep(0.5)
    lines = [
        line
        for line in server.log().splitlines()
        if f":{port}" in line
        or "log-probe" in line
        or "connection open" in line
        or "connection closed" in line
    ]
    assert len(lines) == 2, "\n".join(lines)
    assert "ws open doc=log-probe" in lines[0] and f"client=127.0.0.1:{port}" in lines[0]
    assert "ws close doc=log-probe" in lines[1] and "seconds=" in lines[1]


async def test_the_descriptor_limit_is_raised_logged_and_warned_of(tmp_path: Path) -> None:
    # A hard limit of 200 descriptors: room for about (200 - 64) / 2 = 68 WebSockets.
    server = ServerProcess(
        f"sqlite+aiosqlite:///{tmp_path / 'tandem.db'}",
        tmp_path,
        launcher=["prlimit", "--nofile=100:200"],
    )
    await server.start()
    try:
        assert "file descriptors: limit 200 (raised from 100), room for about 68" in server.log()
        async with contextlib.AsyncExitStack() as stack:
            for i in range(66):
                ws = await stack.enter_async_context(
                    websockets.connect(f"{server.ws_url}/crowd-{i % 5}")
                )
                await ws.recv()
            await asyncio.sleep(0.3)
            warnings = [line for line in server.log().splitlines() if "WebSockets open" in line]
        assert len(warnings) == 1, warnings  # once, not once per connection
        assert "65 WebSockets open, room for about 68 (limit 200)" in warnings[0]
    finally:
        await server.stop()
