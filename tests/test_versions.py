"""Version history: named versions that outlive compaction, restore to every connected client,
change summaries, exports at a version or a time. Against real server processes (SQLite and
PostgreSQL where storage matters), plus the document mirroring that restore is built on."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ServerFactory, ServerProcess
from helpers import api, wait_until
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText
from websockets.asyncio.client import connect
from yjs_node import NodeYClient

from client.sync import SyncClient
from server import cli
from server.auth import issue_token
from server.origin import Origin
from server.persistence import migrate, versions, workspace
from server.persistence.sql import SqlStore, create_engine
from server.persistence.writer import Writer
from server.rooms.registry import Registry
from shared import board, discussion, richtext
from shared.documents import call_with_deep_stack, initialize
from shared.mirror import MAX_NESTING, TooDeep, mirror_document, same_content
from shared.protocol import encode_update
from shared.roots import root_shapes

PLAN = (
    "# 双十一活动方案 🎉\n\n"
    "预售 **10 月 24 日** 开始，*尾款* 11 月 11 日 [规则](https://example.com/rules)。\n\n"
    "- 首页 Banner\n- 满减券 300-40\n\n"
    "> 客服话术以 FAQ 为准"
)


def assert_error(response: httpx.Response, status: int, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["message"]
    if field is not None:
        assert error.get("field") == field, error


async def create_doc(http: httpx.AsyncClient, kind: str, title: str) -> str:
    response = await http.post("/docs", json={"kind": kind, "title": title})
    assert response.status_code == 201, response.text
    doc_id: str = response.json()["id"]
    return doc_id


async def export(http: httpx.AsyncClient, doc_id: str, fmt: str, **params: Any) -> bytes:
    response = await http.get(f"/docs/{doc_id}/export", params={"format": fmt, **params})
    assert response.status_code == 200, response.text
    return response.content


async def latest_json(http: httpx.AsyncClient, doc_id: str) -> dict[str, Any]:
    response = await http.get(f"/docs/{doc_id}/export", params={"format": "json"})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def until_server_has(
    http: httpx.AsyncClient,
    doc_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Poll the latest JSON export until `predicate` holds."""
    async with asyncio.timeout(timeout):
        while True:
            data = await latest_json(http, doc_id)
            if predicate(data):
                return data
            await asyncio.sleep(0.03)


async def save_version(http: httpx.AsyncClient, doc_id: str, name: str) -> dict[str, Any]:
    response = await http.post(f"/docs/{doc_id}/versions", json={"name": name})
    assert response.status_code == 201, response.text
    version: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/api/docs/{doc_id}/versions/{version['number']}"
    assert version["kind"] == "named" and version["name"] == name
    return version


async def list_versions(http: httpx.AsyncClient, doc_id: str) -> list[dict[str, Any]]:
    response = await http.get(f"/docs/{doc_id}/versions")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["versions"]
    return found


def doc_text(data: dict[str, Any]) -> str:
    """The plain text of a JSON export of a `doc`."""

    def walk(node: dict[str, Any]) -> str:
        if "text" in node:
            return str(node["text"])
        return "".join(walk(child) for child in node.get("content", []))

    return walk(data["default"])


# --- (a) named versions outlive compaction ------------------------------------------------


