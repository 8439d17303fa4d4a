"""Access rules, share links, live revocation and presence identity, end to end.

The demo workspace gives three departments: marketing (市场部) writes the campaign plan
(`d11-plan`, in its folder), customer service (客服部) and operations read it through a grant
on that folder, and the board and discussions sit in the shared campaign folder that nobody
claims. Each test talks to a real server over REST and real WebSockets.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from conftest import ServerFactory, ServerProcess
from helpers import api
from pycrdt import Doc, Text
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.auth import issue_token
from shared.protocol import (
    MSG_AWARENESS,
    MSG_SYNC,
    SYNC_STEP2,
    AwarenessEntry,
    decode_awareness_update,
    decode_message,
    encode_awareness,
    encode_awareness_update,
    encode_sync_step1,
    encode_sync_step2,
    encode_update,
)

SECRET = "access-tests-secret-with-32-bytes-or-more"
SERVICE_MEMBER = "周婷"
MARKETING_LEAD = "王晓雯"
MARKETING_MEMBER = "李俊杰"
OPERATIONS_MEMBER = "刘洋"
ADMIN = "吴浩"
PLAN = "d11-plan"


def token(user: str, **kwargs: Any) -> str:
    return issue_token(SECRET, user, ttl=3600, **kwargs)


@pytest.fixture
async def demo(make_server: ServerFactory, database_url: str) -> ServerProcess:
    return await make_server(database_url, TANDEM_SECRET=SECRET, TANDEM_DEMO="1")


class Socket:
    """One sync connection: the frames it received, and how it ended."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[bytes] = []
        self.closed_at: float | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    self.frames.append(message)
        except ConnectionClosed:
            pass
        self.closed_at = time.monotonic()
        if self.ws.close_code is not None:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""

    async def send(self, frame: bytes) -> None:
        await self.ws.send(frame)

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.close_code

    def presence(self) -> dict[int, Any]:
        """The newest awareness state per client id among the frames received."""
        states: dict[int, Any] = {}
        for frame in self.frames:
            message = decode_message(frame)
            if message.kind == MSG_AWARENESS:
                for entry in decode_awareness_update(message.payload):
                    states[entry.client_id] = json.loads(entry.state)
        return states

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(asyncio.shield(self._reader), 5)


async def open_socket(server: ServerProcess, doc_id: str, tok: str) -> Socket:
    ws = await connect(f"{server.ws_url}/{doc_id}?token={tok}", open_timeout=10)
    sock = Socket(ws)
    await sock.send(encode_sync_step1(b"\x00"))
    async with asyncio.timeout(10):
        while not any(
            decode_message(f).kind == MSG_SYNC and decode_message(f).sync == SYNC_STEP2
            for f in sock.frames
        ):
            if sock.closed_at is not None:
                raise AssertionError(f"closed: {sock.close_code} {sock.close_reason}")
            await asyncio.sleep(0.02)
    return sock


async def refused_code(server: ServerProcess, doc_id: str, tok: str) -> int | None:
    async with connect(f"{server.ws_url}/{doc_id}?token={tok}", open_timeout=10) as ws:
        try:
            await asyncio.wait_for(ws.recv(), 5)
            await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed:
            pass
        return ws.close_code


def text_update(text: str) -> bytes:
    doc: Doc[Any] = Doc()
    doc.get("intruder", type=Text).insert(0, text)
    return doc.get_update()


async def markdown(http: httpx.AsyncClient, doc_id: str) -> str:
    response = await http.get(f"/docs/{doc_id}/export", params={"format": "json"})
    assert response.status_code == 200, response.text
    return response.text


