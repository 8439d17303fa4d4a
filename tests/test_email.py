"""E-mail notifications (server/sidecar/email.py) through a real SMTP server.

An aiosmtpd sink on 127.0.0.1 collects what the sender hands it; the database is migrated
SQLite and PostgreSQL with users, events and notifications written as the sidecar writes
them. The clock is manual, so the hour of a digest passes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from conftest import free_port
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.notifications import Preferences
from server.persistence import migrate
from server.persistence.sql import create_engine
from server.persistence.tables import (
    events,
    feed_checkpoints,
    notification_prefs,
    notifications,
    users,
)
from server.settings import Settings
from server.sidecar.clock import ManualClock
from server.sidecar.email import EmailSender, digest_checkpoint

START = datetime(2026, 11, 11, 9, 0, tzinfo=UTC)
WANG = "王晓雯"  # each
LI = "李俊杰"  # the actor; digest
ZHOU = "周婷"  # off
LIU = "刘洋"  # each, but no address


class Sink:
    """An SMTP server that keeps every message it accepts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[tuple[list[str], EmailMessage]] = []
        self.controller: Controller | None = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        message = BytesParser(policy=policy.default).parsebytes(raw)
        assert isinstance(message, EmailMessage)
        self.received.append((list(envelope.rcpt_tos), message))
        return "250 OK"

    def start(self) -> None:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    async def stop(self) -> None:
        """Stop listening. In a thread: stopping waits for open connections to close, and a
        client on this event loop may still be saying goodbye."""
        if self.controller is not None:
            await asyncio.to_thread(self.controller.stop)
            self.controller = None

    def to(self, address: str) -> list[EmailMessage]:
        return [m for rcpt, m in self.received if rcpt == [address]]


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    server = Sink()
    server.start()
    yield server
    await server.stop()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await migrate.upgrade(engine)
    async with engine.begin() as conn:
        await conn.execute(
            insert(users),
            [
                {"name": WANG, "display_name": "王晓雯", "email": "wang@example.org"},
                {"name": LI, "display_name": "李俊杰 (市场部)", "email": "li@example.org"},
                {"name": ZHOU, "display_name": None, "email": "zhou@example.org"},
                {"name": LIU, "display_name": None, "email": None},
            ],
        )
    yield engine
    await engine.dispose()


def settings(sink: Sink) -> Settings:
    return Settings(
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        smtp_from="Tandem 通知 <tandem@example.org>",
        timezone="Asia/Shanghai",
    )


_keys = itertools.count(1)


async def notify(
    engine: AsyncEngine,
    user: str,
    kind: str,
    at: datetime,
    *,
    actor: str | None = LI,
    data: dict[str, Any] | None = None,
    doc_id: str = "d11-board",
    task_id: str | None = "t1",
) -> int:
    """An event and its notification for `user`, as the sidecar writes them."""
    async with engine.begin() as conn:
        event = await conn.execute(
            insert(events).values(
                key=f"test:{next(_keys)}",
                kind=kind,
                doc_id=doc_id,
                task_id=task_id,
                actor=actor,
                data=data if data is not None else {},
                created_at=at,
            )
        )
        row = await conn.execute(
            insert(notifications).values(
                event_id=event.inserted_primary_key[0],
                user_name=user,
                kind=kind,
                doc_id=doc_id,
                created_at=at,
            )
        )
        return int(row.inserted_primary_key[0])


async def prefer(engine: AsyncEngine, user: str, email: str, **other: Any) -> None:
    async with engine.begin() as conn:
        mine = notification_prefs.c.user_name == user
        await conn.execute(notification_prefs.delete().where(mine))
        await conn.execute(
            insert(notification_prefs).values(
                user_name=user,
                data=Preferences(email=email, **other).to_json(),
                updated_at=START,
            )
        )


async def started(engine: AsyncEngine, sink: Sink, clock: ManualClock) -> EmailSender:
    """A sender that has taken its first step (which only marks where it starts)."""
    sender = EmailSender(engine, settings(sink), clock)
    assert await sender.step() == 0
    return sender


