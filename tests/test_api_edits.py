"""REST edits of document content (server/api/live.py, tasks.py, messages.py, text.py,
updates.py) and `tandem export`, against a real server process, with stock Yjs clients (Node)
and pycrdt clients connected at the same time."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT, ServerFactory, ServerProcess
from helpers import api, query
from pycrdt import Array, Doc, Map, XmlElement, XmlFragment, XmlText
from sqlalchemy import text
from yjs_node import NodeYClient

from client.sync import SyncClient
from server import cli
from server.auth import issue_token
from server.persistence.sql import create_engine
from shared import board, discussion
from shared.documents import initialize

CONVERGE = 5.0


async def wait_until(predicate: Callable[[], bool], timeout: float = CONVERGE) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def node_until(
    client: NodeYClient, op: str, predicate: Callable[[dict[str, Any]], bool], **fields: Any
) -> dict[str, Any]:
    """Poll a Node client until `predicate(reply of op)` holds."""
    async with asyncio.timeout(CONVERGE):
        while True:
            reply = await client.call(op, **fields)
            if predicate(reply):
                return reply
            await asyncio.sleep(0.01)


def assert_error(response: httpx.Response, status: int, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["message"]
    if field is not None:
        assert error.get("field") == field, error


async def create(http: httpx.AsyncClient, kind: str, title: str, **extra: Any) -> str:
    response = await http.post("/docs", json={"kind": kind, "title": title, **extra})
    assert response.status_code == 201, response.text
    doc_id: str = response.json()["id"]
    return doc_id


async def export_cli(database_url: str, *args: str) -> int:
    """`tandem export ...` through the CLI's main() (in a thread: it runs its own loop)."""
    return await asyncio.to_thread(cli.main, ["export", *args, "--database-url", database_url])


def message_ids(doc: Doc[Any]) -> set[str]:
    return {item.get("id") for item in doc.get("messages", type=Array) if isinstance(item, Map)}


