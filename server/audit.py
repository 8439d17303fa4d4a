"""The activity log: who connected to, edited, exported or restored a document.

Events are kept in memory and written in one transaction every `interval` seconds (and at
shutdown), so a reconnect storm or a busy document costs one insert per flush, not one per
connection or keystroke. Edits are counted per document, author and hour from the writer's
committed rows, because compaction later folds those rows into snapshots that name nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Integer, cast, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.persistence.store import UpdateRecord
from server.persistence.tables import audit_events
from server.persistence.workspace import now

log = logging.getLogger("tandem.audit")

MAX_PENDING = 100_000
"""Events held while the database does not answer; past that the oldest are dropped."""


class AuditLog:
    def __init__(self, engine: AsyncEngine, *, interval: float = 1.0) -> None:
        self.engine = engine
        self.interval = interval
        self._events: list[dict[str, Any]] = []
        # (document, author, hour as whole hours since the epoch): committed rows.
        self._edits: Counter[tuple[str, str | None, int]] = Counter()
        self._task: asyncio.Task[None] | None = None

    def record(self, doc_id: str, user: str | None, action: str, detail: str = "") -> None:
        """Note `user` did `action` on `doc_id` just now (connect, export, restore, access)."""
        if len(self._events) >= MAX_PENDING:
            del self._events[: MAX_PENDING // 10]
        self._events.append(
            {
                "doc_id": doc_id,
                "user_name": user,
                "action": action,
                "detail": detail[:300] or None,
                "at": now(),
            }
        )
        self._start()

    def edited(self, record: UpdateRecord) -> None:
        """A committed update row (the writer's hook): counted per author and hour."""
        self._edits[(record.doc_id, record.author, int(time.time()) // 3600)] += 1
        if self._task is None:
            self._start()

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._later())

    async def _later(self) -> None:
        await asyncio.sleep(self.interval)
        self._task = None
        await self.flush()

    async def flush(self) -> None:
        events, self._events = self._events, []
        edits, self._edits = self._edits, Counter()
        rows = events + [
            {
                "doc_id": doc,
                "user_name": user,
                "action": "edit",
                "detail": str(n),
                "at": datetime.fromtimestamp(hour * 3600, UTC),
            }
            for (doc, user, hour), n in edits.items()
        ]
        if not rows:
            return
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(audit_events), rows)
        except Exception as exc:
            # Kept for the next flush: the activity log is not worth losing to an outage.
            log.warning("activity log not written (%d events kept): %s", len(rows), exc)
            self._events = events + self._events
            self._edits.update(edits)
            self._start()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()


async def activity(engine: AsyncEngine, doc_id: str, limit: int = 200) -> dict[str, Any]:
    """Edits per author and hour, and the newest other events, of one document."""
    async with engine.connect() as conn:
        edits: Sequence[Any] = (
            await conn.execute(
                select(
                    audit_events.c.user_name,
                    audit_events.c.at,
                    func.sum(cast(audit_events.c.detail, Integer)).label("n"),
                )
                .where(audit_events.c.doc_id == doc_id, audit_events.c.action == "edit")
                .group_by(audit_events.c.user_name, audit_events.c.at)
                .order_by(audit_events.c.at.desc(), audit_events.c.user_name)
                .limit(limit)
            )
        ).all()
        events: Sequence[Any] = (
            await conn.execute(
                select(audit_events)
                .where(audit_events.c.doc_id == doc_id, audit_events.c.action != "edit")
                .order_by(audit_events.c.at.desc(), audit_events.c.id.desc())
                .limit(limit)
            )
        ).all()
    return {
        "edits": [
            {"user": row.user_name, "hour": _iso(row.at), "updates": int(row.n or 0)}
            for row in edits
        ],
        "events": [
            {"at": _iso(row.at), "user": row.user_name, "action": row.action, "detail": row.detail}
            for row in events
        ],
    }


def _iso(value: datetime) -> str:
    stamp = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return stamp.isoformat().replace("+00:00", "Z")
