"""Helpers shared by the tests that drive a real server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import httpx
from conftest import ServerProcess
from pycrdt import Doc, Text
from sqlalchemy import text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.persistence.sql import create_engine


async def query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in (await conn.execute(text(sql), params)).all()]
    finally:
        await engine.dispose()


def api(server: ServerProcess, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=f"{server.http_url}/api", headers=headers, timeout=30)


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def assert_error(response: httpx.Response, status: int, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status
    assert isinstance(error["message"], str) and error["message"]
    if field is not None:
        assert error.get("field") == field, error


async def metric(server: ServerProcess, name: str) -> float:
    """The current value of one Prometheus sample of the server: a name, or a name with its
    labels as exported (`name{label="value"}`)."""
    async with httpx.AsyncClient(verify=server.verify) as http:
        response = await http.get(f"{server.http_url}/metrics", timeout=5)
    response.raise_for_status()
    match = re.search(rf"^{re.escape(name)} (\S+)$", response.text, re.MULTILINE)
    assert match is not None, f"metric {name} not exported"
    return float(match[1])


class Silent:
    """A transport that takes every write and never backs up."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        pass


def small_updates(n: int, client_id: int = 7) -> list[bytes]:
    """The updates of typing n characters into the text "text", one at a time."""
    doc: Doc[Any] = Doc(client_id=client_id)
    out: list[bytes] = []
    doc.observe(lambda event: out.append(event.update))
    text = doc.get("text", type=Text)
    for i in range(n):
        text += f"{i % 10}"
    return out


async def close_of(
    url: str, *, send: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int | None, str]:
    """Open a WebSocket, optionally send a frame, and wait for the server to close it."""
    async with connect(url, open_timeout=10, additional_headers=headers) as ws:
        if send is not None:
            await ws.send(send)
        try:
            async with asyncio.timeout(10):
                async for _ in ws:
                    pass
        except ConnectionClosed:
            pass
        return ws.close_code, ws.close_reason or ""
