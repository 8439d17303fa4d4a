"""PostgreSQL connections of their own through asyncpg: the appender's (a pooled connection
costs a reset round trip per commit) and LISTEN connections that wake a reader at once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("tandem.persistence")


async def connect(url: URL) -> Any:
    """A plain asyncpg connection to the database `url` names."""
    import asyncpg

    return await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database,
        timeout=10,
    )


async def listen(engine: AsyncEngine, channel: str, wake: Callable[[], None]) -> Any | None:
    """A connection that calls `wake` at each NOTIFY on `channel`; None (and a warning) if it
    cannot be made, and the caller polls instead."""
    try:
        conn = await connect(engine.url)
        await conn.add_listener(channel, lambda *_: wake())
    except Exception as exc:
        log.warning("cannot LISTEN on %s (%s); polling instead", channel, exc)
        return None
    return conn