@pytest.fixture
async def admin_http(demo: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with api(demo, token(ADMIN)) as http:
        yield http


async def test_a_reader_cannot_change_the_plan_by_any_message_or_route(
    demo: ServerProcess,
) -> None:
    reader = token(SERVICE_MEMBER)
    async with api(demo, reader) as http:
        assert (await http.get(f"/docs/{PLAN}")).status_code == 200
        assert (await http.get(f"/docs/{PLAN}/content")).status_code == 200
        before = (await http.get(f"/docs/{PLAN}/content")).json()["content"]
        for method, path, body in [
            ("PATCH", f"/docs/{PLAN}", {"title": "改了"}),
            ("PUT", f"/docs/{PLAN}/text", {"text": "改了", "format": "markdown"}),
            ("POST", f"/docs/{PLAN}/versions", {"name": "mine"}),
            ("DELETE", f"/docs/{PLAN}", None),
            ("PUT", f"/docs/{PLAN}/access", {"grants": []}),
        ]:
            response = await http.request(method, path, json=body)
            assert response.status_code == 403, (method, path, response.text)

    writer_sock = await open_socket(demo, PLAN, token(MARKETING_MEMBER))
    await writer_sock.send(
        encode_awareness(
            encode_awareness_update([AwarenessEntry(4242, 1, json.dumps({"cursor": 1}))])
        )
    )
    sock = await open_socket(demo, PLAN, reader)
    await sock.send(encode_sync_step2(text_update("step two 入侵")))
    await sock.send(encode_update(text_update("update 入侵")))
    # The writer's presence, which the reader may not erase or replace.
    await sock.send(
        encode_awareness(
            encode_awareness_update(
                [AwarenessEntry(4242, 9, "null"), AwarenessEntry(4242, 10, '{"x":1}')]
            )
        )
    )
    await asyncio.sleep(1.0)
    assert sock.closed_at is None  # a read-only client is not punished, only not heard
    observer = await open_socket(demo, PLAN, token(MARKETING_LEAD))
    await asyncio.sleep(0.3)
    assert observer.presence()[4242]["cursor"] == 1
    async with api(demo, token(MARKETING_LEAD)) as http:
        content = (await http.get(f"/docs/{PLAN}/content")).json()["content"]
        assert content == before
        assert "入侵" not in await markdown(http, PLAN)
    for s in (sock, writer_sock, observer):
        await s.close()


async def test_a_private_folder_is_invisible_to_other_departments(demo: ServerProcess) -> None:
    async with api(demo, token(MARKETING_LEAD)) as lead:
        folder = await lead.post("/folders", json={"name": "市场部内部", "department": "市场部"})
        assert folder.status_code == 201, folder.text
        folder_id = folder.json()["id"]
        doc = await lead.post(
            "/docs",
            json={"kind": "doc", "title": "预算 机密", "id": "mk-budget", "folder_id": folder_id},
        )
        assert doc.status_code == 201, doc.text
        assert "mk-budget" in [d["id"] for d in (await lead.get("/docs")).json()["documents"]]
    async with api(demo, token(SERVICE_MEMBER)) as other:
        assert folder_id not in [f["id"] for f in (await other.get("/folders")).json()["folders"]]
        listed = (await other.get("/docs")).json()["documents"]
        assert "mk-budget" not in [d["id"] for d in listed]
        assert PLAN in [d["id"] for d in listed]  # read through the grant
        found = (await other.get("/docs", params={"q": "预算", "include_files": "1"})).json()
        assert found["documents"] == [] and found["files"] == []
        assert (await other.get("/docs/mk-budget")).status_code == 403
        assert (await other.get(f"/folders/{folder_id}")).status_code == 403
    assert await refused_code(demo, "mk-budget", token(SERVICE_MEMBER)) == 4403


async def test_a_share_link_opens_one_document_read_only_until_revoked(
    demo: ServerProcess,
) -> None:
    async with api(demo, token(MARKETING_MEMBER)) as owner:
        created = await owner.post(f"/docs/{PLAN}/share", json={"allow_export": True})
        assert created.status_code == 201, created.text
        link = created.json()
        assert set(link) == {"id", "token", "url", "expires_at"}
        shared = link["token"]
        listed = (await owner.get(f"/docs/{PLAN}/share")).json()["links"]
        assert [entry["id"] for entry in listed] == [link["id"]]

    async with api(demo, shared) as http:
        assert (await http.get(f"/docs/{PLAN}/content")).status_code == 200
        export = await http.get(f"/docs/{PLAN}/export", params={"format": "md"})
        assert export.status_code == 200 and "双十一" in export.text
        for method, path, body in [
            ("PUT", f"/docs/{PLAN}/text", {"text": "x", "format": "markdown"}),
            ("POST", f"/docs/{PLAN}/versions", {"name": "x"}),
            ("GET", f"/docs/{PLAN}/versions", None),
            ("GET", "/docs/d11-faq/content", None),
            ("GET", "/docs", None),
            ("GET", "/files", None),
            ("GET", "/folders", None),
            ("POST", f"/docs/{PLAN}/share", {}),
            ("POST", "/auth/logout", None),
            ("GET", "/users", None),
        ]:
            response = await http.request(method, path, json=body)
            assert response.status_code == 403, (method, path, response.text)
    async with httpx.AsyncClient(base_url=demo.http_url) as anonymous:
        by_query = await anonymous.get(link["url"].removeprefix(demo.http_url))
        assert by_query.status_code == 200, by_query.text
    assert await refused_code(demo, "d11-faq", shared) == 4403

    sock = await open_socket(demo, PLAN, shared)
    await sock.send(encode_update(text_update("分享 入侵")))
    async with api(demo, token(MARKETING_MEMBER)) as owner:
        await asyncio.sleep(0.5)
        assert "分享 入侵" not in await markdown(owner, PLAN)
        started = time.monotonic()
        revoked = await owner.delete(f"/docs/{PLAN}/share/{link['id']}")
        assert revoked.status_code == 204, revoked.text
    assert await sock.wait_closed(timeout=3) == 4403
    assert sock.closed_at is not None
    delay = sock.closed_at - started
    print(f"share link revoked: open connection closed after {delay * 1000:.0f} ms")
    assert delay < 1.0
    async with api(demo, shared) as http:
        assert (await http.get(f"/docs/{PLAN}/content")).status_code == 401
    assert await refused_code(demo, PLAN, shared) == 4401


async def test_removing_a_grant_closes_or_downgrades_open_connections(
    demo: ServerProcess, admin_http: httpx.AsyncClient
) -> None:
    folders = (await admin_http.get("/folders")).json()["folders"]
    marketing = next(f["id"] for f in folders if f["name"] == "市场部")
    reading = await open_socket(demo, PLAN, token(SERVICE_MEMBER))
    board_sock = await open_socket(demo, "d11-board", token(SERVICE_MEMBER))

    current = (await admin_http.get(f"/folders/{marketing}/access")).json()["grants"]
    assert {"department": "客服部", "access": "read"} in current
    kept = [g for g in current if g.get("department") != "客服部"]
    started = time.monotonic()
    changed = await admin_http.put(f"/folders/{marketing}/access", json={"grants": kept})
    assert changed.status_code == 200, changed.text
    assert await reading.wait_closed(timeout=3) == 4403
    assert reading.closed_at is not None
    closed_after = reading.closed_at - started
    print(f"grant removed: open connection closed after {closed_after * 1000:.0f} ms")
    assert closed_after < 1.0

    # The board is open to everyone; claiming it for operations leaves others reading.
    board = "d11-board"
    restricted = await admin_http.put(
        f"/docs/{board}/access",
        json={
            "grants": [
                {"department": "运营部", "access": "write"},
                {"everyone": True, "access": "read"},
            ]
        },
    )
    assert restricted.status_code == 200, restricted.text
    await asyncio.sleep(0.5)
    await board_sock.send(encode_update(text_update("降级后 入侵")))
    await asyncio.sleep(0.5)
    assert board_sock.closed_at is None
    assert "降级后 入侵" not in await markdown(admin_http, board)
    await board_sock.close()


async def test_presence_shows_who_signed_in_whatever_the_client_claims(
    demo: ServerProcess,
) -> None:
    forger = await open_socket(demo, "d11-board", token(MARKETING_MEMBER))
    watcher = await open_socket(demo, "d11-board", token(OPERATIONS_MEMBER))
    claimed = {"user": {"name": MARKETING_LEAD, "id": MARKETING_LEAD, "color": "#ff0000"}}
    await forger.send(
        encode_awareness(encode_awareness_update([AwarenessEntry(777, 1, json.dumps(claimed))]))
    )
    async with asyncio.timeout(5):
        while 777 not in watcher.presence():
            await asyncio.sleep(0.05)
    seen = watcher.presence()[777]["user"]
    print("a forged presence is seen as:", seen)
    assert seen["id"] == MARKETING_MEMBER
    assert seen["name"] != MARKETING_LEAD and MARKETING_MEMBER in seen["name"]
    assert seen["department"] == "市场部"
    assert seen["color"] == "#ff0000"  # the client's own choice stays
    await forger.close()
    await watcher.close()


async def test_limits_per_user_refuse_the_offender_only(
    make_server: ServerFactory, database_url: str
) -> None:
    server = await make_server(
        database_url,
        TANDEM_SECRET=SECRET,
        TANDEM_MAX_CONNECTIONS_PER_USER="2",
        TANDEM_MAX_CREATIONS_PER_MINUTE="3",
    )
    first = await open_socket(server, "notes", token("greedy"))
    second = await open_socket(server, "notes", token("greedy"))
    assert await refused_code(server, "notes", token("greedy")) == 4429
    other = await open_socket(server, "notes", token("calm"))  # nobody else notices
    await first.close()
    third = await open_socket(server, "notes", token("greedy"))  # a slot came free
    async with api(server, token("greedy")) as http:
        for n in range(3):
            made = await http.post("/docs", json={"kind": "doc", "title": f"d{n}"})
            assert made.status_code == 201, made.text
        refused = await http.post("/folders", json={"name": "one too many"})
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) > 0
    async with api(server, token("calm")) as http:
        assert (await http.post("/folders", json={"name": "fine"})).status_code == 201
    assert "over 2 connections" in server.log()
    for sock in (second, other, third):
        await sock.close()