async def test_each_mode_sends_one_message_per_notification_once(
    engine: AsyncEngine, sink: Sink
) -> None:
    await prefer(engine, WANG, "each")
    await prefer(engine, ZHOU, "off")
    await prefer(engine, LIU, "each")
    clock = ManualClock(START)
    # Notifications from before e-mail was turned on are not mailed.
    await notify(engine, WANG, "assigned", START - timedelta(days=3), data={"title": "旧的"})
    sender = await started(engine, sink, clock)

    first = await notify(
        engine,
        WANG,
        "assigned",
        START,
        data={
            "title": "海报设计\n双十一",
            "summary": "截止 11月10日，请先看品牌指南。",
            "url": "https://tandem.example/docs/d11-board#t1",
        },
    )
    await notify(engine, ZHOU, "assigned", START, data={"title": "不该发"})
    await notify(engine, LIU, "assigned", START, data={"title": "没有地址"})
    second = await notify(
        engine, WANG, "message", START, data={"title": "活动讨论"}, doc_id="d11-chat", task_id=None
    )
    third = await notify(engine, WANG, "overdue", START, actor=None, data={"due": "2026-11-10"})
    assert await sender.step() == 3
    assert await sender.step() == 0

    assert [rcpt for rcpt, _ in sink.received] == [["wang@example.org"]] * 3
    assigned, message, overdue = sink.to("wang@example.org")
    assert assigned["Subject"] == "[Tandem] 李俊杰 (市场部) assigned you 海报设计 双十一"
    assert assigned["From"].addresses[0].display_name == "Tandem 通知"
    assert assigned["To"].addresses[0].display_name == "王晓雯"
    body = assigned.get_content()
    assert "截止 11月10日，请先看品牌指南。" in body
    assert "https://tandem.example/docs/d11-board#t1" in body
    assert "2026-11-11 17:00" in body  # Asia/Shanghai
    assert assigned.get_content_charset() == "utf-8"
    assert message["Subject"] == "[Tandem] 李俊杰 (市场部) wrote in 活动讨论"
    assert overdue["Subject"] == "[Tandem] t1 is overdue (2026-11-10)"
    ids = [m["Message-ID"] for m in (assigned, message, overdue)]
    assert ids == [f"<tandem.n{n}@example.org>" for n in (first, second, third)]
    assert sink.to("zhou@example.org") == []

    # Another sender on the same database (a restart) sends none of it again.
    again = EmailSender(engine, settings(sink), ManualClock(START))
    assert await again.step() == 0
    assert len(sink.received) == 3


async def test_a_digest_goes_out_once_an_hour_after_its_oldest_notification(
    engine: AsyncEngine, sink: Sink
) -> None:
    await prefer(engine, LI, "digest")
    clock = ManualClock(START)
    sender = await started(engine, sink, clock)
    titles = ["海报设计", "预算表", "媒体名单"]
    for minutes, title in zip((0, 10, 20), titles, strict=True):
        await notify(
            engine,
            LI,
            "assigned",
            START + timedelta(minutes=minutes),
            actor=WANG,
            data={"title": title, "url": f"https://tandem.example/{minutes}"},
        )
    clock.advance(timedelta(minutes=30))
    assert await sender.step() == 0
    clock.advance(timedelta(minutes=29))  # 59 minutes after the oldest
    assert await sender.step() == 0
    assert sink.received == []

    # A restart while the digest is pending: the new sender knows it from the database.
    sender = EmailSender(engine, settings(sink), clock)
    clock.advance(timedelta(minutes=1, seconds=1))
    assert await sender.step() == 1
    assert await sender.step() == 0
    (digest,) = sink.to("li@example.org")
    assert digest["Subject"] == "[Tandem] 3 notifications"
    body = digest.get_content()
    for title in titles:
        assert f"王晓雯 assigned you {title}" in body
    assert "https://tandem.example/20" in body
    assert digest["Message-ID"].startswith("<tandem.digest.n")

    # Later notifications make the next digest, an hour after the first of them.
    await notify(engine, LI, "mentioned", clock.now(), actor=ZHOU, data={"title": "讨论"})
    assert await sender.step() == 0
    clock.advance(timedelta(minutes=61))
    restarted = EmailSender(engine, settings(sink), clock)
    assert await restarted.step() == 1
    assert await restarted.step() == 0
    assert await sender.step() == 0
    first, second = sink.to("li@example.org")
    assert second["Subject"] == "[Tandem] 1 notification"
    assert "周婷 mentioned you in 讨论" in second.get_content()
    assert "海报设计" not in second.get_content()


async def test_leaving_the_digest_sends_what_is_pending_then_each_on_its_own(
    engine: AsyncEngine, sink: Sink
) -> None:
    await prefer(engine, LI, "digest")
    clock = ManualClock(START)
    sender = await started(engine, sink, clock)
    await notify(engine, LI, "assigned", START, data={"title": "攒着的"})
    assert await sender.step() == 0
    await prefer(engine, LI, "each")
    await notify(engine, LI, "assigned", START, data={"title": "单独的"})
    assert await sender.step() == 2
    pending, single = sink.to("li@example.org")
    assert pending["Subject"] == "[Tandem] 1 notification" and "攒着的" in pending.get_content()
    assert single["Subject"].endswith("assigned you 单独的")
    assert "攒着的" not in single.get_content()
    async with engine.connect() as conn:
        names = (await conn.execute(select(feed_checkpoints.c.name))).scalars().all()
    assert digest_checkpoint(LI) not in names
    assert await EmailSender(engine, settings(sink), clock).step() == 0
    assert len(sink.received) == 2


