"""Notifications by e-mail, through the SMTP server the operator configured (TANDEM_SMTP_*).

Each person chooses in their preferences (server/api/preferences.py): no e-mail, one
message per notification (`each`), or an hourly `digest`. The sender follows the
notifications table by id with the checkpoint "email" in feed_checkpoints:

- `each`: a message per notification; the checkpoint moves past it once the SMTP server
  accepted the message.
- `digest`: the notification only joins the person's pending digest, which is everything
  of theirs between their own checkpoint "email:digest:<user>" and "email". The digest goes
  out when its oldest notification is an hour old, and their checkpoint then moves past
  what it held. Someone who leaves `digest` for `each` gets what was pending at once; for
  `off`, it is dropped.
- `off`, a disabled user or one without an address: nothing.

What is pending is all in the database, so a restart neither loses nor repeats a digest.
Delivery is at least once: a crash after the server accepted a message and before the
checkpoint moved sends it again, with the same Message-ID (made from the notification ids)
so a receiver can drop the copy. A failing SMTP server is retried every pass, from the
notification where it stopped; mail waits, nothing is lost, the sender never stops.

A sender started for the first time (no "email" checkpoint) begins at the newest
notification: turning e-mail on does not mail out the past.

What the messages say, and how they are put together, is in server/sidecar/mail_text.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import parseaddr
from enum import Enum
from typing import Any

import aiosmtplib
from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.notifications import Preferences, load_preferences
from server.persistence.tables import (
    events,
    feed_checkpoints,
    notification_prefs,
    notifications,
    users,
)
from server.settings import Settings
from server.sidecar.clock import Clock, SystemClock
from server.sidecar.mail_text import (
    Item,
    Person,
    digest_message,
    display_name,
    mail_address,
    single_message,
    time_zone,
)

log = logging.getLogger("tandem.sidecar.email")

CHECKPOINT = "email"
DIGEST_PREFIX = "email:digest:"
# feed_checkpoints.name holds 64 characters; a longer user name is kept by its hash.
NAME_LENGTH = 64
HASHED = re.compile(re.escape(DIGEST_PREFIX) + "#[0-9a-f]{40}")
DIGEST_EVERY = timedelta(hours=1)
# Notifications read per pass; a full batch makes `run` go on at once.
BATCH = 200
# Notifications listed in one digest; more wait for the next message (due at once).
DIGEST_MAX = 200
POLL_SECONDS = 1.0
# While sending keeps failing, say so this often (not at every pass).
WARN_EVERY = timedelta(minutes=5)
SMTP_TIMEOUT = 30.0


class _Outcome(Enum):
    SENT = "sent"
    SKIPPED = "skipped"  # not sent and never will be (refused for good, or nothing to say)
    FAILED = "failed"  # try again next pass


def digest_checkpoint(user: str) -> str:
    """The name of `user`'s digest checkpoint in feed_checkpoints."""
    name = DIGEST_PREFIX + user
    if len(name) <= NAME_LENGTH:
        return name
    return DIGEST_PREFIX + "#" + hashlib.sha256(user.encode()).hexdigest()[:40]


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _upsert(conn: AsyncConnection) -> Any:
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(feed_checkpoints)


