"""Documents that only stock Yjs clients wrote are workspace documents.

Most Yjs applications create a document by opening a new room id. Here stock Yjs +
y-websocket clients in Node create documents over the socket with no REST call, and the
workspace lists them (title = id, created by the token's user), recognises their kind from
their content (`raw` when nothing fits), reads them, exports them, versions and restores them,
and keeps their record in step when a client edits `meta.title` or `meta.tags`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from conftest import ServerFactory, ServerProcess
from helpers import api
from test_raw import TIPTAP
from yjs_node import NodeYClient

from server.auth import issue_token

SECRET = "any-client-secret"


async def _record(http: httpx.AsyncClient, doc_id: str) -> dict[str, Any]:
    response = await http.get(f"/docs/{doc_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _wait_record(
    http: httpx.AsyncClient, doc_id: str, **expected: Any
) -> dict[str, Any]:
    """The document's record once every `expected` field has that value (10 s at most)."""
    seen: dict[str, Any] = {}

    async def check() -> bool:
        nonlocal seen
        response = await http.get(f"/docs/{doc_id}")
        if response.status_code != 200:
            seen = {"status": response.status_code, "body": response.text}
            return False
        seen = response.json()
        return all(seen.get(key) == value for key, value in expected.items())

    try:
        await wait_until_async(check, timeout=10)
    except TimeoutError:
        pytest.fail(f"record of {doc_id} never had {expected}: last seen {seen}")
    return seen


async def wait_until_async(check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.1)


@pytest.fixture
async def secured(make_server: ServerFactory, database_url: str) -> ServerProcess:
    return await make_server(database_url, TANDEM_SECRET=SECRET)


async def test_tiptap_document_from_stock_clients(secured: ServerProcess) -> None:
    token = issue_token(SECRET, "王小明")
    doc_id = "campaign-plan"
    async with await NodeYClient.start(secured.ws_url, doc_id, token) as writer:
        await writer.call("wait_synced")
        await writer.call("xml_build", name="default", nodes=TIPTAP)
        async with api(secured, token) as http:
            record = await _wait_record(http, doc_id, kind="doc")
            assert record["title"] == doc_id
            assert record["created_by"] == "王小明"
            assert record["folder_id"] is None
            listed = (await http.get("/docs")).json()["documents"]
            assert [d["id"] for d in listed] == [doc_id]
            assert (await http.get("/docs", params={"kind": "doc"})).json()["documents"]

            md = (await http.get(f"/docs/{doc_id}/export", params={"format": "md"})).text
            assert "## 双十一 计划" in md
            assert "**王小明**" in md
            assert "- 准备" in md and "- 上线 🎉" in md
            assert "```python\nprint('双十一')\n```" in md
            assert "小心 🎉" in md  # an unknown node keeps its text
            page = (await http.get(f"/docs/{doc_id}/export", params={"format": "html"})).text
            assert "<h2>双十一 计划</h2>" in page
            assert "<li>" in page and "上线 🎉" in page
            assert "<pre" in page and "print(&#x27;双十一&#x27;)" in page

            saved = await http.post(f"/docs/{doc_id}/versions", json={"name": "draft"})
            assert saved.status_code == 201, saved.text
            assert saved.json()["number"] == 1

            # Another stock client edits; the version restores what was saved.
            await writer.call("xml_build", name="default", nodes=[
                {"type": "paragraph", "content": [{"type": "text", "text": "后来加的"}]}
            ])
            await _wait_text(http, doc_id, "后来加的", present=True)
            restored = await http.post(f"/docs/{doc_id}/versions/1/restore")
            assert restored.status_code == 200, restored.text
            await _wait_text(http, doc_id, "后来加的", present=False)
            listed_versions = (await http.get(f"/docs/{doc_id}/versions")).json()["versions"]
            named = {v["name"]: v["number"] for v in listed_versions if v["kind"] == "named"}
            assert named["draft"] == 1
            assert named["before restoring version 1"] > 1


async def _wait_text(http: httpx.AsyncClient, doc_id: str, text: str, *, present: bool) -> None:
    seen = ""

    async def check() -> bool:
        nonlocal seen
        seen = (await http.get(f"/docs/{doc_id}/export", params={"format": "md"})).text
        return (text in seen) == present

    try:
        await wait_until_async(check, timeout=10)
    except TimeoutError:
        pytest.fail(f"{text!r} {'never appeared' if present else 'stayed'} in {seen!r}")


async def test_raw_document_and_client_meta(secured: ServerProcess) -> None:
    token = issue_token(SECRET, "li")
    async with await NodeYClient.start(secured.ws_url, "inventory", token) as client:
        await client.call("wait_synced")
        await client.call("map_set", name="stock", key="苹果", value=12)
        await client.call("array_push", name="log", values=["入库 🍎", {"n": 3}])
        async with api(secured, token) as http:
            record = await _wait_record(http, "inventory", kind="raw")
            assert record["title"] == "inventory" and record["created_by"] == "li"
            content = (await http.get("/docs/inventory/content")).json()
            assert content["kind"] == "raw"
            assert content["content"]["roots"]["stock"] == {"苹果": 12}
            assert content["content"]["roots"]["log"] == ["入库 🍎", {"n": 3}]

            # A client that names its document in meta: the record follows.
            await client.call("map_set", name="meta", key="title", value="库存 📦")
            await client.call("map_set", name="meta", key="tags", value=["ops", "仓库"])
            await _wait_record(http, "inventory", title="库存 📦", tags=["ops", "仓库"])

            # Content that becomes a board's is re-recognised.
            await client.call("map_set", name="tasks", key="t1", value={"title": "盘点"})
            await _wait_record(http, "inventory", kind="board")


async def test_title_and_tags_agree_between_record_and_meta(secured: ServerProcess) -> None:
    token = issue_token(SECRET, "ops")
    async with api(secured, token) as http:
        created = await http.post(
            "/docs", json={"kind": "board", "title": "上线", "id": "launch", "tags": ["q4", "运营"]}
        )
        assert created.status_code == 201, created.text
        async with await NodeYClient.start(secured.ws_url, "launch", token) as client:
            await client.call("wait_synced")
            meta = (await client.call("map_json", name="meta"))["json"]
            assert meta["title"] == "上线" and meta["tags"] == ["q4", "运营"]

            patched = await http.patch("/docs/launch", json={"title": "上线 v2", "tags": ["q1"]})
            assert patched.status_code == 200, patched.text

            async def meta_follows() -> bool:
                meta = (await client.call("map_json", name="meta"))["json"]
                return bool(meta.get("title") == "上线 v2" and meta.get("tags") == ["q1"])

            await wait_until_async(meta_follows, timeout=10)

            # And back: a client's edit of meta is the record's, the kind stays a board.
            await client.call("map_set", name="meta", key="tags", value=["q1", "已延期"])
            record = await _wait_record(http, "launch", tags=["q1", "已延期"])
            assert record["kind"] == "board" and record["title"] == "上线 v2"
