"""client/documents.py (typed operations) and client/sync_client.py (the synchronous facade),
against a live server, checked over REST."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from conftest import ServerProcess
from helpers import api
from pycrdt import Doc

from client.documents import BoardClient, DiscussionClient, TextClient, mentions_in
from client.sync import SyncClient
from client.sync_client import open_document


async def create(server: ServerProcess, kind: str) -> str:
    async with api(server) as http:
        created = await http.post("/docs", json={"kind": kind, "title": f"{kind} 测试"})
        assert created.status_code == 201, created.text
        return str(created.json()["id"])


async def content(server: ServerProcess, doc_id: str) -> dict[str, Any]:
    async with api(server) as http:
        answer = await http.get(f"/docs/{doc_id}/content")
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()["content"]
        return result


def test_mentions_are_user_ids_after_an_at_sign() -> None:
    body = "@liu.yang 请看 @王芳, and @liu.yang again; mail me at a@b.c. @x"
    assert mentions_in(body) == ["liu.yang", "王芳", "x"]


async def test_board_operations_reach_the_server(server: ServerProcess) -> None:
    board_id = await create(server, "board")
    async with SyncClient(server.ws_url, board_id) as client:
        await client.wait_synced()
        board = BoardClient(client)
        first = board.add("价格巡检", priority="high")
        second = board.add("客服排班")
        board.assign(first, "刘洋")
        board.set_due(first, "2026-11-08")
        board.move(second, "in_progress")
        board.complete(first)
        with pytest.raises(ValueError):
            board.add("bad", priority="someday")
        assert board.find("客服排班") == board.task(second)
        await client.wait_stored()
    tasks = (await content(server, board_id))["tasks"]
    assert tasks[first]["status"] == "done" and tasks[first]["assignee"] == "刘洋"
    assert tasks[first]["due"] == "2026-11-08"
    assert tasks[second]["status"] == "in_progress"


async def test_text_is_appended_after_what_is_there(server: ServerProcess) -> None:
    doc_id = await create(server, "doc")
    async with SyncClient(server.ws_url, doc_id) as client:
        await client.wait_synced()
        text = TextClient(client)
        text.replace("# 计划\n\n第一段")
        text.append("第二段 **重要**\n\n- 一\n- 二")
        assert text.text() == "计划\n\n第一段\n\n第二段 重要\n\n一\n二"
        await client.wait_stored()
    blocks = (await content(server, doc_id))["default"]["content"]
    assert [b["type"] for b in blocks] == ["heading", "paragraph", "paragraph", "bulletList"]


async def test_posts_and_replies_carry_their_mentions(server: ServerProcess) -> None:
    doc_id = await create(server, "discussion")
    async with SyncClient(server.ws_url, doc_id) as client:
        await client.wait_synced()
        talk = DiscussionClient(client)
        question = talk.post("刘洋", "@王芳 活动页几点上线?")
        answer = talk.reply(question, "王芳", "十点, cc @liu.yang")
        with pytest.raises(KeyError):
            talk.reply("no-such-message", "王芳", "?")
        await client.wait_stored()
    messages = {m["id"]: m for m in (await content(server, doc_id))["messages"]}
    assert messages[question]["mentions"] == ["王芳"]
    assert messages[answer]["reply_to"] == question
    assert messages[answer]["mentions"] == ["liu.yang"]


def test_helpers_work_on_a_bare_document() -> None:
    doc: Doc[Any] = Doc()
    board = BoardClient(doc)
    task = board.add("离线")
    assert [t.id for t in board.tasks()] == [task]


async def test_the_synchronous_facade_edits_from_a_plain_thread(server: ServerProcess) -> None:
    board_id = await create(server, "board")

    def script() -> tuple[str, dict[int, dict[str, Any]]]:
        with (
            open_document(server.ws_url, board_id) as handle,
            open_document(server.ws_url, board_id) as other,
        ):
            assert handle.state == "synced"
            handle.set_presence({"user": {"name": "脚本"}})
            with handle.transaction() as doc:
                task = BoardClient(doc).add("脚本任务")
                BoardClient(doc).assign(task, "刘洋")
            handle.wait_stored(timeout=10)
            for _ in range(100):
                if other.presence():
                    break
                threading.Event().wait(0.05)
            seen = other.read(lambda d: BoardClient(d).task(task))
            for _ in range(100):
                if seen is not None:
                    break
                threading.Event().wait(0.05)
                seen = other.read(lambda d: BoardClient(d).task(task))
            assert seen is not None and seen.assignee == "刘洋"
            return task, other.presence()

    task, presence = await asyncio.to_thread(script)
    assert [state["user"]["name"] for state in presence.values()] == ["脚本"]
    assert (await content(server, board_id))["tasks"][task]["title"] == "脚本任务"