async def test_a_server_that_is_down_delays_mail_without_losing_it(
    engine: AsyncEngine, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tandem.sidecar.email")
    await prefer(engine, WANG, "each")
    await prefer(engine, LI, "digest")
    clock = ManualClock(START)
    sender = await started(engine, sink, clock)
    await sink.stop()
    await notify(engine, WANG, "assigned", START, data={"title": "一"})
    await notify(engine, LI, "assigned", START, data={"title": "二"})
    await notify(
        engine,
        WANG,
        "status_changed",
        START,
        data={"title": "一", "from_status": "todo", "to_status": "done"},
    )
    assert await sender.step() == 0  # refused connection: logged, nothing moves
    assert await sender.step() == 0
    clock.advance(timedelta(hours=2))
    assert await sender.step() == 0
    assert sink.received == []
    # Said when it started and again hours later, not at every pass.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("could not send e-mail through 127.0.0.1" in r.getMessage() for r in warnings)

    sink.start()  # the same address again
    sent = await sender.step()
    sent += await sender.step()
    assert sent == 3
    assert any("e-mail goes out again" in r.getMessage() for r in caplog.records)
    subjects = sorted(m["Subject"] for _, m in sink.received)
    assert subjects == [
        "[Tandem] 1 notification",
        "[Tandem] 李俊杰 (市场部) assigned you 一",
        "[Tandem] 李俊杰 (市场部) moved 一 to done",
    ]
    assert await EmailSender(engine, settings(sink), clock).step() == 0
    assert len(sink.received) == 3


async def test_without_an_smtp_host_the_sender_does_nothing(engine: AsyncEngine) -> None:
    sender = EmailSender(engine, Settings(smtp_host=None), ManualClock(START))
    await sender.run()  # returns at once
    assert await sender.step() == 0
    async with engine.connect() as conn:
        assert (await conn.execute(select(feed_checkpoints))).all() == []


async def test_run_sends_when_nudged_and_stops_when_cancelled(
    engine: AsyncEngine, sink: Sink
) -> None:
    await prefer(engine, WANG, "each")
    sender = await started(engine, sink, ManualClock(START))
    task = asyncio.create_task(sender.run())
    try:
        await notify(engine, WANG, "doc_changed", START, data={"title": "策划案"})
        sender.nudge()
        async with asyncio.timeout(10):
            while not sink.received:
                await asyncio.sleep(0.02)
        assert sink.received[0][1]["Subject"] == "[Tandem] 李俊杰 (市场部) edited 策划案"
        await sink.stop()  # a failing server does not end the loop
        await notify(engine, WANG, "file_changed", START, data={"title": "海报.psd"})
        sender.nudge()
        await asyncio.sleep(0.5)
        assert not task.done()
        sink.start()
        async with asyncio.timeout(10):
            while len(sink.received) < 2:
                await asyncio.sleep(0.02)
        assert sink.received[1][1]["Subject"].endswith("uploaded a new version of 海报.psd")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert task.cancelled()


async def test_a_digest_for_a_name_longer_than_a_checkpoint_name(
    engine: AsyncEngine, sink: Sink
) -> None:
    long_name = "市场部" * 20  # 60 characters; "email:digest:" and it would not fit in 64
    async with engine.begin() as conn:
        await conn.execute(insert(users).values(name=long_name, email="long@example.org"))
    await prefer(engine, long_name, "digest")
    await prefer(engine, LI, "digest")
    clock = ManualClock(START)
    sender = await started(engine, sink, clock)
    await notify(engine, long_name, "assigned", START, data={"title": "长名字"})
    await notify(engine, LI, "assigned", START, data={"title": "短名字"})
    assert await sender.step() == 0
    async with engine.connect() as conn:
        names = (await conn.execute(select(feed_checkpoints.c.name))).scalars().all()
    assert len(digest_checkpoint(long_name)) <= 64 and digest_checkpoint(long_name) in names
    clock.advance(timedelta(hours=1))
    assert await EmailSender(engine, settings(sink), clock).step() == 2
    assert await EmailSender(engine, settings(sink), clock).step() == 0
    (digest,) = sink.to("long@example.org")
    assert "长名字" in digest.get_content() and "短名字" not in digest.get_content()
    assert len(sink.to("li@example.org")) == 1
