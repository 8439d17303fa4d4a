"""Outgoing webhooks: a real receiver on 127.0.0.1 that fails at first still gets every event,
once acknowledged, in order per document, signed; kinds and creation time choose what a
webhook gets; admins manage them over /api/webhooks on a real server."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import uvicorn
from conftest import ServerFactory, free_port
from helpers import api, assert_error
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from test_login import SECRET, seed_user, token_of

from server.api import webhooks as webhooks_api
from server.api.openapi import document
from server.auth import LOCAL_USER
from server.persistence import migrate
from server.persistence.sql import create_engine
from server.persistence.tables import events, feed_checkpoints, webhook_deliveries, webhooks
from server.settings import Settings
from server.sidecar.clock import ManualClock, SystemClock
from server.sidecar.webhooks import WebhookSender, sign

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SECRET_A = "secret-of-the-order-system"
SECRET_B = "secret-of-the-chat-bot-0123"


# -- a receiver -----------------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = self.payload["event"]
        return event


@dataclass
class Receiver:
    """An HTTP server that records every request and answers as `answer` says (default 200)."""

    port: int = field(default_factory=free_port)
    answer: Callable[[int, dict[str, Any]], int] = lambda n, payload: 200
    delay: Callable[[int], float] = lambda n: 0.0
    requests: list[Received] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        # Recorded as it arrives (what it will be answered decided now), so a slow answer
        # keeps its place.
        n = len(self.requests)
        status = self.answer(n, json.loads(body))
        self.requests.append(Received(dict(request.headers), body, status))
        wait = self.delay(n)
        if wait:
            await asyncio.sleep(wait)
        return Response(status_code=status)

    def acknowledged(self, webhook_id: int) -> list[dict[str, Any]]:
        """The events the receiver answered 2xx for this webhook, in arrival order."""
        return [
            r.event
            for r in self.requests
            if r.status == 200 and r.payload["webhook_id"] == webhook_id
        ]


@contextlib.asynccontextmanager
async def running(receiver: Receiver) -> AsyncIterator[Receiver]:
    app = Starlette(routes=[Route("/hook", receiver.handle, methods=["POST"])])
    config = uvicorn.Config(
        app, host="127.0.0.1", port=receiver.port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)
    try:
        yield receiver
    finally:
        server.should_exit = True
        await task


# -- the database ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def migrated(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
        yield engine
    finally:
        await engine.dispose()


async def add_webhook(
    engine: AsyncEngine,
    url: str,
    secret: str,
    created_at: datetime,
    kinds: list[str] | None = None,
) -> int:
    async with engine.begin() as conn:
        webhook_id: int = (
            await conn.execute(
                insert(webhooks)
                .values(
                    url=url,
                    secret=secret,
                    kinds=kinds,
                    active=True,
                    created_by="root",
                    created_at=created_at,
                )
                .returning(webhooks.c.id)
            )
        ).scalar_one()
    return webhook_id


async def add_event(
    engine: AsyncEngine, doc_id: str, kind: str, created_at: datetime, n: int
) -> int:
    async with engine.begin() as conn:
        event_id: int = (
            await conn.execute(
                insert(events)
                .values(
                    key=f"{doc_id}:{kind}:{n}",
                    kind=kind,
                    doc_id=doc_id,
                    task_id=f"t{n}",
                    message_id=None,
                    actor="王晓雯",
                    data={"n": n, "title": f"任务 {n}"},
                    created_at=created_at,
                )
                .returning(events.c.id)
            )
        ).scalar_one()
    return event_id


async def deliveries(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return list(
            (await conn.execute(select(webhook_deliveries).order_by(webhook_deliveries.c.id))).all()
        )


async def undelivered(engine: AsyncEngine) -> int:
    return sum(1 for row in await deliveries(engine) if row.delivered_at is None)


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def assert_signed(received: Received, secret: str) -> None:
    """The signature is the HMAC-SHA256 of "<timestamp>." and the exact body bytes."""
    timestamp = received.headers["x-tandem-timestamp"]
    expected = hmac.new(
        secret.encode(), timestamp.encode() + b"." + received.body, hashlib.sha256
    ).hexdigest()
    given = received.headers["x-tandem-signature"]
    assert given.startswith("sha256=")
    assert hmac.compare_digest(given, f"sha256={expected}")
    assert hmac.compare_digest(given, sign(secret, int(timestamp), received.body))
    # And a different secret does not verify.
    assert not hmac.compare_digest(given, sign(secret + "x", int(timestamp), received.body))
    assert received.headers["content-type"] == "application/json"
    assert received.headers["x-tandem-event"] == received.event["kind"]
    assert received.headers["x-tandem-event-id"] == str(received.event["id"])
    assert received.headers["x-tandem-delivery"].isdigit()


async def drain(sender: WebhookSender, engine: AsyncEngine, clock: ManualClock) -> int:
    """Step, moving the clock past every backoff, until nothing waits; returns the steps."""
    for steps in range(1, 200):
        await sender.step()
        if await undelivered(engine) == 0:
            return steps
        clock.advance(timedelta(seconds=10))
    raise AssertionError("deliveries still pending after 200 steps")


# -- delivery -------------------------------------------------------------------------------------

DOCS = ("board-orders", "board-hr", "chat-ops")
KIND_CYCLE = ("assigned", "status_changed", "message", "mentioned")


async def test_a_receiver_that_fails_three_times_gets_every_event_in_order(
    database_url: str,
) -> None:
    clock = ManualClock(START)
    async with (
        migrated(database_url) as engine,
        running(Receiver(answer=lambda n, payload: 500 if n < 3 else 200)) as receiver,
    ):
        early = await add_event(engine, "board-orders", "assigned", START - timedelta(hours=1), 0)
        order_system = await add_webhook(engine, receiver.url, SECRET_A, START)
        chat_bot = await add_webhook(
            engine, receiver.url, SECRET_B, START + timedelta(minutes=30), ["assigned", "message"]
        )
        created: dict[int, tuple[str, str, datetime]] = {}
        for n in range(1, 22):
            doc_id, kind = DOCS[n % 3], KIND_CYCLE[n % 4]
            at = START + timedelta(minutes=3 * n)
            created[await add_event(engine, doc_id, kind, at, n)] = (doc_id, kind, at)

        sender = WebhookSender(engine, Settings(), clock)
        try:
            first = await sender.step()
            # Every webhook's and document's oldest event at once, the first three refused.
            assert first == len(receiver.requests) == 6
            assert [r.status for r in receiver.requests[:3]] == [500, 500, 500]
            failed = [row for row in await deliveries(engine) if row.attempts == 1]
            assert len([row for row in failed if row.delivered_at is None]) == 3
            for row in failed:
                if row.delivered_at is None:
                    assert row.last_error == "HTTP 500"
                    wait = (aware(row.next_attempt_at) - START).total_seconds()
                    assert 0.8 <= wait <= 1.2  # 1 s +-20 %
            # Without the clock moving, the failed documents wait; the others go on.
            before = len(receiver.requests)
            await sender.step()
            retried = {r.event["id"] for r in receiver.requests[before:]} & {
                r.event["id"] for r in receiver.requests[:3]
            }
            assert retried == set()

            await drain(sender, engine, clock)
        finally:
            await sender.aclose()

        # Each request, failed or not, is signed with its webhook's secret.
        secrets = {order_system: SECRET_A, chat_bot: SECRET_B}
        for received in receiver.requests:
            assert_signed(received, secrets[received.payload["webhook_id"]])

        expected = {
            order_system: {i for i in created},  # not `early`: before the webhook existed
            chat_bot: {
                i
                for i, (_, kind, at) in created.items()
                if kind in ("assigned", "message") and at >= START + timedelta(minutes=30)
            },
        }
        assert early not in expected[order_system]
        assert 0 < len(expected[chat_bot]) < len(expected[order_system]) == 21
        for webhook_id, wanted in expected.items():
            acked = receiver.acknowledged(webhook_id)
            ids = [event["id"] for event in acked]
            assert Counter(ids).most_common(1)[0][1] == 1  # each acknowledged once
            assert set(ids) == wanted
            for doc_id in DOCS:
                in_doc = [event["id"] for event in acked if event["doc_id"] == doc_id]
                assert in_doc == sorted(in_doc), (webhook_id, doc_id, in_doc)
            for event in acked:
                doc_id, kind, at = created[event["id"]]
                assert event["doc_id"] == doc_id and event["kind"] == kind
                assert event["actor"] == "王晓雯" and event["data"]["title"].startswith("任务")
                assert event["created_at"] == at.isoformat().replace("+00:00", "Z")

        # The table agrees: one row per event and webhook, all acknowledged, every request
        # counted once as an attempt, the three failures remembered.
        rows = await deliveries(engine)
        assert len(rows) == sum(len(wanted) for wanted in expected.values())
        assert all(row.delivered_at is not None for row in rows)
        assert sum(row.attempts for row in rows) == len(receiver.requests)
        retried_rows = [row for row in rows if row.attempts > 1]
        assert sum(row.attempts - 1 for row in retried_rows) == 3
        assert all(row.last_error == "HTTP 500" for row in retried_rows)
        async with engine.connect() as conn:
            position = await conn.scalar(
                select(feed_checkpoints.c.position).where(feed_checkpoints.c.name == "webhooks")
            )
        assert position == max(created)

        # Nothing more happens: no event is sent twice once acknowledged.
        count = len(receiver.requests)
        clock.advance(timedelta(hours=1))
        assert await sender.step() == 0
        assert len(receiver.requests) == count


async def test_a_failing_document_holds_back_only_itself(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tandem.webhooks")
    clock = ManualClock(START)
    stuck_answers = lambda n, payload: 503 if payload["event"]["doc_id"] == "stuck" else 204  # noqa: E731
    async with migrated(sqlite_url) as engine, running(Receiver(answer=stuck_answers)) as receiver:
        webhook_id = await add_webhook(engine, receiver.url, SECRET_A, START)
        stuck, fine = [], []
        for n in range(10):
            at = START + timedelta(seconds=n)
            stuck.append(await add_event(engine, "stuck", "doc_changed", at, n))
            fine.append(await add_event(engine, "fine", "doc_changed", at, n))
        sender = WebhookSender(engine, Settings(webhook_backoff_max_seconds=4), clock)
        waits = []
        try:
            for _ in range(12):
                await sender.step()
                head = next(r for r in await deliveries(engine) if r.event_id == stuck[0])
                waits.append((aware(head.next_attempt_at) - clock.now()).total_seconds())
                clock.advance(timedelta(seconds=5))
        finally:
            await sender.aclose()

    # Every event of "fine" arrived in order; of "stuck" only its first, again and again.
    assert [r.event["id"] for r in receiver.requests if r.status == 204] == fine
    tried = [r.event["id"] for r in receiver.requests if r.event["doc_id"] == "stuck"]
    assert tried == [stuck[0]] * 12
    rows = {row.event_id: row for row in await deliveries(engine)}
    assert rows[stuck[0]].attempts == 12 and rows[stuck[0]].last_error == "HTTP 503"
    assert all(rows[i].attempts == 0 and rows[i].delivered_at is None for i in stuck[1:])
    # Backoff doubles from 1 s (+-20 %) up to the 4 s the settings allow.
    assert 0.8 <= waits[0] <= 1.2 and 1.6 <= waits[1] <= 2.4 and 3.2 <= waits[2] <= 4
    assert all(wait <= 4 for wait in waits)
    # One warning for the streak, not one per retry.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"webhook {webhook_id}" in warnings[0].getMessage()


async def test_refused_then_too_slow_then_acknowledged(sqlite_url: str) -> None:
    clock = ManualClock(START)
    receiver = Receiver(delay=lambda n: 1.0 if n == 0 else 0.0)
    async with migrated(sqlite_url) as engine:
        await add_webhook(engine, receiver.url, SECRET_A, START)
        first = await add_event(engine, "board", "assigned", START, 1)
        second = await add_event(engine, "board", "overdue", START, 2)
        sender = WebhookSender(engine, Settings(), clock, timeout=0.3)
        try:
            # Nobody listens yet.
            assert await sender.step() == 1
            (row, waiting) = await deliveries(engine)
            assert row.event_id == first and row.delivered_at is None
            assert row.last_error.startswith("ConnectError")
            async with running(receiver):
                clock.advance(timedelta(seconds=2))
                assert await sender.step() == 1  # the receiver takes 1 s: too slow
                (row, _) = await deliveries(engine)
                assert row.attempts == 2 and row.last_error == "no answer within 0.3 s"
                clock.advance(timedelta(seconds=3))
                await drain(sender, engine, clock)
        finally:
            await sender.aclose()
    assert [r.event["id"] for r in receiver.requests] == [first, first, second]
    assert receiver.requests[0].headers["x-tandem-delivery"] == str(row.id)
    assert receiver.requests[1].headers["x-tandem-delivery"] == str(row.id)


async def test_run_delivers_when_nudged(sqlite_url: str) -> None:
    """`run` with the system clock and a tiny backoff: events inserted while it runs are
    delivered, failures retried, without anyone calling `step`."""
    receiver = Receiver(answer=lambda n, payload: 500 if n < 3 else 200)
    async with migrated(sqlite_url) as engine, running(receiver):
        created_at = datetime.now(UTC)
        webhook_id = await add_webhook(engine, receiver.url, SECRET_A, created_at)
        sender = WebhookSender(engine, Settings(webhook_backoff_max_seconds=0.05), SystemClock())
        task = asyncio.create_task(sender.run())
        try:
            ids = []
            for n in range(6):
                ids.append(await add_event(engine, f"doc-{n % 2}", "message", created_at, n))
                sender.nudge()
            async with asyncio.timeout(15):
                while len(receiver.acknowledged(webhook_id)) < len(ids):
                    await asyncio.sleep(0.02)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert sorted(e["id"] for e in receiver.acknowledged(webhook_id)) == ids
    assert sender._client is None  # run closed the client it made


# -- the REST API ---------------------------------------------------------------------------------


def test_openapi_describes_the_webhook_routes() -> None:
    paths = document()["paths"]
    for route in webhooks_api.routes:
        path = "/api" + route.path.replace(":int", "")
        for method in (route.methods or set()) - {"HEAD"}:
            assert paths[path][method.lower()]["tags"] == ["webhooks"]
    created = paths["/api/webhooks"]["post"]["responses"]["201"]["content"]["application/json"]
    assert created["schema"] == {"$ref": "#/components/schemas/WebhookCreated"}


async def test_admins_manage_webhooks(database_url: str, make_server: ServerFactory) -> None:
    await seed_user(database_url, "root", "root password", role="admin")
    await seed_user(database_url, "mia", "mia password")
    server = await make_server(database_url, TANDEM_SECRET=SECRET)
    root = await token_of(server, "root", "root password")
    mia = await token_of(server, "mia", "mia password")
    nobody = f"http://127.0.0.1:{free_port()}/in?x=1"  # nothing listens there
    async with running(Receiver()) as receiver, api(server, root) as http:
        answer = await http.post("/webhooks", json={"url": receiver.url, "kinds": ["message"]})
        assert answer.status_code == 201, answer.text
        hook = answer.json()
        assert hook["url"] == receiver.url and hook["kinds"] == ["message"]
        assert hook["active"] is True and hook["created_by"] == "root"
        assert len(hook["secret"]) >= 40  # generated: 32 random bytes
        assert answer.headers["location"] == f"/api/webhooks/{hook['id']}"
        other = await http.post(
            "/webhooks",
            json={"url": nobody, "secret": SECRET_B},
        )
        assert other.status_code == 201 and other.json()["secret"] == SECRET_B
        assert other.json()["kinds"] is None

        listed = (await http.get("/webhooks")).json()["webhooks"]
        assert [w["id"] for w in listed] == [hook["id"], other.json()["id"]]
        assert all("secret" not in w and w["pending"] == 0 for w in listed)

        for body, problem in (
            ({"url": "ftp://files.example.com/in"}, "url"),
            ({"url": "not a url"}, "url"),
            ({"url": "https:///no-host"}, "url"),
            ({"url": receiver.url, "kinds": ["nope"]}, "kinds.0"),
            ({"url": receiver.url, "kinds": []}, "kinds"),
            ({"url": receiver.url, "secret": "short"}, "secret"),
            ({"url": receiver.url, "colour": "red"}, "colour"),
        ):
            assert_error(await http.post("/webhooks", json=body), 422, problem)
        assert_error(await http.delete("/webhooks/999"), 404)
        assert_error(await http.get("/webhooks/999/deliveries"), 404)
        assert_error(await http.get(f"/webhooks/{hook['id']}/deliveries?limit=0"), 422, "limit")

        # A member may neither see nor change them.
        async with api(server, mia) as member:
            assert_error(await member.get("/webhooks"), 403)
            assert_error(await member.post("/webhooks", json={"url": receiver.url}), 403)
            assert_error(await member.delete(f"/webhooks/{hook['id']}"), 403)
            assert_error(await member.get(f"/webhooks/{hook['id']}/deliveries"), 403)
        async with api(server) as anonymous:
            assert_error(await anonymous.get("/webhooks"), 401)

        # The webhook made over the API gets events signed with the secret it showed.
        async with migrated(database_url) as engine:
            now = datetime.now(UTC) + timedelta(seconds=1)
            message = await add_event(engine, "chat", "message", now, 1)
            await add_event(engine, "chat", "assigned", now, 2)  # not a kind it wants
            sender = WebhookSender(engine, Settings(), SystemClock())
            try:
                await sender.enqueue()
                listed = (await http.get("/webhooks")).json()["webhooks"]
                assert [w["pending"] for w in listed] == [1, 2]
                await sender.step()
            finally:
                await sender.aclose()
        assert [r.event["id"] for r in receiver.requests] == [message]
        assert_signed(receiver.requests[0], hook["secret"])
        shown = (await http.get(f"/webhooks/{hook['id']}/deliveries")).json()["deliveries"]
        assert len(shown) == 1
        assert shown[0]["event_id"] == message and shown[0]["kind"] == "message"
        assert shown[0]["attempts"] == 1 and shown[0]["delivered_at"] is not None
        assert shown[0]["last_error"] is None and shown[0]["next_attempt_at"] is None
        pending = await http.get(f"/webhooks/{other.json()['id']}/deliveries?pending=true")
        shown = pending.json()["deliveries"]
        # Newest first: the document's first event was refused, the second waits its turn.
        assert [d["attempts"] for d in shown] == [0, 1]
        assert shown[1]["last_error"].startswith("ConnectError") and shown[0]["last_error"] is None
        assert all(d["delivered_at"] is None and d["next_attempt_at"] for d in shown)

        # Deleting one takes its pending deliveries with it.
        assert (await http.delete(f"/webhooks/{other.json()['id']}")).status_code == 204
        listed = (await http.get("/webhooks")).json()["webhooks"]
        assert [(w["id"], w["pending"]) for w in listed] == [(hook["id"], 0)]
        assert_error(await http.delete(f"/webhooks/{other.json()['id']}"), 404)


async def test_without_sign_in_the_local_user_manages_webhooks(
    make_server: ServerFactory,
) -> None:
    server = await make_server()
    async with api(server) as http:
        answer = await http.post("/webhooks", json={"url": "http://127.0.0.1:9/hook"})
        assert answer.status_code == 201, answer.text
        assert answer.json()["created_by"] == LOCAL_USER
        listed = (await http.get("/webhooks")).json()["webhooks"]
        assert [w["url"] for w in listed] == ["http://127.0.0.1:9/hook"]
        assert (await http.delete(f"/webhooks/{answer.json()['id']}")).status_code == 204
        assert (await http.get("/webhooks")).json() == {"webhooks": []}
