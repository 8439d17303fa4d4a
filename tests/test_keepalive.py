"""Keep-alive pings from the process's one ping timer: a client that answers gets a ping
each interval and stays; one that does not is closed with 1011."""

from __future__ import annotations

import asyncio

from tests.conftest import ServerFactory
from tests.rawws import OP_CLOSE, OP_PING, OP_PONG, RawWebSocket


async def test_pings_come_each_interval_and_an_unanswered_one_closes_with_1011(
    make_server: ServerFactory,
) -> None:
    server = await make_server(TANDEM_PING_INTERVAL_SECONDS="1")
    answering = await RawWebSocket.connect(server.port, "/ws/alive")
    silent = await RawWebSocket.connect(server.port, "/ws/alive")
    pings = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.5
    try:
        while loop.time() < deadline:
            try:
                frame = await asyncio.wait_for(answering.read_frame(), deadline - loop.time())
            except TimeoutError:
                break
            assert frame is not None and frame.opcode != OP_CLOSE, frame
            if frame.opcode == OP_PING:
                pings += 1
                answering.send(frame.payload, OP_PONG)
                await answering.drain()
        frames = await silent.read_to_end(10)
    finally:
        answering.abort()
        silent.abort()
    assert 4 <= pings <= 6, pings  # one a second (rounded to the timer's whole seconds)
    assert frames[-1].opcode == OP_CLOSE and frames[-1].close_code == 1011, frames[-1]