async def test_named_version_survives_compaction_and_pruning(
    database_url: str, make_server: ServerFactory
) -> None:
    server = await make_server(
        database_url, TANDEM_COMPACT_AFTER_UPDATES="20", TANDEM_COMMIT_DELAY_MS="5"
    )
    async with api(server) as http:
        # Another document's version first: numbers are counted per document.
        await save_version(http, await create_doc(http, "doc", "别的"), "别的 v1")
        doc_id = await create_doc(http, "doc", "活动方案")
        async with SyncClient(server.ws_url, doc_id) as client:
            await client.wait_synced()
            richtext.set_text(client.doc, PLAN)
            await until_server_has(http, doc_id, lambda d: "FAQ" in doc_text(d))
            at_the_time = {fmt: await export(http, doc_id, fmt) for fmt in ("md", "html", "json")}
            named = await save_version(http, doc_id, "定稿 v1")
            number = named["number"]
            assert number == 1
            seen: dict[int, dict[str, Any]] = {}
            for fmt, body in at_the_time.items():
                assert await export(http, doc_id, fmt, version=number) == body

            # Many small edits, each committed on its own: compaction runs again and again.
            paragraphs = client.doc.get("default", type=XmlFragment)
            first_auto: int | None = None
            for i in range(320):
                if i % 3 == 2:
                    del paragraphs.children[len(paragraphs.children) - 1]
                else:
                    element = paragraphs.children.append(XmlElement("paragraph"))
                    element.children.append(XmlText(f"edit {i} ✍️"))
                await asyncio.sleep(0.01)
                if i == 60:
                    # Remember one automatic snapshot made after the named version.
                    async with asyncio.timeout(15):
                        while first_auto is None:
                            listed = await list_versions(http, doc_id)
                            seen = {v["number"]: v for v in listed}
                            autos = [
                                v["number"]
                                for v in listed
                                if v["kind"] == "auto" and v["number"] > number
                            ]
                            first_auto = min(autos, default=None)
                            await asyncio.sleep(0.05)
            await until_server_has(http, doc_id, lambda d: "edit 318" in doc_text(d))

        # Compaction has pruned the old automatic snapshots, never the named version.
        async with asyncio.timeout(30):
            while True:
                listed = await list_versions(http, doc_id)
                autos = [v["number"] for v in listed if v["kind"] == "auto"]
                if first_auto not in autos and len(autos) == 10:
                    break
                await asyncio.sleep(0.1)
        assert [v["number"] for v in listed] == sorted((v["number"] for v in listed), reverse=True)
        kept = [v for v in listed if v["kind"] == "named"]
        assert [(v["number"], v["name"], v["created_by"]) for v in kept] == [
            (number, "定稿 v1", "local")
        ]
        assert max(autos) > number + 10
        # Pruning renumbers nothing: each version keeps the number it was listed under, and the
        # kept automatic snapshots are the newest ten numbers.
        assert sorted(autos) == list(range(max(autos) - 9, max(autos) + 1))
        for v in listed:
            if v["number"] in seen:
                assert v == seen[v["number"]]

        for fmt, body in at_the_time.items():
            assert await export(http, doc_id, fmt, version=number) == body, fmt
        assert await export(http, doc_id, "md") != at_the_time["md"]
        detail = (await http.get(f"/docs/{doc_id}/versions/{number}")).json()
        assert detail["version"]["number"] == number and detail["version"]["name"] == "定稿 v1"
        assert (
            detail["document"]
            == (
                await http.get(
                    f"/docs/{doc_id}/export", params={"format": "json", "version": number}
                )
            ).json()
        )
    log = server.log()
    assert "compacted" in log and "Traceback" not in log


# --- (b) restore reaches every connected client -------------------------------------------


@pytest.mark.interop
async def test_restore_converges_every_connected_client(
    database_url: str, make_server: ServerFactory
) -> None:
    server = await make_server(database_url)
    async with api(server) as http:
        doc_id = await create_doc(http, "doc", "活动方案")
        author = SyncClient(server.ws_url, doc_id)
        other = SyncClient(server.ws_url, doc_id)
        node = await NodeYClient.start(server.ws_url, doc_id)
        try:
            author.start()
            other.start()
            await author.wait_synced()
            await other.wait_synced()
            await node.wait_synced()
            richtext.set_text(author.doc, PLAN)
            author.doc.get("meta", type=Map)["notes"] = "负责人: 小王"
            await wait_until(lambda: "FAQ" in str(other.doc.get("default", type=XmlFragment)))
            node_old = await node.wait_for(
                lambda s: "FAQ" in s["xml"]["default"] and "notes" in s["map"]["meta"],
                xmls=["default"],
                maps=["meta"],
                texts=["text"],
            )
            old: Doc[Any] = Doc()
            old.apply_update(author.doc.get_update())
            old_model = richtext.read_doc(old)[0].to_json()
            version = await save_version(http, doc_id, "上线前")
            old_md = await export(http, doc_id, "md", version=version["number"])

            # Everyone edits after the version: rich text, meta, a new root, the title.
            richtext.set_text(author.doc, "全部重写\n\n新的 **方案**")
            other.doc.get("meta", type=Map)["notes"] = "负责人: 小李"
            await node.call("xml_insert_paragraph", name="default", index=0, text="node 加的段落")
            await node.call("insert_text", name="text", index=0, value="另一个根 🙂")
            patched = await http.patch(f"/docs/{doc_id}", json={"title": "改名了"})
            assert patched.status_code == 200
            for client in (author, other):
                await wait_until(
                    lambda c=client: (
                        "node 加的段落" in str(c.doc.get("default", type=XmlFragment))
                        and str(c.doc.get("text", type=Text)) == "另一个根 🙂"
                        and "改名了" == c.doc.get("meta", type=Map).get("title")
                    )
                )
            await node.wait_for(
                lambda s: "全部重写" in s["xml"]["default"] and s["text"]["text"],
                xmls=["default"],
                texts=["text"],
            )

            restored = await http.post(f"/docs/{doc_id}/versions/{version['number']}/restore")
            assert restored.status_code == 200, restored.text
            result = restored.json()
            assert result["restored_from"] == version["number"]
            assert result["version"]["name"] == f"restored from version {version['number']}"
            assert result["version"]["kind"] == "named"
            saved_before = result["saved_before"]
            assert saved_before["name"] == f"before restoring version {version['number']}"

            # Every client, without reconnecting, reads the old content again.
            for client in (author, other):
                await wait_until(
                    lambda c=client: (
                        richtext.read_doc(c.doc)[0].to_json() == old_model
                        and str(c.doc.get("text", type=Text)) == ""
                    )
                )
                assert same_content(
                    client.doc.get("default", type=XmlFragment),
                    old.get("default", type=XmlFragment),
                )
                assert same_content(client.doc.get("meta", type=Map), old.get("meta", type=Map))
            node_now = await node.wait_for(
                lambda s: (
                    s["xml"] == node_old["xml"]
                    and s["map"] == node_old["map"]
                    and s["text"] == {"text": ""}
                ),
                xmls=["default"],
                maps=["meta"],
                texts=["text"],
            )
            assert node_now["map"]["meta"]["title"] == "活动方案"
        finally:
            await node.close()
            await author.close()
            await other.close()

        # History is kept, not rewritten; the restore shows in it; the title follows.
        listed = await list_versions(http, doc_id)
        assert [(v["kind"], v["name"]) for v in listed[:3]] == [
            ("named", f"restored from version {version['number']}"),
            ("named", f"before restoring version {version['number']}"),
            ("named", "上线前"),
        ]
        assert listed[0]["created_by"] == "local"
        assert (await http.get(f"/docs/{doc_id}")).json()["title"] == "活动方案"
        assert await export(http, doc_id, "md") == old_md
        assert await export(http, doc_id, "md", version=listed[0]["number"]) == old_md

    # A client that reconnects later gets the restored state from storage.
    async with SyncClient(server.ws_url, doc_id) as late:
        await late.wait_synced()
        assert richtext.read_doc(late.doc)[0].to_json() == old_model


