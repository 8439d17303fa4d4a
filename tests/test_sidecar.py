"""The sidecar end to end: a stock Yjs client's edit becomes a notification on the live
stream of the person it concerns, within a second."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from server.auth import issue_token
from tests.conftest import ServerFactory, ServerProcess
from tests.helpers import api, query
from tests.yjs_node import NodeYClient

SECRET = "sidecar-tests-secret-with-32-bytes-or-more"


def token(user: str) -> str:
    return issue_token(SECRET, user, ttl=3600)


async def new_board(server: ServerProcess, owner: str, tasks: list[str]) -> tuple[str, list[str]]:
    async with api(server, token(owner)) as http:
        made = await http.post("/docs", json={"kind": "board", "title": "双十一 board"})
        assert made.status_code == 201, made.text
        board = made.json()["id"]
        ids = []
        for title in tasks:
            task = await http.post(f"/docs/{board}/tasks", json={"title": title})
            assert task.status_code == 201, task.text
            ids.append(task.json()["id"])
    return board, ids


class Stream:
    """A live notification stream (server-sent events), read in the background."""

    def __init__(self, server: ServerProcess, user: str, last_event_id: int | None = None):
        self.server = server
        self.user = user
        self.last_event_id = last_event_id
        self.events: list[dict[str, Any]] = []
        self.arrived: list[float] = []
        self.opened = asyncio.Event()
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Stream:
        self._task = asyncio.create_task(self._read())
        await asyncio.wait_for(self.opened.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass

    async def _read(self) -> None:
        headers = {"Authorization": f"Bearer {token(self.user)}"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = str(self.last_event_id)
        async with (
            httpx.AsyncClient(base_url=self.server.http_url, timeout=None) as http,
            http.stream("GET", "/api/notifications/stream", headers=headers) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            data: list[str] = []
            async for line in response.aiter_lines():
                self.opened.set()
                if line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and data:
                    self.events.append(json.loads("\n".join(data)))
                    self.arrived.append(time.perf_counter())
                    data = []
                    self.changed.set()

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.user} got {len(self.events)} of {count} events")
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                pass


async def wait_for_notification(server: ServerProcess, user: str, count: int = 1) -> None:
    async with api(server, token(user)) as http:
        for _ in range(100):
            listed = (await http.get("/notifications")).json()
            if listed["total"] >= count:
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"{user} has no notification")


@pytest.mark.interop
async def test_an_assignment_by_a_stock_yjs_client_reaches_the_assignees_stream(
    make_server: ServerFactory, database_url: str
) -> None:
    server = await make_server(database_url, TANDEM_SECRET=SECRET)
    board, (task,) = await new_board(server, "刘洋", ["备货 10,000 件"])
    latencies = []
    async with Stream(server, "王小明") as stream:
        client = await NodeYClient.start(server.ws_url, board, token("刘洋"))
        try:
            await client.call("wait_synced", timeout=10)
            # Each assignment is stored before the next: two within one commit window are
            # stored as one row, and only the last of them is news (see docs/SIDECAR.md).
            for round_, who in enumerate(["王小明", "周婷", "王小明"]):
                started = time.perf_counter()
                await client.call(
                    "map_set_deep", name="tasks", path=[task], key="assignee", value=who
                )
                if who == "王小明":
                    expected = 1 if round_ == 0 else 2
                    await stream.wait_for(expected, timeout=5)
                    latencies.append(stream.arrived[expected - 1] - started)
                else:
                    await wait_for_notification(server, who)
        finally:
            await client.close()
        await asyncio.sleep(0.5)
    assert len(stream.events) == 2  # 周婷's assignment is not 王小明's business
    first = stream.events[0]
    assert first["kind"] == "assigned"
    assert first["doc_id"] == board and first["task_id"] == task
    assert first["actor"] == "刘洋"
    assert first["data"]["title"] == "备货 10,000 件"
    assert first["created_at"].endswith("Z")
    assert isinstance(first["id"], int)
    print(
        "assignment -> notification on the stream: "
        + ", ".join(f"{latency * 1000:.0f} ms" for latency in latencies)
    )
    assert max(latencies) < 1.0
    async with api(server, token("周婷")) as http:
        listed = (await http.get("/notifications")).json()
    assert listed["unread"] == 1
    assert listed["notifications"][0]["kind"] == "assigned"


async def test_a_new_file_version_is_news_to_its_earlier_uploaders_and_the_documents_owner(
    make_server: ServerFactory, database_url: str
) -> None:
    server = await make_server(database_url, TANDEM_SECRET=SECRET)
    board, _ = await new_board(server, "刘洋", [])
    async with api(server, token("周婷")) as http:
        folder = (await http.post("/folders", json={"name": "设计稿"})).json()["id"]
        first = await http.post(
            "/files", params={"folder_id": folder, "name": "海报.png"}, content=b"v1"
        )
        assert first.status_code == 201, first.text
        attached = await http.post(f"/files/{first.json()['id']}/attach", json={"doc_id": board})
        assert attached.status_code == 200, attached.text
    async with api(server, token("王小明")) as http:
        second = await http.post(
            "/files", params={"folder_id": folder, "name": "海报.png"}, content=b"v2"
        )
        assert second.status_code == 201, second.text
        assert second.json()["version"] == 2
    await wait_for_notification(server, "周婷")
    for user in ("周婷", "刘洋"):
        async with api(server, token(user)) as http:
            listed = (await http.get("/notifications")).json()["notifications"]
        kinds = [(n["kind"], n["actor"], n["data"]["version"]) for n in listed]
        assert ("file_changed", "王小明", 2) in kinds, (user, listed)
    async with api(server, token("王小明")) as http:
        assert (await http.get("/notifications")).json()["total"] == 0


async def test_nobody_hears_of_a_document_they_cannot_read(
    make_server: ServerFactory, database_url: str
) -> None:
    """An assignment on a board of another department's private folder makes the event (for
    webhooks) but no notification for the assignee, until the department is granted read."""
    server = await make_server(database_url, TANDEM_SECRET=SECRET, TANDEM_DEMO="1")
    async with api(server, token("吴浩")) as admin:
        made = await admin.post("/folders", json={"name": "运营内部", "department": "运营部"})
        assert made.status_code == 201, made.text
        folder = made.json()["id"]
    async with api(server, token("刘洋")) as ops:
        made = await ops.post(
            "/docs", json={"kind": "board", "title": "内部看板", "folder_id": folder}
        )
        assert made.status_code == 201, made.text
        board = made.json()["id"]
        task = (await ops.post(f"/docs/{board}/tasks", json={"title": "盘点仓库"})).json()["id"]
        assert (
            await ops.patch(f"/docs/{board}/tasks/{task}", json={"assignee": "周婷"})
        ).status_code == 200
        # The event is made: the sidecar has read the change.
        for _ in range(100):
            rows = await query(
                database_url, f"SELECT count(*) FROM events WHERE doc_id = '{board}'"
            )
            if rows[0][0]:
                break
            await asyncio.sleep(0.1)
        assert rows[0][0] == 1
    async with api(server, token("周婷")) as service:
        listed = (await service.get("/notifications", params={"limit": 500})).json()
    assert [n for n in listed["notifications"] if n["doc_id"] == board] == []
    async with api(server, token("吴浩")) as admin:
        granted = await admin.put(
            f"/folders/{folder}/access",
            json={"grants": [{"department": "客服部", "access": "read"}]},
        )
        assert granted.status_code == 200, granted.text
    async with api(server, token("刘洋")) as ops:
        for who in ("王小明", "周婷"):
            await ops.patch(f"/docs/{board}/tasks/{task}", json={"assignee": who})
            await asyncio.sleep(0.5)  # stored apart: two changes, two assignments
    mine: list[dict[str, Any]] = []
    async with api(server, token("周婷")) as service:
        for _ in range(50):
            listed = (await service.get("/notifications", params={"limit": 500})).json()
            mine = [n for n in listed["notifications"] if n["doc_id"] == board]
            if mine:
                break
            await asyncio.sleep(0.1)
    assert [(n["kind"], n["task_id"]) for n in mine] == [("assigned", task)]


async def test_a_task_already_overdue_is_reminded_at_once(
    make_server: ServerFactory, database_url: str
) -> None:
    """A new due date wakes the reminders: an overdue task is not news 30 s later."""
    server = await make_server(database_url, TANDEM_SECRET=SECRET)
    board, (task,) = await new_board(server, "刘洋", ["对账"])
    async with api(server, token("刘洋")) as http:
        changed = await http.patch(
            f"/docs/{board}/tasks/{task}", json={"assignee": "王小明", "due": "2026-01-05"}
        )
        assert changed.status_code == 200, changed.text
    kinds: list[str] = []
    async with api(server, token("王小明")) as http:
        for _ in range(30):
            listed = (await http.get("/notifications")).json()["notifications"]
            kinds = sorted(n["kind"] for n in listed)
            if "overdue" in kinds:
                break
            await asyncio.sleep(0.1)
    assert kinds == ["assigned", "overdue"]
