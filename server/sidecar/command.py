"""`tandem sidecar`: the sidecar as a process of its own, beside one or more servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from server import logs
from server.persistence import migrate
from server.persistence.sql import create_engine
from server.settings import Settings
from server.sidecar.service import Sidecar

log = logging.getLogger("tandem.sidecar")


def run(settings: Settings) -> int:
    logs.configure(settings.log_level)
    if settings.in_memory:
        log.error("the sidecar reads the update log: it needs a database, not memory://")
        return 2
    return asyncio.run(_run(settings))


async def _run(settings: Settings) -> int:
    engine = create_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    try:
        if settings.is_sqlite:
            await migrate.ensure_current(engine)
        elif await migrate.current(engine) != migrate.head():
            log.error("the database schema is not current: run `tandem db upgrade`")
            return 2
        sidecar = Sidecar(engine, settings)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        sidecar.start()
        log.info("sidecar reading %s", engine.url.render_as_string())
        await stopping.wait()
        await sidecar.stop()
        log.info("sidecar stopped")
        return 0
    finally:
        with contextlib.suppress(Exception):
            await engine.dispose()