# --- (c) change summaries -----------------------------------------------------------------


async def test_board_diff_names_tasks_and_changed_fields(server: ServerProcess) -> None:
    async with api(server) as http:
        doc_id = await create_doc(http, "board", "双十一任务板")
        async with SyncClient(server.ws_url, doc_id) as client:
            await client.wait_synced()
            doc = client.doc
            board.add_task(doc, "首页 Banner 文案", assignee="wang", task_id="banner")
            board.add_task(doc, "满减券配置", priority="high", task_id="coupon")
            board.add_task(doc, "客服话术", status="in_progress", task_id="faq")
            await until_server_has(http, doc_id, lambda d: len(d["tasks"]) == 3)
            first = await save_version(http, doc_id, "A")

            board.update_task(doc, "banner", title="首页 Banner 文案 v2", assignee="li")
            board.move_task(doc, "coupon", "done")
            board.delete_task(doc, "faq")
            board.add_task(doc, "直播预告", assignee="zhao", task_id="live")
            await until_server_has(http, doc_id, lambda d: "live" in d["tasks"])
            second = await save_version(http, doc_id, "B")

        response = await http.get(
            f"/docs/{doc_id}/diff", params={"from": first["number"], "to": second["number"]}
        )
        assert response.status_code == 200, response.text
        diff = response.json()
        assert diff["kind"] == "board" and diff["changed"] is True
        assert diff["from"]["number"] == first["number"]
        assert diff["to"]["number"] == second["number"]
        changes = diff["changes"]
        assert [(t["task_id"], t["title"], t["assignee"]) for t in changes["tasks_added"]] == [
            ("live", "直播预告", "zhao")
        ]
        assert [(t["task_id"], t["title"]) for t in changes["tasks_removed"]] == [
            ("faq", "客服话术")
        ]
        changed = {
            (c["task_id"], c["field"]): (c["before"], c["after"]) for c in changes["tasks_changed"]
        }
        assert changed[("banner", "title")] == ("首页 Banner 文案", "首页 Banner 文案 v2")
        assert changed[("banner", "assignee")] == ("wang", "li")
        assert changed[("coupon", "status")] == ("todo", "done")
        assert {task for task, _ in changed} == {"banner", "coupon"}
        assert {c["title"] for c in changes["tasks_changed"]} == {
            "首页 Banner 文案 v2",
            "满减券配置",
        }
        assert changes["meta_changed"] == []
        assert diff["summary"] == "1 task added, 1 task removed, 2 tasks changed"

        # `to` defaults to the document now; the reverse direction swaps the lists.
        now = (await http.get(f"/docs/{doc_id}/diff", params={"from": first["number"]})).json()
        assert now["to"] is None and now["changes"] == changes
        back = (
            await http.get(
                f"/docs/{doc_id}/diff", params={"from": second["number"], "to": first["number"]}
            )
        ).json()["changes"]
        assert [t["task_id"] for t in back["tasks_added"]] == ["faq"]
        assert [t["task_id"] for t in back["tasks_removed"]] == ["live"]
        same = await http.get(
            f"/docs/{doc_id}/diff", params={"from": second["number"], "to": second["number"]}
        )
        assert same.json()["changed"] is False and same.json()["summary"] == ""


