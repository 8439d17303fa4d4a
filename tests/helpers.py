"""Helpers shared by the tests that drive a real server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import httpx
from conftest import ServerProcess
from sqlalchemy import text

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
