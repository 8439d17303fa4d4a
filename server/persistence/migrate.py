"""Schema migrations (Alembic), run on an async engine.

Alembic is imported only when an upgrade actually runs: it costs about 11 MB of memory that
a server whose schema is current never needs. The current and head revisions are read
without it.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

_SCRIPTS = Path(__file__).with_name("migrations")
_REVISION = re.compile(r"^revision\s*=\s*[\"']([^\"']+)[\"']", re.M)
_DOWN = re.compile(r"^down_revision\s*=\s*[\"']([^\"']+)[\"']", re.M)


def _config(connection: Any = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision: the one no other migration names as its predecessor."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (_SCRIPTS / "versions").glob("*.py"):
        source = script.read_text(encoding="utf-8")
        if found := _REVISION.search(source):
            revisions.add(found.group(1))
        if down := _DOWN.search(source):
            parents.add(down.group(1))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"migrations must have exactly one head, found {sorted(heads)}")
    return heads.pop()


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision."""
    from alembic import command

    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.upgrade(_config(sync), "head"))


async def ensure_current(engine: AsyncEngine) -> None:
    """Upgrade only if the schema is behind, and then in a child process (`tandem db
    upgrade`), so the server itself never holds Alembic's modules in memory."""
    if await current(engine) == head():
        return
    url = engine.url.render_as_string(hide_password=False)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "db",
        "upgrade",
        "--database-url",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"schema upgrade failed:\n{output.decode(errors='replace')}")


async def current(engine: AsyncEngine) -> str | None:
    """The schema revision the database is at (None: never migrated)."""
    async with engine.connect() as conn:
        try:
            row = (await conn.execute(text("SELECT version_num FROM alembic_version"))).first()
        except DBAPIError:
            return None  # no version table yet
    return str(row[0]) if row else None