async def test_doc_and_discussion_diffs(server: ServerProcess) -> None:
    async with api(server) as http:
        doc_id = await create_doc(http, "doc", "FAQ")
        talk_id = await create_doc(http, "discussion", "讨论")
        async with (
            SyncClient(server.ws_url, doc_id) as text_client,
            SyncClient(server.ws_url, talk_id) as talk_client,
        ):
            await text_client.wait_synced()
            await talk_client.wait_synced()
            richtext.set_text(text_client.doc, "第一段\n\n第二段\n\n第三段")
            first_id = discussion.post_message(talk_client.doc, "wang", "初稿好了")
            second_id = discussion.post_message(talk_client.doc, "li", "收到", reply_to=first_id)
            await until_server_has(http, doc_id, lambda d: "第三段" in doc_text(d))
            await until_server_has(http, talk_id, lambda d: len(d["messages"]) == 2)
            text_v1 = await save_version(http, doc_id, "v1")
            talk_v1 = await save_version(http, talk_id, "v1")

            richtext.set_text(text_client.doc, "第一段\n\n第二段改了\n\n第三段\n\n第四段")
            discussion.edit_message(talk_client.doc, first_id, "初稿好了，请看")
            discussion.delete_message(talk_client.doc, second_id)
            third_id = discussion.post_message(talk_client.doc, "zhao", "@wang 已审")
            await until_server_has(http, doc_id, lambda d: "第四段" in doc_text(d))
            await until_server_has(http, talk_id, lambda d: len(d["messages"]) == 3)

        text_diff = (
            await http.get(f"/docs/{doc_id}/diff", params={"from": text_v1["number"]})
        ).json()
        assert text_diff["kind"] == "doc" and text_diff["changed"] is True
        changes = text_diff["changes"]
        assert changes["text_changed"] is True
        assert changes["lines_removed"] == ["第二段"]
        assert changes["lines_added"] == ["第二段改了", "第四段"]
        assert "-第二段" in changes["unified_diff"] and "+第四段" in changes["unified_diff"]
        assert changes["text_before"] == "第一段\n第二段\n第三段"

        talk_diff = (
            await http.get(f"/docs/{talk_id}/diff", params={"from": talk_v1["number"]})
        ).json()
        assert talk_diff["kind"] == "discussion"
        changes = talk_diff["changes"]
        assert [(m["id"], m["author"]) for m in changes["messages_added"]] == [(third_id, "zhao")]
        assert changes["messages_edited"] == [
            {"id": first_id, "author": "wang", "before": "初稿好了", "after": "初稿好了，请看"}
        ]
        assert [(m["id"], m["body"]) for m in changes["messages_deleted"]] == [(second_id, "收到")]
        assert changes["messages_removed"] == []
        assert talk_diff["summary"] == "1 message added, 1 message edited, 1 message deleted"


# --- (d) exports at a time, and what is refused -------------------------------------------


async def test_export_at_a_time_picks_the_version_of_that_time(
    database_url: str, make_server: ServerFactory
) -> None:
    server = await make_server(database_url)
    async with api(server) as http:
        doc_id = await create_doc(http, "doc", "Plan / 方案")
        async with SyncClient(server.ws_url, doc_id) as client:
            await client.wait_synced()
            saved = []
            for text in ("版本一", "版本二"):
                richtext.set_text(client.doc, text)
                await until_server_has(http, doc_id, lambda d, t=text: doc_text(d) == t)
                saved.append(await save_version(http, doc_id, text))
                await asyncio.sleep(0.05)
            richtext.set_text(client.doc, "现在")
            await until_server_has(http, doc_id, lambda d: doc_text(d) == "现在")

        first, second = saved
        t1 = datetime.fromisoformat(first["created_at"])
        t2 = datetime.fromisoformat(second["created_at"])
        assert t1 < t2

        async def text_at(when: datetime) -> tuple[str, str]:
            response = await http.get(
                f"/docs/{doc_id}/export", params={"format": "json", "at": when.isoformat()}
            )
            assert response.status_code == 200, response.text
            return doc_text(response.json()), response.headers["x-tandem-version"]

        assert await text_at(t1) == ("版本一", str(first["number"]))
        assert await text_at(t1 + (t2 - t1) / 2) == ("版本一", str(first["number"]))
        assert await text_at(t2) == ("版本二", str(second["number"]))
        # After the newest version: that version (its resolution), not edits made since.
        assert await text_at(t2 + timedelta(days=1)) == ("版本二", str(second["number"]))
        assert doc_text(await latest_json(http, doc_id)) == "现在"
        # The same moment in another time zone; an unescaped "+" arrives as a space.
        shanghai = t1.astimezone(datetime.fromisoformat("2025-01-01T00:00:00+08:00").tzinfo)
        raw = await http.get(f"/docs/{doc_id}/export?format=md&at={shanghai.isoformat()}")
        assert raw.status_code == 200, raw.text
        assert "版本一" in raw.text and raw.headers["x-tandem-version"] == str(first["number"])
        too_early = await http.get(
            f"/docs/{doc_id}/export", params={"at": (t1 - timedelta(hours=1)).isoformat()}
        )
        assert_error(too_early, 404, "at")

        # Headers: shown inline with a sensible name; HTML cannot run anything.
        page = await http.get(
            f"/docs/{doc_id}/export", params={"format": "html", "version": first["number"]}
        )
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["x-content-type-options"] == "nosniff"
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "sandbox" in csp and "script" not in csp
        disposition = page.headers["content-disposition"]
        assert disposition.startswith('inline; filename="Plan _ ') and ".html" in disposition
        assert "filename*=UTF-8''Plan%20_%20%E6%96%B9%E6%A1%88%20%28version%20" in disposition
        markdown = await http.get(f"/docs/{doc_id}/export", params={"format": "md"})
        assert markdown.headers["content-type"] == "text/markdown; charset=utf-8"
        assert "x-tandem-version" not in markdown.headers
        assert markdown.headers["content-disposition"].endswith(".md")


