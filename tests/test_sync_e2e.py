"""End to end: pycrdt clients syncing through a real server process."""

from __future__ import annotations

import asyncio

from conftest import ServerProcess
from pycrdt import Map, Text

from client.sync import SyncClient


async def wait_until(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_two_clients_converge(server: ServerProcess) -> None:
    async with SyncClient(server.ws_url, "plan") as a, SyncClient(server.ws_url, "plan") as b:
        await a.wait_synced()
        await b.wait_synced()
        a.doc.get("text", type=Text).insert(0, "双十一 plan 🎉")
        b.doc.get("map", type=Map)["owner"] = "运营"
        await wait_until(lambda: str(b.doc.get("text", type=Text)) == "双十一 plan 🎉")
        await wait_until(lambda: a.doc.get("map", type=Map).get("owner") == "运营")


async def test_memory_mode_syncs_and_serves_the_api(make_server) -> None:  # type: ignore[no-untyped-def]
    import httpx

    server = await make_server("memory://")
    async with SyncClient(server.ws_url, "m") as a, SyncClient(server.ws_url, "m") as b:
        await a.wait_synced()
        await b.wait_synced()
        a.doc.get("text", type=Text).insert(0, "内存")
        await wait_until(lambda: str(b.doc.get("text", type=Text)) == "内存")
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        created = await http.post("/api/docs", json={"kind": "board", "title": "t"})
        assert created.status_code == 201
    assert "documents in memory" in server.log()
