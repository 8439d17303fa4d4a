"""SyncClient.close(): queued edits reach the server before the connection goes."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from conftest import ServerFactory, free_port
from helpers import wait_until
from pycrdt import Text

from client.sync import SyncClient


async def test_leaving_async_with_right_after_an_edit_keeps_the_edit(
    make_server: ServerFactory,
) -> None:
    server = await make_server()
    async with SyncClient(server.ws_url, "last-words") as client:
        await client.wait_synced()
        text = client.doc.get("text", type=Text)
        for word in ("双十一", " plan", " 🎉"):
            text += word  # one update each, all still queued when the block ends
    assert client.all_sent

    # The server applied them; a clean stop commits them.
    await server.stop()
    await server.start()
    async with SyncClient(server.ws_url, "last-words", reconnect=False) as fresh:
        await fresh.wait_synced()
        assert str(fresh.doc.get("text", type=Text)) == "双十一 plan 🎉"


async def test_close_reports_edits_the_server_never_got_and_keeps_to_its_timeout(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server()
    client = SyncClient(server.ws_url, "unreachable")
    client.start()
    await client.wait_synced()
    await server.stop()
    await wait_until(lambda: not client.connected.is_set())
    client.doc.get("text", type=Text).insert(0, "offline edit")

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tandem.client"):
        confirmed = await client.close(timeout=1.0)
    elapsed = time.monotonic() - started
    assert confirmed is False
    assert not client.all_sent
    assert 0.9 < elapsed < 2.0, elapsed
    assert "not confirmed" in caplog.text


async def test_close_with_nothing_to_send_returns_at_once() -> None:
    client = SyncClient(f"ws://127.0.0.1:{free_port()}/ws", "nobody-home")
    client.start()
    await asyncio.sleep(0.2)  # a failed connection attempt or two
    started = time.monotonic()
    assert await client.close(timeout=5.0) is True
    assert time.monotonic() - started < 1.0