async def test_version_errors(make_server: ServerFactory) -> None:
    secret = "s3cret-for-tests"
    server = await make_server(TANDEM_SECRET=secret)
    token = issue_token(secret, "wang")
    async with api(server, token) as http:
        doc_id = await create_doc(http, "board", "任务板")
        version = await save_version(http, doc_id, "A")
        number = version["number"]
        missing = number + 1000

        assert_error(
            await http.get(f"/docs/{doc_id}/export", params={"format": "pdf"}), 422, "format"
        )
        assert_error(
            await http.get(f"/docs/{doc_id}/export", params={"version": missing}), 404, "version"
        )
        assert_error(
            await http.get(
                f"/docs/{doc_id}/export", params={"version": number, "at": "2025-01-01T00:00:00Z"}
            ),
            422,
            "version",
        )
        assert_error(
            await http.get(f"/docs/{doc_id}/export", params={"at": "yesterday"}), 422, "at"
        )
        assert_error(await http.get(f"/docs/{doc_id}/export", params={"bogus": "1"}), 422, "bogus")
        assert_error(await http.get(f"/docs/{doc_id}/versions/{missing}"), 404)
        assert_error(await http.post(f"/docs/{doc_id}/versions/{missing}/restore"), 404)
        assert_error(await http.get(f"/docs/{doc_id}/diff", params={"from": missing}), 404, "from")
        assert_error(
            await http.get(f"/docs/{doc_id}/diff", params={"from": number, "to": missing}),
            404,
            "to",
        )
        assert_error(await http.get(f"/docs/{doc_id}/diff"), 422, "from")
        assert_error(await http.post(f"/docs/{doc_id}/versions", json={"name": "  "}), 422, "name")
        assert_error(await http.post(f"/docs/{doc_id}/versions", json={}), 422, "name")
        for path in ("versions", "export", f"versions/{number}", "diff?from=1"):
            assert_error(await http.get(f"/docs/nope/{path}"), 404)

        # A version of another document is not this document's.
        other_id = await create_doc(http, "board", "另一个")
        assert_error(await http.get(f"/docs/{other_id}/versions/{number}"), 404)
        assert_error(await http.post(f"/docs/{other_id}/versions/{number}/restore"), 404)
        created = (await http.get(f"/docs/{doc_id}/versions/{number}")).json()
        assert created["version"]["created_by"] == "wang"
        assert created["document"]["kind"] == "board" and created["document"]["tasks"] == {}

    async with api(server) as anonymous:
        assert_error(await anonymous.get(f"/docs/{doc_id}/versions"), 401)
    read_only = issue_token(secret, "guest", read_only=True)
    async with api(server, read_only) as guest:
        assert (await guest.get(f"/docs/{doc_id}/versions")).status_code == 200
        assert (
            await guest.get(f"/docs/{doc_id}/export", params={"format": "md"})
        ).status_code == 200
        assert_error(await guest.post(f"/docs/{doc_id}/versions", json={"name": "x"}), 403)
        assert_error(await guest.post(f"/docs/{doc_id}/versions/{number}/restore"), 403)
    only_other = issue_token(secret, "wang", doc=other_id)
    async with api(server, only_other) as limited:
        assert_error(await limited.get(f"/docs/{doc_id}/export"), 403)
        assert_error(await limited.post(f"/docs/{doc_id}/versions/{number}/restore"), 403)


# --- mirroring, the core of restore -------------------------------------------------------


def rich_source() -> Doc[Any]:
    doc: Doc[Any] = Doc()
    with doc.transaction():
        initialize(doc, "doc", title="方案")
        richtext.set_text(doc, PLAN)
        plain = doc.get("text", type=Text)
        plain.insert(0, "héllo wörld 🙂")
        formatted = doc.get("formatted", type=Text)
        formatted.insert(0, "粗体", {"bold": True})
        formatted.insert(len(formatted), " plain", {})
        formatted.insert_embed(len(formatted), {"image": "a.png"}, {})
        items = doc.get("items", type=Array)
        items.extend([1, "two", True, None, {"plain": [1, 2]}])
        items.append(Map({"k": "v", "nested": Array([Map({"deep": 1})])}))
        mixed = doc.get("mixed", type=Map)
        mixed["bytes"] = b"\x00\x01"
        mixed["text"] = Text("in a map")
        mixed["list"] = Array(["a", "b", "c"])
    paragraph = doc.get("default", type=XmlFragment).children[1]
    assert isinstance(paragraph, XmlElement)
    paragraph.attributes["textAlign"] = "center"
    return doc