async def test_sign_out_and_disabling_a_user_end_open_connections(
    demo: ServerProcess, admin_http: httpx.AsyncClient
) -> None:
    leaving = token(OPERATIONS_MEMBER)
    sock = await open_socket(demo, "d11-board", leaving)
    async with api(demo, leaving) as http:
        assert (await http.post("/auth/logout")).status_code == 204
    assert await sock.wait_closed(timeout=3) == 4403
    async with api(demo, leaving) as http:
        assert (await http.get("/docs")).status_code == 401

    sock = await open_socket(demo, "d11-board", token(OPERATIONS_MEMBER))
    disabled = await admin_http.patch(f"/users/{OPERATIONS_MEMBER}", json={"active": False})
    assert disabled.status_code == 200, disabled.text
    assert await sock.wait_closed(timeout=3) == 4403
    async with api(demo, token(OPERATIONS_MEMBER)) as http:
        assert (await http.get("/docs")).status_code == 401
    assert await refused_code(demo, "d11-board", token(OPERATIONS_MEMBER)) == 4401


async def test_a_lead_reads_who_did_what(demo: ServerProcess) -> None:
    editor = await open_socket(demo, PLAN, token(MARKETING_MEMBER))
    await editor.send(encode_update(text_update("李俊杰 写的")))
    async with api(demo, token(MARKETING_MEMBER)) as http:
        exported = await http.get(f"/docs/{PLAN}/export", params={"format": "md"})
        assert exported.status_code == 200
        assert (await http.get(f"/docs/{PLAN}/activity")).status_code == 403  # not a lead
    await asyncio.sleep(1.5)  # the update is committed, and counted
    async with api(demo, token(MARKETING_LEAD)) as lead:
        response = await lead.get(f"/docs/{PLAN}/activity")
        assert response.status_code == 200, response.text
        activity = response.json()
    assert {"user": MARKETING_MEMBER, "action": "connect"} in [
        {"user": e["user"], "action": e["action"]} for e in activity["events"]
    ]
    exports = [e for e in activity["events"] if e["action"] == "export"]
    assert [e["user"] for e in exports] == [MARKETING_MEMBER]
    assert any(e["user"] == MARKETING_MEMBER and e["updates"] >= 1 for e in activity["edits"])
    await editor.close()
