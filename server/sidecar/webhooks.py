"""Outgoing webhooks: every event (or the kinds a webhook lists) POSTed to other systems, signed,
retried until acknowledged, in order per document.

A durable feed, not a best effort: each event becomes one `webhook_deliveries` row per webhook
that wants it, in the same transaction that moves the "webhooks" feed checkpoint past the
event, so a crash neither loses nor doubles one. A delivery is acknowledged by any 2xx answer;
anything else (another status, a redirect, no answer within 10 s, a refused connection) is
tried again after 1 s, 2 s, 4 s ... up to `webhook_backoff_max_seconds` apart (each +-20 %,
so receivers coming back are not hit by every sender at once), forever.

Order: for each webhook and document only the oldest unacknowledged delivery (lowest event
id) is ever attempted, so a receiver sees a document's events in the order they happened; a
document whose head keeps failing holds back only that document. A receiver must still
tolerate duplicates: an answer lost on the way back makes the same delivery come again (with
the same X-Tandem-Delivery id; deduplicate on it or on X-Tandem-Event-Id).

A webhook gets the events created at or after its own creation (`created_at`), of the kinds
it lists (null: all).

The request
-----------
``POST <url>`` with the body ``{"webhook_id": 3, "event": {...}}`` (the event as
`server.notifications.event_json` renders it, compact JSON in UTF-8) and these headers:

- ``Content-Type: application/json``
- ``X-Tandem-Event``: the event's kind, ``X-Tandem-Event-Id``: its id
- ``X-Tandem-Delivery``: the delivery's id (the same on every retry of it)
- ``X-Tandem-Timestamp``: when this attempt was signed, whole seconds since the Unix epoch
- ``X-Tandem-Signature: sha256=<hex>``, the HMAC-SHA256, keyed with the webhook's secret
  (its UTF-8 bytes), of the timestamp, a full stop and the exact body bytes:
  ``hmac(secret, f"{timestamp}.".encode() + body, sha256)``.

A receiver recomputes that over the raw body it got, compares it in constant time
(`hmac.compare_digest`) and should refuse a timestamp far from its own clock (five minutes,
say): the timestamp is signed, so a recorded request cannot be replayed later as fresh.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server import __version__
from server.notifications import event_json
from server.persistence.tables import events, feed_checkpoints, webhook_deliveries, webhooks
from server.settings import Settings
from server.sidecar.clock import Clock, SystemClock

log = logging.getLogger("tandem.webhooks")

CHECKPOINT = "webhooks"
TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 1.0  # new events nudge the sender at once; this paces retries
# Deliveries attempted at once (each to a different webhook or document).
CONCURRENCY = 16
# Events turned into deliveries per transaction.
ENQUEUE_BATCH = 500
FIRST_BACKOFF_SECONDS = 1.0
JITTER = 0.2
ERROR_CHARS = 200
# How long `run` waits after the database failed a pass.
DATABASE_RETRY_SECONDS = 5.0


def utc(moment: datetime) -> datetime:
    """`moment` as an aware UTC datetime (SQLite hands back naive UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Tandem-Signature value of `body` sent at `timestamp` (see the module docstring)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def backoff_seconds(attempts: int, cap: float) -> float:
    """How long to wait after the `attempts`-th failed attempt: doubling from 1 s, +-20 %,
    never more than `cap`."""
    base = FIRST_BACKOFF_SECONDS * 2.0 ** min(max(attempts - 1, 0), 60)
    return min(cap, base * random.uniform(1 - JITTER, 1 + JITTER))


def wants(hook: Any, event: Any) -> bool:
    """Whether webhook row `hook` gets event row `event`: active, existing when the event
    happened, listing its kind (or no kinds)."""
    if not hook.active or utc(hook.created_at) > utc(event.created_at):
        return False
    kinds = hook.kinds
    return kinds is None or (isinstance(kinds, list) and event.kind in kinds)


@dataclass(frozen=True, slots=True)
class _Attempt:
    delivery_id: int
    webhook_id: int
    event_id: int
    doc_id: str
    attempts: int  # before this one
    url: str
    secret: str
    kind: str
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Outcome:
    attempt: _Attempt
    error: str | None  # None: acknowledged


class WebhookSender:
    """Turns new events into deliveries and delivers what is due; `run` does it forever.

    Only one sender should run against a database at a time (the checkpoint row is locked
    on PostgreSQL while enqueueing, so two would not double deliveries, but they would
    attempt the same ones).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        clock: Clock | None = None,
        client: httpx.AsyncClient | None = None,
        *,
        timeout: float = TIMEOUT_SECONDS,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.timeout = timeout
        self._client = client
        self._own_client = client is None
        self._wake = asyncio.Event()

    def nudge(self) -> None:
        """New events are there: start the next pass now instead of at the next poll."""
        self._wake.set()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout,
                follow_redirects=False,
                headers={"User-Agent": f"Tandem-Webhooks/{__version__}"},
            )
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client if this sender made it."""
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    close = aclose  # the name server/sidecar/service.py looks for

    async def run(self) -> None:
        """Step forever: right away again while there is more to do, else after POLL_SECONDS
        or a `nudge`. A database failure is logged and the pass tried again later."""
        try:
            while True:
                self._wake.clear()
                try:
                    attempted = await self.step()
                except Exception as exc:  # the database is down, say; the feed stays put
                    log.warning("webhooks: a pass failed, trying again: %r", exc)
                    await self._wait(DATABASE_RETRY_SECONDS)
                    continue
                if attempted < CONCURRENCY:
                    await self._wait(POLL_SECONDS)
        finally:
            await self.aclose()

    async def _wait(self, seconds: float) -> None:
        """Sleep `seconds` by the clock, or until nudged."""
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waker):
                task.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)

    async def step(self) -> int:
        """One pass: new events become deliveries, then the due ones are attempted (at most
        CONCURRENCY). Returns how many were attempted."""
        while await self.enqueue() == ENQUEUE_BATCH:
            pass
        due = await self._due()
        if not due:
            return 0
        outcomes = await asyncio.gather(*(self._deliver(attempt) for attempt in due))
        await self._record(outcomes)
        return len(due)

    # -- enqueueing ---------------------------------------------------------------------------

    async def enqueue(self) -> int:
        """Turn up to ENQUEUE_BATCH events past the checkpoint into deliveries and move the
        checkpoint past them, in one transaction. Returns how many events were read."""
        await self._ensure_checkpoint()
        async with self.engine.begin() as conn:
            position = (
                await conn.execute(
                    select(feed_checkpoints.c.position)
                    .where(feed_checkpoints.c.name == CHECKPOINT)
                    .with_for_update()
                )
            ).scalar_one()
            rows = (
                await conn.execute(
                    select(events.c.id, events.c.kind, events.c.doc_id, events.c.created_at)
                    .where(events.c.id > position)
                    .order_by(events.c.id)
                    .limit(ENQUEUE_BATCH)
                )
            ).all()
            if not rows:
                return 0
            hooks = (
                await conn.execute(
                    select(
                        webhooks.c.id, webhooks.c.kinds, webhooks.c.active, webhooks.c.created_at
                    ).where(webhooks.c.active.is_(True))
                )
            ).all()
            now = utc(self.clock.now())
            # Moved only from where it was read: should another sender have moved it
            # meanwhile (SQLite takes no lock on the read), this one leaves the batch to it.
            moved = await conn.execute(
                update(feed_checkpoints)
                .where(
                    feed_checkpoints.c.name == CHECKPOINT, feed_checkpoints.c.position == position
                )
                .values(position=rows[-1].id, updated_at=now)
            )
            if moved.rowcount != 1:
                return 0  # nothing written
            deliveries = [
                {
                    "webhook_id": hook.id,
                    "event_id": event.id,
                    "doc_id": event.doc_id,
                    "attempts": 0,
                    "next_attempt_at": now,
                }
                for event in rows
                for hook in hooks
                if wants(hook, event)
            ]
            if deliveries:
                await conn.execute(insert(webhook_deliveries), deliveries)
        return len(rows)

    async def _ensure_checkpoint(self) -> None:
        """The checkpoint row, at 0 when it is new: events from before a webhook existed are
        skipped by `wants`, so there is nothing to gain by starting further on."""
        async with self.engine.connect() as conn:
            found = (
                await conn.execute(
                    select(feed_checkpoints.c.name).where(feed_checkpoints.c.name == CHECKPOINT)
                )
            ).first()
        if found is not None:
            return
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(feed_checkpoints).values(
                        name=CHECKPOINT, position=0, updated_at=utc(self.clock.now())
                    )
                )
        except IntegrityError:
            pass  # another sender made it meanwhile

    # -- delivering ---------------------------------------------------------------------------

    async def _due(self) -> list[_Attempt]:
        """The deliveries to attempt now: per webhook and document the oldest unacknowledged
        one, if its time has come; the longest waiting first."""
        pending = webhook_deliveries.alias("pending")
        heads = (
            select(
                pending.c.webhook_id,
                pending.c.doc_id,
                func.min(pending.c.event_id).label("event_id"),
            )
            .where(pending.c.delivered_at.is_(None))
            .group_by(pending.c.webhook_id, pending.c.doc_id)
            .subquery("heads")
        )
        d = webhook_deliveries
        stmt = (
            select(
                d.c.id.label("delivery_id"),
                d.c.webhook_id,
                d.c.attempts,
                webhooks.c.url,
                webhooks.c.secret,
                # The event's columns under their own names, as `event_json` reads them.
                *events.c,
            )
            .select_from(
                d.join(
                    heads,
                    and_(d.c.webhook_id == heads.c.webhook_id, d.c.event_id == heads.c.event_id),
                )
                .join(webhooks, webhooks.c.id == d.c.webhook_id)
                .join(events, events.c.id == d.c.event_id)
            )
            .where(
                d.c.delivered_at.is_(None),
                d.c.next_attempt_at <= utc(self.clock.now()),
                webhooks.c.active.is_(True),
            )
            .order_by(d.c.next_attempt_at, d.c.id)
            .limit(CONCURRENCY)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            _Attempt(
                delivery_id=row.delivery_id,
                webhook_id=row.webhook_id,
                event_id=row.id,
                doc_id=row.doc_id,
                attempts=row.attempts,
                url=row.url,
                secret=row.secret,
                kind=row.kind,
                event=event_json(row),
            )
            for row in rows
        ]

    async def _deliver(self, attempt: _Attempt) -> _Outcome:
        body = json.dumps(
            {"webhook_id": attempt.webhook_id, "event": attempt.event},
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        timestamp = int(self.clock.now().timestamp())
        headers = {
            "Content-Type": "application/json",
            "X-Tandem-Event": attempt.kind,
            "X-Tandem-Event-Id": str(attempt.event_id),
            "X-Tandem-Delivery": str(attempt.delivery_id),
            "X-Tandem-Timestamp": str(timestamp),
            "X-Tandem-Signature": sign(attempt.secret, timestamp, body),
        }
        try:
            response = await self.client.post(
                attempt.url, content=body, headers=headers, timeout=self.timeout
            )
        except httpx.TimeoutException:
            return _Outcome(attempt, f"no answer within {self.timeout:g} s")
        except httpx.HTTPError as exc:
            return _Outcome(attempt, _short(f"{type(exc).__name__}: {exc}"))
        if 200 <= response.status_code < 300:
            return _Outcome(attempt, None)
        return _Outcome(attempt, _short(f"HTTP {response.status_code}"))

    async def _record(self, outcomes: Sequence[_Outcome]) -> None:
        now = utc(self.clock.now())
        cap = self.settings.webhook_backoff_max_seconds
        async with self.engine.begin() as conn:
            for outcome in outcomes:
                attempt = outcome.attempt
                values: dict[str, Any] = {"attempts": attempt.attempts + 1}
                if outcome.error is None:
                    # last_error stays: it tells why an acknowledged delivery took long.
                    values["delivered_at"] = now
                else:
                    wait = backoff_seconds(attempt.attempts + 1, cap)
                    values.update(
                        last_error=outcome.error, next_attempt_at=now + timedelta(seconds=wait)
                    )
                await conn.execute(
                    update(webhook_deliveries)
                    .where(webhook_deliveries.c.id == attempt.delivery_id)
                    .values(**values)
                )
        for outcome in outcomes:
            self._log(outcome)

    def _log(self, outcome: _Outcome) -> None:
        """Warn when a delivery first fails, say when it is acknowledged at last; the retries
        in between are debug only, so a receiver that is down for a day does not flood the
        log (its documents' oldest deliveries warn once each; later ones wait untried)."""
        attempt = outcome.attempt
        if outcome.error is None:
            if attempt.attempts:
                log.info(
                    "webhook %d: delivery %d (event %d) acknowledged after %d attempts",
                    attempt.webhook_id,
                    attempt.delivery_id,
                    attempt.event_id,
                    attempt.attempts + 1,
                )
        elif attempt.attempts:
            log.debug(
                "webhook %d: delivery %d failed again (attempt %d): %s",
                attempt.webhook_id,
                attempt.delivery_id,
                attempt.attempts + 1,
                outcome.error,
            )
        else:
            log.warning(
                "webhook %d (%s) failed delivery %d (event %d of document %s): %s; "
                "retrying with backoff until it is acknowledged",
                attempt.webhook_id,
                attempt.url,
                attempt.delivery_id,
                attempt.event_id,
                attempt.doc_id,
                outcome.error,
            )


def _short(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= ERROR_CHARS else message[: ERROR_CHARS - 1] + "…"


async def pending_counts(conn: AsyncConnection) -> dict[int, int]:
    """Unacknowledged deliveries per webhook id (webhooks with none are absent)."""
    rows = await conn.execute(
        select(webhook_deliveries.c.webhook_id, func.count())
        .where(webhook_deliveries.c.delivered_at.is_(None))
        .group_by(webhook_deliveries.c.webhook_id)
    )
    return {int(webhook_id): int(count) for webhook_id, count in rows}