def scramble(doc: Doc[Any], rng: random.Random) -> None:
    """Random edits of every kind to a copy of the source."""
    with doc.transaction():
        fragment = doc.get("default", type=XmlFragment)
        if rng.random() < 0.5:
            richtext.set_text(doc, "完全不同\n\n**another**")
        else:
            fragment.children.insert(0, XmlElement("heading", {"level": 2}))
        plain = doc.get("text", type=Text)
        if rng.random() < 0.5:
            plain.insert(rng.randrange(0, 3), "XY")
        else:
            del plain[0:2]
        formatted = doc.get("formatted", type=Text)
        formatted.format(0, len(formatted) - 1, {"italic": True})
        items = doc.get("items", type=Array)
        if rng.random() < 0.5:
            items.insert(rng.randrange(0, len(items)), "inserted")
        else:
            del items[rng.randrange(0, len(items))]
        last = items[len(items) - 1]
        if isinstance(last, Map):
            last["k"] = "changed"
        mixed = doc.get("mixed", type=Map)
        mixed["extra"] = Map({"x": 1})
        if rng.random() < 0.5:
            del mixed["text"]
        doc.get("mixed", type=Map)["list"] = Array(["z"])
        doc.get("meta", type=Map)["title"] = "改了"
        doc.get("newroot", type=Text).insert(0, "only in the live document")
        doc.get("newmap", type=Map)["k"] = 1


def readable(doc: Doc[Any]) -> dict[str, Any]:
    copy: Doc[Any] = Doc()
    copy.apply_update(doc.get_update())
    return {name: shape for name, shape in root_shapes(copy).items()}


@pytest.mark.parametrize("seed", range(8))
def test_mirror_makes_a_replica_equal_and_peers_follow(seed: int) -> None:
    rng = random.Random(seed)
    source = rich_source()
    live: Doc[Any] = Doc()
    live.apply_update(source.get_update())
    scramble(live, rng)
    peer: Doc[Any] = Doc()
    peer.apply_update(live.get_update())
    updates: list[bytes] = []
    live.observe(lambda event: updates.append(event.update))
    with live.transaction():
        call_with_deep_stack(lambda: mirror_document(live, source))
    assert len(updates) == 1
    peer.apply_update(updates[0])
    for doc in (live, peer):
        assert readable(doc) == readable(source)
        for name, kind in [
            ("default", XmlFragment),
            ("text", Text),
            ("formatted", Text),
            ("items", Array),
            ("mixed", Map),
            ("meta", Map),
        ]:
            assert same_content(doc.get(name, type=kind), source.get(name, type=kind)), name
        assert str(doc.get("newroot", type=Text)) == ""
        assert len(doc.get("newmap", type=Map)) == 0
        assert richtext.read_doc(doc)[0] == richtext.read_doc(source)[0]
    # Already equal: mirroring again changes nothing.
    updates.clear()
    with live.transaction():
        mirror_document(live, source)
    assert updates == []


def test_mirror_keeps_what_did_not_change_and_edits_text_minimally() -> None:
    source: Doc[Any] = Doc()
    source.get("tasks", type=Map)["t1"] = Map({"title": "one", "tags": Array(["a"])})
    source.get("tasks", type=Map)["t2"] = Map({"title": "two"})
    source.get("text", type=Text).insert(0, "双十一 campaign plan")
    live: Doc[Any] = Doc()
    live.apply_update(source.get_update())
    untouched = live.get("tasks", type=Map)["t2"]
    live.get("tasks", type=Map)["t1"]["title"] = "ONE"
    text = live.get("text", type=Text)
    text.insert(len("双十一 ".encode()), "big ")
    with live.transaction():
        mirror_document(live, source)
    assert live.get("tasks", type=Map).to_py() == source.get("tasks", type=Map).to_py()
    # The same Map, not a copy: a concurrent edit to it still lands in the document.
    untouched["late"] = "edit"
    assert live.get("tasks", type=Map)["t2"]["late"] == "edit"
    assert str(live.get("text", type=Text)) == "双十一 campaign plan"


def test_mirror_refuses_absurd_nesting_before_changing_anything() -> None:
    source: Doc[Any] = Doc()
    root = source.get("deep", type=Map)
    current = root
    for _ in range(MAX_NESTING + 1):
        child: Map[Any] = Map()
        current["child"] = child
        current = child
    live: Doc[Any] = Doc()
    live.get("text", type=Text).insert(0, "keep me")
    with pytest.raises(TooDeep):
        call_with_deep_stack(lambda: mirror_document(live, source))
    assert str(live.get("text", type=Text)) == "keep me"


# --- hostile content ----------------------------------------------------------------------


