"""One log line when a connection opens and one when it closes: at ten thousand connections
the log is the first bottleneck a user sees."""

from __future__ import annotations

import asyncio

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
