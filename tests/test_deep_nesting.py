"""A frame nesting plain values very deeply must not kill the server.

pycrdt decodes nested values recursively in Rust; 60,000 levels (a 120 KB update) overflow
a default 8 MiB stack with a segfault. The server runs its event loop on a big stack.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
from conftest import ServerFactory
from pycrdt import Doc, Map
from websockets.asyncio.client import connect

from shared.protocol import encode_update


def deep_update(depth: int) -> bytes:
    out: list[bytes] = []

    def build() -> None:
        value: Any = 1
        for _ in range(depth):
            value = [value]
        doc: Doc[Any] = Doc()
        doc.get("m", type=Map)["deep"] = value
        out.append(doc.get_update())

    previous = threading.stack_size(1 << 30)
    try:
        thread = threading.Thread(target=build)
        thread.start()
    finally:
        threading.stack_size(previous)
    thread.join()
    return out[0]


async def test_deeply_nested_update_does_not_crash_the_server(make_server: ServerFactory) -> None:
    server = await make_server("memory://")
    update = deep_update(60_000)
    async with connect(f"{server.ws_url}/deep", max_size=None) as ws:
        await ws.recv()  # the server's sync step 1
        await ws.send(encode_update(update))
        # The server is still there and answers the same connection.
        await ws.send(b"\x00\x00\x01\x00")  # sync step 1, empty state vector
        reply = await ws.recv()
        assert isinstance(reply, bytes) and reply[:2] == b"\x00\x01"
        assert len(reply) > len(update) // 2  # the step 2 carries the deep value
    assert server.proc is not None and server.proc.poll() is None
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{server.http_url}/healthz")).status_code == 200