class EmailSender:
    """Sends notifications by e-mail; `run` is the sidecar's task, `step` one pass."""

    def __init__(self, engine: AsyncEngine, settings: Settings, clock: Clock | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.enabled = bool(settings.smtp_host)
        self._wake = asyncio.Event()
        self._more = False
        self._failing = False
        self._warned_at: datetime | None = None
        sender = parseaddr(settings.smtp_from)[1]
        self._sender = sender or settings.smtp_from
        self._domain = sender.rpartition("@")[2] or "localhost"
        self._zone: tzinfo = time_zone(settings.timezone)

    def nudge(self) -> None:
        """New notifications: look now instead of at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Pass after pass until cancelled; returns at once when no SMTP server is set."""
        if not self.enabled:
            return
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database away, or a bug: log, and try again later
                self._trouble("e-mail pass failed; trying again", exc_info=True)
                self._more = False
            if self._more:
                await asyncio.sleep(0)  # a full batch: go on, but let others run
                continue
            await self._pause(POLL_SECONDS)

    async def _pause(self, seconds: float) -> None:
        if not self._wake.is_set():
            woken = asyncio.ensure_future(self._wake.wait())
            slept = asyncio.ensure_future(self.clock.sleep(seconds))
            try:
                await asyncio.wait({woken, slept}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (woken, slept):
                    task.cancel()
                await asyncio.gather(woken, slept, return_exceptions=True)
        self._wake.clear()

    async def step(self) -> int:
        """One pass: due digests, then new notifications. Returns the messages the SMTP
        server accepted; stops at the first failure (the rest waits for the next pass)."""
        self._more = False
        if not self.enabled:
            return 0
        async with self.engine.connect() as conn:
            position = await self._position(conn)
        if position is None:
            await self._start()
            return 0
        async with self.engine.connect() as conn:
            digests = await self._digests(conn)
            batch = await self._items(
                conn, notifications.c.id > position, limit=BATCH, order=notifications.c.id
            )
            names = {*digests, *(item.user_name for item in batch)}
            # One snapshot of everyone's preferences for the whole pass, so a notification
            # is either in a digest or mailed on its own, never both.
            prefs = await load_preferences(conn, names)
            people = await self._people(conn, names | {i.actor for i in batch if i.actor})
            oldest = await self._oldest_pending(conn, digests, position)
        sent = 0
        # Digests first: what they hold ends at `position`, before this pass moves it.
        for user, since in sorted(digests.items()):
            mode = prefs[user].email
            person = people.get(user)
            pending = oldest.get(user)
            address = person.address if person is not None else None
            if mode == "digest" and (
                pending is None or address is None or pending + DIGEST_EVERY > self.clock.now()
            ):
                continue
            if mode != "digest" and (pending is None or address is None or mode == "off"):
                await self._drop_digest(user)
                continue
            assert person is not None and address is not None
            outcome, upto = await self._send_digest(user, address, prefs[user], since, position)
            if outcome is _Outcome.FAILED:
                return sent
            sent += outcome is _Outcome.SENT
            if mode == "digest":
                await self._save({digest_checkpoint(user): upto})
            elif upto >= position:  # everything pending went out: back to `each`
                await self._drop_digest(user)
            else:
                # More than one message's worth was pending: send the rest before any
                # new notification, or one could go out on its own and in the digest.
                await self._save({digest_checkpoint(user): upto})
                self._more = True
                return sent
        # New notifications.
        handled = position
        started: dict[str, int] = {}  # digests begun in this pass, at their first item - 1
        for item in batch:
            want = prefs[item.user_name]
            person = people.get(item.user_name)
            address = person.address if person is not None else None
            if person is None or address is None or not want.wants(item.kind, item.doc_id):
                handled = item.id
            elif want.email == "digest":
                if item.user_name not in digests and item.user_name not in started:
                    started[item.user_name] = item.id - 1
                handled = item.id
            elif want.email == "each":
                actor = display_name(people, item.actor)
                message = single_message(
                    item,
                    address,
                    actor,
                    smtp_from=self.settings.smtp_from,
                    domain=self._domain,
                    zone=self._zone,
                    now=self.clock.now(),
                )
                outcome = await self._send(message)
                if outcome is _Outcome.FAILED:
                    break
                sent += outcome is _Outcome.SENT
                handled = item.id
                await self._save(self._checkpoints(handled, started))
                started = {}
            else:
                handled = item.id
        if handled != position or started:
            await self._save(self._checkpoints(handled, started))
        self._more = len(batch) == BATCH and handled == batch[-1].id
        return sent

    # --- reading ---------------------------------------------------------------------------

    async def _position(self, conn: AsyncConnection) -> int | None:
        value = (
            await conn.execute(
                select(feed_checkpoints.c.position).where(feed_checkpoints.c.name == CHECKPOINT)
            )
        ).scalar_one_or_none()
        return None if value is None else int(value)

    async def _start(self) -> None:
        async with self.engine.connect() as conn:
            newest = (await conn.execute(select(func.max(notifications.c.id)))).scalar_one_or_none()
        async with self.engine.begin() as writing:
            stmt = _upsert(writing).values(
                name=CHECKPOINT, position=int(newest or 0), updated_at=self.clock.now()
            )
            # Another sender may have started first; its position stands.
            await writing.execute(stmt.on_conflict_do_nothing())
        log.info("e-mail notifications start after notification %s", int(newest or 0))

    async def _digests(self, conn: AsyncConnection) -> dict[str, int]:
        """Each digest user and their checkpoint."""
        rows = (
            await conn.execute(
                select(feed_checkpoints.c.name, feed_checkpoints.c.position).where(
                    feed_checkpoints.c.name.startswith(DIGEST_PREFIX, autoescape=True)
                )
            )
        ).all()
        found: dict[str, int] = {}
        hashed: dict[str, int] = {}
        for name, pos in rows:
            if HASHED.fullmatch(name):
                hashed[name] = int(pos)
            else:
                found[name.removeprefix(DIGEST_PREFIX)] = int(pos)
        if hashed:
            # Names too long for their checkpoint are found by hashing the long names of
            # people with preferences (only they can have chosen a digest).
            long_names = await conn.execute(
                select(notification_prefs.c.user_name).where(
                    func.length(notification_prefs.c.user_name) > NAME_LENGTH - len(DIGEST_PREFIX)
                )
            )
            for (user,) in long_names:
                key = digest_checkpoint(user)
                if key in hashed:
                    found[user] = hashed.pop(key)
            for name, pos in hashed.items():  # short names that look like a hash
                found[name.removeprefix(DIGEST_PREFIX)] = pos
        return found

    async def _oldest_pending(
        self, conn: AsyncConnection, digests: Mapping[str, int], position: int
    ) -> dict[str, datetime]:
        """When each digest user's oldest pending notification was made."""
        found: dict[str, datetime] = {}
        users_ = sorted(digests.items())
        for start in range(0, len(users_), 100):
            chunk = users_[start : start + 100]
            rows = await conn.execute(
                select(notifications.c.user_name, func.min(notifications.c.created_at))
                .where(
                    notifications.c.id <= position,
                    or_(
                        *(
                            and_(notifications.c.user_name == user, notifications.c.id > since)
                            for user, since in chunk
                        )
                    ),
                )
                .group_by(notifications.c.user_name)
            )
            for user, moment in rows:
                if moment is not None:
                    found[user] = _utc(moment)
        return found

    async def _items(
        self, conn: AsyncConnection, *where: Any, limit: int, order: Any
    ) -> list[Item]:
        rows = await conn.execute(
            select(
                notifications.c.id,
                notifications.c.user_name,
                notifications.c.kind,
                notifications.c.doc_id,
                notifications.c.created_at,
                events.c.task_id,
                events.c.message_id,
                events.c.actor,
                events.c.data,
            )
            .join(events, events.c.id == notifications.c.event_id)
            .where(*where)
            .order_by(order)
            .limit(limit)
        )
        return [
            Item(
                id=int(row.id),
                user_name=row.user_name,
                kind=row.kind,
                doc_id=row.doc_id,
                created_at=_utc(row.created_at),
                task_id=row.task_id,
                message_id=row.message_id,
                actor=row.actor,
                data=row.data if isinstance(row.data, Mapping) else {},
            )
            for row in rows
        ]

    async def _people(self, conn: AsyncConnection, names: Iterable[str]) -> dict[str, Person]:
        wanted = sorted(set(names))
        found: dict[str, Person] = {}
        for start in range(0, len(wanted), 500):
            rows = await conn.execute(
                select(users.c.name, users.c.display_name, users.c.email, users.c.active).where(
                    users.c.name.in_(wanted[start : start + 500])
                )
            )
            for row in rows:
                display = row.display_name or row.name
                address = mail_address(row.name, display, row.email) if row.active else None
                found[row.name] = Person(display=display, address=address)
        return found

    # --- writing ---------------------------------------------------------------------------

    @staticmethod
    def _checkpoints(position: int, started: Mapping[str, int]) -> dict[str, int]:
        return {CHECKPOINT: position, **{digest_checkpoint(u): p for u, p in started.items()}}

    async def _save(self, positions: Mapping[str, int]) -> None:
        """Set these checkpoints, in one transaction (a digest begun and the main
        checkpoint moving past its first notification go together)."""
        async with self.engine.begin() as conn:
            for name, position in sorted(positions.items()):
                stmt = _upsert(conn).values(
                    name=name, position=position, updated_at=self.clock.now()
                )
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[feed_checkpoints.c.name],
                        set_={
                            "position": stmt.excluded.position,
                            "updated_at": stmt.excluded.updated_at,
                        },
                    )
                )

    async def _drop_digest(self, user: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(feed_checkpoints).where(feed_checkpoints.c.name == digest_checkpoint(user))
            )

    # --- sending ---------------------------------------------------------------------------

    async def _send_digest(
        self, user: str, address: Address, prefs: Preferences, since: int, position: int
    ) -> tuple[_Outcome, int]:
        """Send `user`'s pending notifications (those they still want) as one message.
        Returns the outcome and the last notification id it covered."""
        async with self.engine.connect() as conn:
            items = await self._items(
                conn,
                notifications.c.user_name == user,
                notifications.c.id > since,
                notifications.c.id <= position,
                limit=DIGEST_MAX,
                order=notifications.c.id,
            )
            actors = await self._people(conn, {i.actor for i in items if i.actor})
        if not items:
            return _Outcome.SKIPPED, since
        upto = items[-1].id
        wanted = [i for i in items if prefs.wants(i.kind, i.doc_id)]
        if not wanted:
            return _Outcome.SKIPPED, upto  # nothing left to tell: move on without a message
        message = digest_message(
            [(item, display_name(actors, item.actor)) for item in wanted],
            address,
            smtp_from=self.settings.smtp_from,
            domain=self._domain,
            zone=self._zone,
            now=self.clock.now(),
        )
        return await self._send(message), upto

    async def _send(self, message: EmailMessage) -> _Outcome:
        settings = self.settings
        implicit_tls = settings.smtp_port == 465  # SMTPS: TLS from the first byte
        recipient = str(message["To"].addresses[0].addr_spec)
        try:
            await aiosmtplib.send(
                message,
                sender=self._sender,
                recipients=[recipient],
                hostname=settings.smtp_host,
                port=settings.smtp_port,
                username=settings.smtp_username,
                password=settings.smtp_password,
                use_tls=implicit_tls,
                start_tls=settings.smtp_starttls and not implicit_tls,
                timeout=SMTP_TIMEOUT,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            if all(r.code >= 500 for r in exc.recipients):
                log.warning("the SMTP server refuses %s for good (%s); not sent", recipient, exc)
                return _Outcome.SKIPPED
            self._trouble(f"the SMTP server refuses {recipient} for now ({exc}); trying again")
            return _Outcome.FAILED
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self._trouble(
                f"could not send e-mail through {settings.smtp_host}:{settings.smtp_port} "
                f"({type(exc).__name__}: {exc}); trying again"
            )
            return _Outcome.FAILED
        if self._failing:
            log.info("e-mail goes out again through %s", settings.smtp_host)
            self._failing = False
            self._warned_at = None
        return _Outcome.SENT

    def _trouble(self, message: str, *, exc_info: bool = False) -> None:
        """A warning when trouble starts, then one every WARN_EVERY while it lasts."""
        self._failing = True
        now = self.clock.now()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
            log.warning("%s", message, exc_info=exc_info)
            self._warned_at = now