def run_tandem(database_url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """The real command line, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=cwd,
        env={**os.environ, "TANDEM_DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=60,
    )


# -- (a) REST changes reach connected clients at once and are logged as the caller's ------------


@pytest.mark.interop
async def test_task_created_and_moved_over_rest_reaches_live_clients_at_once(
    server: ServerProcess,
) -> None:
    async with api(server) as http:
        doc_id = await create(http, "board", "双十一任务板")
        node = await NodeYClient.start(server.ws_url, doc_id)
        try:
            await node.call("wait_synced")
            async with SyncClient(server.ws_url, doc_id) as py:
                await py.wait_synced()
                response = await http.post(
                    f"/docs/{doc_id}/tasks",
                    json={
                        "title": "优惠券配置",
                        "assignee": "刘洋",
                        "department": "运营部",
                        "due": "2026-11-02",
                        "priority": "urgent",
                        "tags": ["优惠券", "系统"],
                        "subtasks": ["满300减40 规则", {"title": "叠加测试", "done": True}],
                        "description": "按策划方案第三节配置",
                    },
                )
                assert response.status_code == 201, response.text
                task = response.json()
                task_id = task["id"]
                assert response.headers["location"] == f"/api/docs/{doc_id}/tasks/{task_id}"
                assert task["status"] == "todo" and task["created_by"] == "local"
                assert [(s["title"], s["done"]) for s in task["subtasks"]] == [
                    ("满300减40 规则", False),
                    ("叠加测试", True),
                ]

                # The answer comes once the edit is committed; the clients have it within
                # moments, over their open connections.
                def node_has(status: str) -> Callable[[dict[str, Any]], bool]:
                    return lambda r: r["json"].get(task_id, {}).get("status") == status

                seen = await node_until(node, "map_json", node_has("todo"), name="tasks")
                assert seen["json"][task_id]["title"] == "优惠券配置"
                assert seen["json"][task_id]["tags"] == ["优惠券", "系统"]
                tasks = py.doc.get("tasks", type=Map)
                await wait_until(lambda: task_id in tasks)
                assert tasks[task_id]["assignee"] == "刘洋"

                moved = await http.patch(
                    f"/docs/{doc_id}/tasks/{task_id}",
                    json={"status": "in_progress", "assignee": "赵敏", "priority": "high"},
                )
                assert moved.status_code == 200, moved.text
                assert moved.json()["status"] == "in_progress"
                await node_until(node, "map_json", node_has("in_progress"), name="tasks")
                await wait_until(lambda: tasks[task_id]["status"] == "in_progress")
                assert tasks[task_id]["assignee"] == "赵敏"
                assert tasks[task_id]["priority"] == "high"

                done = await http.post(f"/docs/{doc_id}/tasks/{task_id}/complete")
                assert done.status_code == 200 and done.json()["status"] == "done"
                await node_until(node, "map_json", node_has("done"), name="tasks")
                await wait_until(lambda: tasks[task_id]["status"] == "done")
        finally:
            await node.close()
        meta = (await http.get(f"/docs/{doc_id}")).json()
        assert meta["updated_by"] == "local"
        assert meta["updated_at"] >= meta["created_at"]

    rows = await query(
        server.database_url,
        "SELECT origin, author, data FROM updates WHERE doc_id = :doc ORDER BY seq",
        doc=doc_id,
    )
    created = [row for row in rows if "优惠券配置".encode() in row[2]]
    moved_rows = [row for row in rows if b"in_progress" in row[2]]
    assert created and moved_rows
    assert {(origin, author) for origin, author, _ in rows} == {("rest", "local")}


# -- (b) each kind: REST, a stock Yjs client and a pycrdt client edit it; exports show it all ----


def _py_paragraph(doc: Doc[Any], words: str) -> None:
    fragment = doc.get("default", type=XmlFragment)
    paragraph = fragment.children.append(XmlElement("paragraph"))
    paragraph.children.append(XmlText(words))


@pytest.mark.interop
async def test_each_kind_edited_over_rest_yjs_and_pycrdt_exports_every_edit(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await make_server()
    async with api(server) as http:
        board_id = await create(http, "board", "活动任务板", department="运营部")
        doc_id = await create(http, "doc", "活动策划方案", department="市场部")
        talk_id = await create(http, "discussion", "讨论：库存核对")

        # REST first.
        rest_task = (
            await http.post(
                f"/docs/{board_id}/tasks",
                json={"title": "REST 库存核对", "assignee": "赵敏", "due": "2026-11-04"},
            )
        ).json()["id"]
        put = await http.put(
            f"/docs/{doc_id}/text",
            content="## 活动目标\n\n- GMV 目标 **1.2 亿元**\n- 新增会员 30 万\n".encode(),
            headers={"Content-Type": "text/markdown"},
        )
        assert put.status_code == 200, put.text
        assert put.json()["content"]["default"]["content"][0]["type"] == "heading"
        first = await http.post(
            f"/docs/{talk_id}/messages",
            json={"body": "REST 消息：清单已整理", "mentions": ["李俊杰"]},
        )
        assert first.status_code == 201, first.text
        assert first.json()["author"] == "local" and first.json()["mentions"] == ["李俊杰"]
        first_id = first.json()["id"]

        # A stock Yjs client in each document.
        for room, edit in [
            (
                board_id,
                {
                    "op": "map_set_deep",
                    "name": "tasks",
                    "key": "node-task",
                    "value": {
                        "title": "Node 直播排期",
                        "description": "",
                        "status": "in_progress",
                        "assignee": "李俊杰",
                        "department": "市场部",
                        "due": "2026-11-05",
                        "priority": "high",
                        "tags": ["直播"],
                        "subtasks": [{"id": "s1", "title": "主播档期", "done": True}],
                        "order": 5,
                        "watchers": [],
                        "created_by": "node",
                        "created_at": "2026-10-20T08:00:00.000Z",
                    },
                },
            ),
            (doc_id, {"op": "xml_insert_paragraph", "name": "default", "index": 2,
                      "text": "Node 段落：预热页面 10月28日上线"}),
            (
                talk_id,
                {
                    "op": "array_push_deep",
                    "name": "messages",
                    "values": [
                        {
                            "id": "node-msg",
                            "author": "李俊杰",
                            "body": "Node 消息：直播主推 12 款",
                            "created_at": "2026-10-21T09:00:00.000Z",
                            "reply_to": first_id,
                            "mentions": [],
                            "anchor": None,
                            "edited_at": None,
                            "deleted": False,
                        }
                    ],
                },
            ),
        ]:  # fmt: skip
            node = await NodeYClient.start(server.ws_url, room)
            try:
                await node.call("wait_synced")
                op = edit.pop("op")
                await node.call(op, **edit)
                # Node also edits what REST wrote: the REST task gets a watcher.
                if room == board_id:
                    await node.call(
                        "map_set_deep", name="tasks", path=[rest_task], key="watchers",
                        value=["周婷"],
                    )  # fmt: skip
                await asyncio.sleep(0.2)
            finally:
                await node.close()

        # A pycrdt client in each document, after the others (it sees their edits).
        async with SyncClient(server.ws_url, board_id) as py:
            await py.wait_synced()
            tasks = py.doc.get("tasks", type=Map)
            await wait_until(lambda: "node-task" in tasks and rest_task in tasks)
            board.add_task(py.doc, "Python 价格巡检", assignee="刘洋", priority="urgent")
            board.update_task(py.doc, "node-task", status="done")
            board.set_priority(py.doc, rest_task, "urgent")
            await asyncio.sleep(0.3)
        async with SyncClient(server.ws_url, doc_id) as py:
            await py.wait_synced()
            fragment = py.doc.get("default", type=XmlFragment)
            await wait_until(lambda: "Node 段落" in str(fragment))
            _py_paragraph(py.doc, "Python 段落：客服排班已确认")
            await asyncio.sleep(0.3)
        async with SyncClient(server.ws_url, talk_id) as py:
            await py.wait_synced()
            await wait_until(lambda: "node-msg" in message_ids(py.doc))
            discussion.post_message(
                py.doc, "周婷", "Python 消息：缺货款请提前告诉客服部", reply_to="node-msg"
            )
            await asyncio.sleep(0.3)

        # The live content already shows all three.
        live = (await http.get(f"/docs/{board_id}/content")).json()
        titles = {t["title"] for t in live["content"]["tasks"].values()}
        assert titles == {"REST 库存核对", "Node 直播排期", "Python 价格巡检"}
        assert live["problems"] == []
    await server.stop()

    url = server.database_url
    out = tmp_path / "exports"
    expected = {
        board_id: ["REST 库存核对", "Node 直播排期", "Python 价格巡检", "周婷", "主播档期"],
        doc_id: ["活动目标", "1.2 亿元", "Node 段落", "Python 段落"],
        talk_id: ["REST 消息", "Node 消息", "Python 消息", "李俊杰", "周婷"],
    }
    for room, words in expected.items():
        for fmt in ("md", "html", "json"):
            target = out / f"{room}.{fmt}"
            assert await export_cli(url, room, "--format", fmt, "-o", str(target)) == 0
            body = target.read_text("utf-8")
            for word in words:
                assert word in body, (room, fmt, word)
            if fmt == "json":
                exported = json.loads(body)
                assert exported["problems"] == [], exported["problems"]
    board_json = json.loads((out / f"{board_id}.json").read_text("utf-8"))
    flat = json.dumps(board_json, ensure_ascii=False)
    assert '"urgent"' in flat and '"done"' in flat
    # Markdown keeps the structure: the Node paragraph sits between list and Python paragraph.
    plan = (out / f"{doc_id}.md").read_text("utf-8")
    assert plan.index("## 活动目标") < plan.index("- GMV") < plan.index("Node 段落")
    assert plan.index("Node 段落") < plan.index("Python 段落")
    thread = (out / f"{talk_id}.md").read_text("utf-8")
    assert thread.index("REST 消息") < thread.index("Node 消息") < thread.index("Python 消息")

    # And the real command line prints to stdout.
    done = run_tandem(url, "export", talk_id, "--format", "md", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Python 消息" in done.stdout.decode()


# -- (d) raw updates, and refusals -------------------------------------------------------------


def _board_update(task_id: str, title: str) -> bytes:
    """An update made by an independent client that adds a task (root maps merge by name)."""
    doc: Doc[Any] = Doc()
    board.add_task(doc, title, task_id=task_id, assignee="吴浩")
    return doc.get_update()


async def test_raw_updates_apply_or_are_refused_without_storing_anything(
    server: ServerProcess,
) -> None:
    async with api(server) as http:
        doc_id = await create(http, "board", "看板")
        count_sql = "SELECT count(*) FROM updates WHERE doc_id = :doc"
        before = await query(server.database_url, count_sql, doc=doc_id)

        for garbage in [b"garbage", b"\x01\x02\x03\x04", b"\xff" * 64]:
            refused = await http.post(
                f"/docs/{doc_id}/updates",
                content=garbage,
                headers={"Content-Type": "application/octet-stream"},
            )
            assert_error(refused, 422, "body")
            assert "update" in refused.json()["error"]["message"]
        assert_error(
            await http.post(f"/docs/{doc_id}/updates", json={"update": "%%% not base64"}),
            422,
            "update",
        )
        assert_error(
            await http.post(
                f"/docs/{doc_id}/updates",
                json={"update": base64.b64encode(b"garbage").decode()},
            ),
            422,
            "body",
        )
        assert_error(await http.post(f"/docs/{doc_id}/updates", content=b""), 422, "body")
        # An update that depends on changes the document lacks would sit in memory unsaved.
        source: Doc[Any] = Doc()
        first = board.add_task(source, "第一步")
        seen = source.get_state()
        board.update_task(source, first, title="第二步")  # inside the task made before
        dependent = source.get_update(seen)
        refused = await http.post(f"/docs/{doc_id}/updates", content=dependent)
        assert_error(refused, 422, "body")
        assert "depends on" in refused.json()["error"]["message"]
        await asyncio.sleep(0.1)
        assert await query(server.database_url, count_sql, doc=doc_id) == before
        assert (await http.get(f"/docs/{doc_id}/content")).json()["content"]["tasks"] == {}

        raw = _board_update("raw-1", "原始更新任务")
        applied = await http.post(
            f"/docs/{doc_id}/updates",
            content=raw,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert applied.status_code == 200, applied.text
        assert applied.json()["changed"] is True
        encoded = base64.b64encode(_board_update("raw-2", "JSON 更新任务")).decode()
        applied = await http.post(f"/docs/{doc_id}/updates", json={"update": encoded})
        assert applied.status_code == 200 and applied.json()["changed"] is True
        again = await http.post(f"/docs/{doc_id}/updates", content=raw)
        assert again.status_code == 200 and again.json()["changed"] is False
        tasks = (await http.get(f"/docs/{doc_id}/content")).json()["content"]["tasks"]
        assert {t["title"] for t in tasks.values()} == {"原始更新任务", "JSON 更新任务"}
    rows = await query(
        server.database_url,
        "SELECT origin, author FROM updates WHERE doc_id = :doc ORDER BY seq",
        doc=doc_id,
    )
    assert len(rows) == before[0][0] + 2
    assert set(rows) == {("rest", "local")}


async def test_unknown_documents_and_tasks_wrong_kinds_and_bad_fields(
    server: ServerProcess,
) -> None:
    async with api(server) as http:
        board_id = await create(http, "board", "看板")
        doc_id = await create(http, "doc", "方案")
        talk_id = await create(http, "discussion", "讨论")
        task_id = (await http.post(f"/docs/{board_id}/tasks", json={"title": "库存核对"})).json()[
            "id"
        ]

        # 404: unknown document, unknown task, unknown subtask.
        assert_error(await http.post("/docs/nope/tasks", json={"title": "x"}), 404)
        assert_error(await http.get("/docs/nope/content"), 404)
        assert_error(await http.post("/docs/nope/updates", content=b"\x00\x00"), 404)
        assert_error(await http.put("/docs/nope/text", json={"text": "x"}), 404)
        assert_error(await http.post("/docs/nope/messages", json={"body": "x"}), 404)
        for method, path, body in [
            ("PATCH", f"/docs/{board_id}/tasks/ghost", {"status": "done"}),
            ("GET", f"/docs/{board_id}/tasks/ghost", None),
            ("DELETE", f"/docs/{board_id}/tasks/ghost", None),
            ("POST", f"/docs/{board_id}/tasks/ghost/complete", None),
            ("POST", f"/docs/{board_id}/tasks/ghost/subtasks", {"title": "x"}),
            ("PATCH", f"/docs/{board_id}/tasks/{task_id}/subtasks/ghost", {"done": True}),
        ]:
            assert_error(await http.request(method, path, json=body), 404)

        # 409: an operation that does not fit the document's kind.
        assert_error(await http.post(f"/docs/{doc_id}/tasks", json={"title": "x"}), 409)
        assert_error(await http.patch(f"/docs/{talk_id}/tasks/x", json={"title": "x"}), 409)
        assert_error(await http.put(f"/docs/{board_id}/text", json={"text": "x"}), 409)
        assert_error(await http.post(f"/docs/{board_id}/messages", json={"body": "x"}), 409)

        # 422: the field is named.
        bad = [
            ({"title": "x", "priority": "highest"}, "priority"),
            ({"title": "x", "status": "doing"}, "status"),
            ({"title": "x", "due": "next week"}, "due"),
            ({"title": "   "}, "title"),
            ({"assignee": "x"}, "title"),
            ({"title": "x", "tags": "a,b"}, "tags"),
            ({"title": "x", "order": "first"}, "order"),
            ({"title": "x", "colour": "red"}, "colour"),
        ]
        for body, field in bad:
            assert_error(await http.post(f"/docs/{board_id}/tasks", json=body), 422, field)
        assert_error(
            await http.patch(f"/docs/{board_id}/tasks/{task_id}", json={"status": None}),
            422,
            "status",
        )
        assert_error(
            await http.patch(f"/docs/{board_id}/tasks/{task_id}", json={"due": "11/11"}),
            422,
            "due",
        )
        assert_error(
            await http.post(f"/docs/{talk_id}/messages", json={"body": "x", "reply_to": "no"}),
            422,
            "reply_to",
        )
        assert_error(await http.post(f"/docs/{talk_id}/messages", json={"body": " "}), 422, "body")
        assert_error(await http.put(f"/docs/{doc_id}/text", json={"txt": "x"}), 422, "text")
        assert_error(await http.post(f"/docs/{board_id}/tasks", content=b"{"), 422, "body")

        # Nothing of that changed the board; real changes work.
        patched = await http.patch(
            f"/docs/{board_id}/tasks/{task_id}",
            json={"due": "2026-11-04T18:00:00+08:00", "order": 0.5, "assignee": None},
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["due"] == "2026-11-04T18:00:00+08:00"
        assert patched.json()["order"] == 0.5 and patched.json()["assignee"] is None
        sub = await http.post(f"/docs/{board_id}/tasks/{task_id}/subtasks", json={"title": "对账"})
        assert sub.status_code == 201
        sub_id = sub.json()["subtasks"][-1]["id"]
        ticked = await http.patch(
            f"/docs/{board_id}/tasks/{task_id}/subtasks/{sub_id}", json={"done": True}
        )
        assert ticked.json()["subtasks"][-1] == {"id": sub_id, "title": "对账", "done": True}
        plain = await http.put(
            f"/docs/{doc_id}/text",
            content="# 不是标题\n第二行".encode(),
            headers={"Content-Type": "text/plain; charset=utf-8"},
        )
        blocks = plain.json()["content"]["default"]["content"]
        assert [b["type"] for b in blocks] == ["paragraph"]
        assert blocks[0]["content"][0] == {"type": "text", "text": "# 不是标题"}
        content = (await http.get(f"/docs/{board_id}/content")).json()
        assert list(content["content"]["tasks"]) == [task_id] and content["problems"] == []
        assert (await http.delete(f"/docs/{board_id}/tasks/{task_id}")).status_code == 204
        assert_error(await http.get(f"/docs/{board_id}/tasks/{task_id}"), 404)


async def test_read_only_and_single_document_tokens(make_server: ServerFactory) -> None:
    secret = "s3cret"
    server = await make_server(TANDEM_SECRET=secret)
    async with api(server, issue_token(secret, "刘洋")) as liu:
        board_id = await create(liu, "board", "看板", id="b1")
        talk_id = await create(liu, "discussion", "讨论", id="t1")
        task = (await liu.post(f"/docs/{board_id}/tasks", json={"title": "优惠券配置"})).json()
        assert task["created_by"] == "刘洋"
        message = (await liu.post(f"/docs/{talk_id}/messages", json={"body": "已配置"})).json()
        assert message["author"] == "刘洋"
        assert (await liu.get(f"/docs/{board_id}")).json()["updated_by"] == "刘洋"
    async with api(server, issue_token(secret, "viewer", read_only=True)) as viewer:
        assert (await viewer.get(f"/docs/{board_id}/content")).status_code == 200
        assert (await viewer.get(f"/docs/{board_id}/tasks/{task['id']}")).status_code == 200
        for method, path, body in [
            ("POST", f"/docs/{board_id}/tasks", {"title": "x"}),
            ("PATCH", f"/docs/{board_id}/tasks/{task['id']}", {"status": "done"}),
            ("DELETE", f"/docs/{board_id}/tasks/{task['id']}", None),
            ("POST", f"/docs/{board_id}/tasks/{task['id']}/complete", None),
            ("POST", f"/docs/{board_id}/tasks/{task['id']}/subtasks", {"title": "x"}),
            ("POST", f"/docs/{talk_id}/messages", {"body": "x"}),
            ("PUT", f"/docs/{board_id}/text", {"text": "x"}),
        ]:
            assert_error(await viewer.request(method, path, json=body), 403)
        refused = await viewer.post(
            f"/docs/{board_id}/updates", content=_board_update("x", "只读写入")
        )
        assert_error(refused, 403)
    async with api(server, issue_token(secret, "guest", doc=talk_id)) as guest:
        assert (await guest.get(f"/docs/{talk_id}/content")).status_code == 200
        assert_error(await guest.get(f"/docs/{board_id}/content"), 403)
        assert_error(await guest.post(f"/docs/{board_id}/tasks", json={"title": "x"}), 403)
    async with api(server) as anonymous:
        assert_error(await anonymous.get(f"/docs/{board_id}/content"), 401)
    async with api(server, issue_token(secret, "刘洋")) as liu:
        tasks = (await liu.get(f"/docs/{board_id}/content")).json()["content"]["tasks"]
        assert [t["title"] for t in tasks.values()] == ["优惠券配置"]
    rows = await query(
        server.database_url,
        "SELECT DISTINCT origin, author FROM updates WHERE doc_id IN ('b1', 't1')",
    )
    assert set(rows) == {("rest", "刘洋")}


# -- tandem export: versions and errors --------------------------------------------------------


async def test_export_cli_reads_versions_and_explains_failures(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with api(server) as http:
        board_id = await create(http, "board", "看板")
        await http.post(f"/docs/{board_id}/tasks", json={"title": "现在的任务"})
        other_id = await create(http, "doc", "另一个文档")
    await server.stop()

    # A stored version: a snapshot row of an older state.
    old: Doc[Any] = Doc()
    with old.transaction():
        initialize(old, "board", title="看板")
        board.add_task(old, "旧版本的任务")
    engine = create_engine(server.database_url)
    try:
        async with engine.begin() as conn:
            version = (
                await conn.execute(
                    text(
                        "INSERT INTO snapshots (doc_id, number, upto_seq, state, state_vector, "
                        "kind, name, created_by, created_at) VALUES (:doc, (SELECT "
                        "COALESCE(MAX(number), 0) + 1 FROM snapshots WHERE doc_id = :doc), 0, "
                        ":state, :sv, 'named', 'v1', 'local', CURRENT_TIMESTAMP) RETURNING number"
                    ),
                    {"doc": board_id, "state": old.get_update(), "sv": old.get_state()},
                )
            ).scalar_one()
    finally:
        await engine.dispose()

    url = server.database_url
    target = tmp_path / "v.md"
    assert await export_cli(url, board_id, "--version", str(version), "-o", str(target)) == 0
    assert "旧版本的任务" in target.read_text("utf-8")
    assert "现在的任务" not in target.read_text("utf-8")

    failures = [
        (["export", "ghost", "--format", "md"], "no document ghost"),
        (["export", other_id, "--version", str(version)], f"has no version {version}"),
        (["export", "--folder", "no-such-folder", "--out", "x"], "no folder no-such-folder"),
    ]
    for args, message in failures:
        done = run_tandem(url, *args, cwd=tmp_path)
        assert done.returncode == 1, done
        assert message in done.stderr.decode(), done.stderr
        assert done.stdout == b""
    missing = run_tandem(
        f"sqlite+aiosqlite:///{tmp_path / 'absent.db'}", "export", board_id, cwd=tmp_path
    )
    assert missing.returncode == 1 and b"no database at" in missing.stderr
    assert not (tmp_path / "absent.db").exists()
    usage = run_tandem(url, "export", cwd=tmp_path)
    assert usage.returncode == 2 and b"DOC or --folder" in usage.stderr


def _deep_update(depth: int) -> bytes:
    """An update nesting a plain value `depth` levels deep (built on a big stack)."""
    out: list[bytes] = []

    def build() -> None:
        value: Any = "底"
        for _ in range(depth):
            value = [value]
        doc: Doc[Any] = Doc()
        doc.get("tasks", type=Map)["deep"] = Map({"title": "深层任务", "junk": value})
        out.append(doc.get_update())

    previous = threading.stack_size(1 << 30)
    try:
        thread = threading.Thread(target=build)
        thread.start()
    finally:
        threading.stack_size(previous)
    thread.join()
    return out[0]


async def test_deeply_nested_raw_update_neither_kills_the_server_nor_the_export(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with api(server) as http:
        board_id = await create(http, "board", "看板")
        applied = await http.post(f"/docs/{board_id}/updates", content=_deep_update(60_000))
        assert applied.status_code == 200, applied.text
        content = (await http.get(f"/docs/{board_id}/content")).json()
        assert content["content"]["tasks"]["deep"]["title"] == "深层任务"
        assert (await http.get("/docs")).status_code == 200
    assert server.proc is not None and server.proc.poll() is None
    await server.stop()
    done = run_tandem(server.database_url, "export", board_id, "--format", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "深层任务" in done.stdout.decode()
