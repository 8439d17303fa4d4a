"""TANDEM_SQLITE_SYNCHRONOUS reaches every SQLite connection that writes the database."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
import pytest
from conftest import ServerFactory, ServerProcess, upgrade_schema
from pycrdt import Array
from pydantic import ValidationError
from sqlalchemy import text

from client.sync import SyncClient
from server.persistence.append import SqliteAppender
from server.persistence.sql import SqlStore, create_engine
from server.persistence.sqlite import SqliteSynchronous, synchronous_of
from server.persistence.store import UpdateRecord
from server.settings import Settings

# What `PRAGMA synchronous` reads back.
LEVEL = {"normal": 1, "full": 2}


def test_the_default_is_normal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TANDEM_SQLITE_SYNCHRONOUS", raising=False)
    assert Settings().sqlite_synchronous == "normal"


@pytest.mark.parametrize(
    ("given", "used"), [("full", "full"), ("FULL", "full"), ("Normal", "normal")]
)
def test_the_setting_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, given: str, used: str
) -> None:
    monkeypatch.setenv("TANDEM_SQLITE_SYNCHRONOUS", given)
    assert Settings().sqlite_synchronous == used


@pytest.mark.parametrize("given", ["off", "extra", "2", ""])
def test_other_values_are_refused(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    monkeypatch.setenv("TANDEM_SQLITE_SYNCHRONOUS", given)
    with pytest.raises(ValidationError, match="sqlite_synchronous"):
        Settings()


async def engine_level(url: str, **kwargs: SqliteSynchronous) -> int:
    engine = create_engine(url, **kwargs)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(text("PRAGMA synchronous")))
    finally:
        await engine.dispose()


async def test_create_engine_keeps_normal_by_default(tmp_path: Path) -> None:
    assert await engine_level(f"sqlite+aiosqlite:///{tmp_path / 't.db'}") == LEVEL["normal"]


@pytest.mark.parametrize("level", ["normal", "full"])
async def test_every_connection_of_the_store_uses_the_level(
    tmp_path: Path, level: SqliteSynchronous
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 't.db'}"
    await upgrade_schema(url)
    assert await engine_level(url, sqlite_synchronous=level) == LEVEL[level]

    store = SqlStore(create_engine(url, sqlite_synchronous=level))
    try:
        async with store.engine.connect() as conn:
            assert await conn.scalar(text("PRAGMA synchronous")) == LEVEL[level]
        # The update log's own connections: the one on the loop and the thread's.
        assert store.append_now([UpdateRecord("doc", b"one", "ws", None)])
        appender = store._appender
        assert isinstance(appender, SqliteAppender) and appender._inline is not None
        assert synchronous_of(appender._inline) == LEVEL[level]
        thread_level = await asyncio.get_running_loop().run_in_executor(
            appender._executor, lambda: synchronous_of(appender._connection())
        )
        assert thread_level == LEVEL[level]
    finally:
        await store.close()


async def test_an_unknown_level_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        await engine_level(f"sqlite+aiosqlite:///{tmp_path / 't.db'}", sqlite_synchronous="off")  # type: ignore[arg-type]


async def committed_level(server: ServerProcess) -> str:
    """Make one edit, wait for its commit; the level the update log reported on opening."""
    async with SyncClient(server.ws_url, "pragma", reconnect=False) as client:
        await client.wait_synced()
        client.doc.get("tokens", type=Array).append("x")
        deadline = time.monotonic() + 10
        async with httpx.AsyncClient() as http:
            while True:
                body = (await http.get(f"{server.http_url}/readyz")).json()
                if body["pending_updates"] == 0 and "synchronous=" in server.log():
                    break
                assert time.monotonic() < deadline, server.log()[-2000:]
                await asyncio.sleep(0.05)
    found = re.findall(r"SQLite update log .*: synchronous=(\w+)", server.log())
    # One line, or two should both of the log's connections open at the same moment.
    assert found and len(set(found)) == 1, server.log()[-2000:]
    return str(found[0])


@pytest.mark.parametrize(("env", "reported"), [(None, "NORMAL"), ("full", "FULL")])
async def test_the_server_commits_with_the_configured_level(
    make_server: ServerFactory, env: str | None, reported: str
) -> None:
    server = await make_server(**({"TANDEM_SQLITE_SYNCHRONOUS": env} if env else {}))
    assert await committed_level(server) == reported