def on_big_stack(fn: Callable[[], bytes]) -> bytes:
    """Run `fn` where pycrdt may convert very deeply nested values (a default stack is too
    small for them)."""
    out: list[bytes] = []
    previous = threading.stack_size(1 << 30)
    try:
        thread = threading.Thread(target=lambda: out.append(fn()))
        thread.start()
    finally:
        threading.stack_size(previous)
    thread.join()
    return out[0]


async def test_versions_of_a_deeply_nested_document(make_server: ServerFactory) -> None:
    """A plain value nested 60,000 levels deep is saved, diffed, exported and restored
    without harm (documents in memory: versions still work)."""
    server = await make_server("memory://")
    depth = 60_000

    def deep_update() -> bytes:
        value: Any = "bottom"
        for _ in range(depth):
            value = [value]
        doc: Doc[Any] = Doc()
        doc.get("junk", type=Map)["deep"] = value
        return doc.get_update()

    def delete_it(state: bytes) -> bytes:
        doc: Doc[Any] = Doc()
        doc.apply_update(state)
        before = doc.get_state()
        del doc.get("junk", type=Map)["deep"]
        return doc.get_update(before)

    deep = on_big_stack(deep_update)
    async with api(server) as http:
        doc_id = await create_doc(http, "doc", "深")
        async with connect(f"{server.ws_url}/{doc_id}", max_size=None) as ws:
            await ws.recv()  # sync step 1
            await ws.send(encode_update(deep))
            # Frames are handled in order: the answer to this sync step 1 (a step 2 carrying
            # the deep value) shows the update is in the room.
            await ws.send(b"\x00\x00\x01\x00")
            async with asyncio.timeout(10):
                while True:
                    frame = await ws.recv()
                    if isinstance(frame, bytes) and frame[:2] == b"\x00\x01":
                        assert len(frame) > len(deep) // 2
                        break
            version = await save_version(http, doc_id, "with junk")
            await ws.send(encode_update(on_big_stack(lambda: delete_it(deep))))
            await ws.send(b"\x00\x00\x01\x00")
            async with asyncio.timeout(10):
                while (frame := await ws.recv())[:2] != b"\x00\x01":
                    pass

            diff = await http.get(f"/docs/{doc_id}/diff", params={"from": version["number"]})
            assert diff.status_code == 200, diff.text
            for fmt in ("md", "html", "json"):
                await export(http, doc_id, fmt, version=version["number"])
            detail = await http.get(f"/docs/{doc_id}/versions/{version['number']}")
            assert detail.status_code == 200

            restored = await http.post(f"/docs/{doc_id}/versions/{version['number']}/restore")
            assert restored.status_code == 200, restored.text
            # The restored deep value reaches the connected client again.
            async with asyncio.timeout(10):
                while True:
                    frame = await ws.recv()
                    if isinstance(frame, bytes) and len(frame) > len(deep) // 2:
                        break
    assert server.proc is not None and server.proc.poll() is None


# --- restore while the document keeps changing ---------------------------------------------


async def test_restore_of_a_document_edited_without_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When edits keep arriving while the restore is worked out on a copy, the restore is made
    in place on the live document instead, and is still exact."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'tandem.db'}")
    await migrate.upgrade(engine)
    store = SqlStore(engine)
    writer = Writer(store, delay=0.002)
    registry = Registry(store, writer, grace=0.05)
    commits = asyncio.get_running_loop().create_task(writer.run())
    in_place: list[int] = []
    original = versions._mirror_in_place

    def counting(old: Doc[Any], number: int, doc: Doc[Any]) -> BaseException | None:
        in_place.append(number)
        return original(old, number, doc)

    monkeypatch.setattr(versions, "_mirror_in_place", counting)
    try:
        async with engine.begin() as conn:
            await workspace.create_document(conn, "plan", kind="doc", title="方案")
        async with registry.use("plan") as room:
            room.edit(Origin("rest", "wang"), lambda doc: initialize(doc, "doc", title="方案"))
            room.edit(Origin("rest", "wang"), lambda doc: richtext.set_text(doc, PLAN))
            saved = await versions.create_version(
                engine, store, writer, "plan", "v1", created_by="wang"
            )
            room.edit(Origin("rest", "li"), lambda doc: richtext.set_text(doc, "改写"))
            expected = richtext.read_doc(
                versions.doc_from_state(
                    (await versions.version_state(engine, "plan", saved.number))[1]
                )
            )[0]

            stop = asyncio.Event()

            async def keep_editing() -> None:
                count = 0
                while not stop.is_set():
                    count += 1
                    room.edit(
                        Origin("ws", "zhao"),
                        lambda doc, n=count: doc.get("noise", type=Map).__setitem__("n", n),
                    )
                    await asyncio.sleep(0)

            noise = asyncio.get_running_loop().create_task(keep_editing())
            try:
                restored = await versions.restore_version(
                    engine, store, registry, "plan", saved.number, user="wang"
                )
            finally:
                stop.set()
                await noise
            assert in_place == [saved.number]
            assert richtext.read_doc(room.doc)[0] == expected
            assert restored.restored.name == f"restored from version {saved.number}"
            assert restored.restored.created_by == "wang"
            # What the restore replaced is kept, exactly as the room held it then.
            before = await versions.version_state(engine, "plan", restored.before.number)
            replaced = versions.doc_from_state(before[1])
            assert richtext.plain_text(richtext.read_doc(replaced)[0].content) == "改写"
            assert replaced.get("noise", type=Map).get("n") is not None
        listed = await versions.list_versions(engine, "plan")
        assert [v.name for v in listed] == [
            restored.restored.name,
            f"before restoring version {saved.number}",
            "v1",
        ]
        assert [v.number for v in listed] == [3, 2, 1]
        restored = restored.restored
        at = await versions.version_at(engine, "plan", restored.created_at)
        assert at is not None and at.number == restored.number
    finally:
        await registry.close()
        await writer.close()
        commits.cancel()
        await store.close()


# --- per-document numbers and undoing a restore ---------------------------------------------


async def task_titles(http: httpx.AsyncClient, doc_id: str, **params: Any) -> list[str]:
    data = json.loads(await export(http, doc_id, "json", **params))
    return sorted(t["title"] for t in data["tasks"].values())


async def test_versions_are_numbered_per_document(
    database_url: str, make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await make_server(database_url)
    async with api(server) as http:
        first = await create_doc(http, "board", "甲")
        second = await create_doc(http, "board", "乙")
        for doc_id, title in ((first, "甲一"), (second, "乙一"), (second, "乙二"), (first, "甲二")):
            added = await http.post(f"/docs/{doc_id}/tasks", json={"title": title})
            assert added.status_code == 201, added.text
            name = title.replace("一", " v1").replace("二", " v2")
            assert (await save_version(http, doc_id, name))["number"] == int(name[-1])
        for doc_id, prefix in ((first, "甲"), (second, "乙")):
            listed = await list_versions(http, doc_id)
            assert [(v["number"], v["name"]) for v in listed] == [
                (2, f"{prefix} v2"),
                (1, f"{prefix} v1"),
            ]
            detail = (await http.get(f"/docs/{doc_id}/versions/1")).json()
            assert detail["version"]["name"] == f"{prefix} v1"
            assert await task_titles(http, doc_id, version=1) == [f"{prefix}一"]
            diff = (await http.get(f"/docs/{doc_id}/diff", params={"from": 1, "to": 2})).json()
            assert [t["title"] for t in diff["changes"]["tasks_added"]] == [f"{prefix}二"]
        assert_error(await http.get(f"/docs/{first}/versions/3"), 404)
        # Saved at the same time, each on its own connection: no number twice, none skipped.
        saved = await asyncio.gather(*(save_version(http, first, f"同时 {i}") for i in range(6)))
        assert sorted(v["number"] for v in saved) == [3, 4, 5, 6, 7, 8]

    # `tandem export DOC --version N` reads the document's version N.
    target = tmp_path / "v1.json"
    args = [second, "--format", "json", "--version", "1", "-o", str(target)]
    done = await asyncio.to_thread(
        cli.main, ["export", *args, "--database-url", server.database_url]
    )
    assert done == 0
    assert sorted(t["title"] for t in json.loads(target.read_text("utf-8"))["tasks"].values()) == [
        "乙一"
    ]


async def test_restore_can_be_undone(database_url: str, make_server: ServerFactory) -> None:
    server = await make_server(database_url)
    async with api(server) as http:
        doc_id = await create_doc(http, "board", "看板")
        await http.post(f"/docs/{doc_id}/tasks", json={"title": "旧任务"})
        assert (await save_version(http, doc_id, "v1"))["number"] == 1
        await http.post(f"/docs/{doc_id}/tasks", json={"title": "新任务"})
        assert await task_titles(http, doc_id) == ["新任务", "旧任务"]

        restored = await http.post(f"/docs/{doc_id}/versions/1/restore")
        assert restored.status_code == 200, restored.text
        result = restored.json()
        assert (result["saved_before"]["number"], result["saved_before"]["name"]) == (
            2,
            "before restoring version 1",
        )
        assert (result["version"]["number"], result["version"]["name"]) == (
            3,
            "restored from version 1",
        )
        assert await task_titles(http, doc_id) == ["旧任务"]
        assert await task_titles(http, doc_id, version=2) == ["新任务", "旧任务"]

        # Restoring the saved version undoes the restore.
        undone = await http.post(f"/docs/{doc_id}/versions/2/restore")
        assert undone.status_code == 200, undone.text
        assert undone.json()["saved_before"]["name"] == "before restoring version 2"
        assert await task_titles(http, doc_id) == ["新任务", "旧任务"]
        listed = await list_versions(http, doc_id)
        assert [(v["number"], v["name"]) for v in listed] == [
            (5, "restored from version 2"),
            (4, "before restoring version 2"),
            (3, "restored from version 1"),
            (2, "before restoring version 1"),
            (1, "v1"),
        ]
