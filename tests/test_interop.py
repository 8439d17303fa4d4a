"""Interop: stock Yjs clients (yjs + y-websocket in Node) and pycrdt clients in one room.

Positions differ between the two libraries: Yjs (Node) counts Y.Text positions in UTF-16 code
units, pycrdt counts Text and XmlText positions in UTF-8 bytes. Edits are therefore described
by an anchor substring and converted per side (`node_index`, `py_index`).

Concurrent edits are issued together (asyncio.gather), so any client may or may not have seen
the others' edits when it makes its own. Positions are chosen so that every edit is valid
either way: a Node client only edits text at a position whose prefix no concurrent edit
changes (inserts at the very same position as another client's insert are fine), and the
pycrdt client computes positions from its own current text inside one synchronous block.

Y.XmlFragment strings: Yjs's toString() and pycrdt's str() use the same format
(`<tag k="v">text</tag>`, text not escaped), except that Yjs sorts an element's attributes by
name while pycrdt (yrs) writes them in hash-map order, which varies from run to run. The
pycrdt side is compared in Yjs's form, rendered from the tree by `yjs_xml`; `py_snapshot` also
checks that pycrdt's own string is that form once attributes are sorted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ServerProcess
from helpers import metric
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText
from websockets.asyncio.client import ClientConnection, connect
from yjs_node import NodeYClient

from client.sync import SyncClient
from shared.protocol import MSG_SYNC, SYNC_STEP1, decode_message

pytestmark = pytest.mark.interop

TEXT, MAP, XML = "text", "map", "xml"
SEED_TEXT = "双十一活动 🎉 客服 FAQ 😀🚀"
CONVERGE_TIMEOUT = 15.0


# -- positions ---------------------------------------------------------------------------------


def _find(s: str, anchor: str) -> int:
    assert s.count(anchor) == 1, f"{anchor!r} must occur exactly once in {s!r}"
    return s.index(anchor)


def utf16_len(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


def node_index(s: str, anchor: str, after: int = 0) -> int:
    """Yjs position of `anchor` in `s` (plus `after` code points): UTF-16 code units."""
    return utf16_len(s[: _find(s, anchor) + after])


def py_index(s: str, anchor: str, after: int = 0) -> int:
    """pycrdt position of `anchor` in `s` (plus `after` code points).

    pycrdt indexes Text and XmlText by UTF-8 byte offset, not by code point, so a str index
    i becomes len(s[:i].encode()).
    """
    return len(s[: _find(s, anchor) + after].encode())


def replaced(s: str, old: str, new: str) -> str:
    """`s` with its single occurrence of `old` replaced: the expected result of an edit."""
    _find(s, old)
    return s.replace(old, new)


# -- edits ---------------------------------------------------------------------------------


def py_insert(text: Text | XmlText, anchor: str, value: str, after: int = 0) -> None:
    text.insert(py_index(str(text), anchor, after), value)


def py_delete(text: Text | XmlText, old: str) -> None:
    start = py_index(str(text), old)
    del text[start : start + len(old.encode())]


async def node_insert(
    client: NodeYClient, base: str, anchor: str, value: str, after: int = 0
) -> None:
    """Insert at a position computed from `base`, which must still hold up to that position."""
    index = node_index(base, anchor, after)
    await client.call("insert_text", name=TEXT, index=index, value=value)


async def node_delete(client: NodeYClient, base: str, old: str) -> None:
    index = node_index(base, old)
    await client.call("delete_text", name=TEXT, index=index, length=utf16_len(old))


async def node_map_set(client: NodeYClient, key: str, value: Any) -> None:
    await client.call("map_set", name=MAP, key=key, value=value)


async def node_paragraph(client: NodeYClient, index: int, text: str) -> None:
    await client.call("xml_insert_paragraph", name=XML, index=index, text=text)


def paragraph(text: str, attributes: dict[str, str] | None = None) -> XmlElement:
    return XmlElement("paragraph", attributes, [XmlText(text)])


def paragraph_text(fragment: XmlFragment, containing: str) -> XmlText:
    """The XmlText of the one top-level paragraph whose text contains `containing`."""
    found: list[XmlText] = []
    for child in fragment.children:
        if isinstance(child, XmlElement):
            for grandchild in child.children:
                if isinstance(grandchild, XmlText) and containing in str(grandchild):
                    found.append(grandchild)
    assert len(found) == 1, f"{len(found)} paragraphs contain {containing!r}: {fragment}"
    return found[0]


def element_of(node: XmlText) -> XmlElement:
    parent = node.parent
    assert isinstance(parent, XmlElement)
    return parent


# -- snapshots -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    text: str
    map: dict[str, Any]
    xml: str

    def __repr__(self) -> str:
        shown = {
            k: (v[:40] + "…" if isinstance(v, str) and len(v) > 40 else v)
            for k, v in self.map.items()
        }
        return f"Snapshot(text={self.text!r}, map={shown!r}, xml={self.xml!r})"


def yjs_xml(node: XmlFragment | XmlElement | XmlText) -> str:
    """The string Yjs's toString() gives for this tree (attributes sorted by name)."""
    if isinstance(node, XmlText):
        return str(node)
    inner = "".join(yjs_xml(child) for child in node.children)
    if isinstance(node, XmlFragment):
        return inner
    tag = (node.tag or "").lower()
    attributes = "".join(f' {key}="{value}"' for key, value in sorted(node.attributes))
    return f"<{tag}{attributes}>{inner}</{tag}>"


_START_TAG = re.compile(r'<([A-Za-z][\w-]*)((?: [^\s="<>]+="[^"]*")*)>')
_ATTRIBUTE = re.compile(r' [^\s="<>]+="[^"]*"')


def sort_attributes(xml: str) -> str:
    """`xml` with each start tag's attributes in name order, as Yjs writes them."""
    return _START_TAG.sub(lambda m: f"<{m[1]}{''.join(sorted(_ATTRIBUTE.findall(m[2])))}>", xml)


def py_snapshot(doc: Doc) -> Snapshot:
    fragment = doc.get(XML, type=XmlFragment)
    xml = yjs_xml(fragment)
    assert sort_attributes(str(fragment)) == xml, "pycrdt's XML string differs beyond order"
    return Snapshot(str(doc.get(TEXT, type=Text)), doc.get(MAP, type=Map).to_py() or {}, xml)


async def node_snapshot(client: NodeYClient) -> Snapshot:
    state = await client.state()
    return Snapshot(state["text"][TEXT], state["map"][MAP], state["xml"][XML])


async def converge(
    nodes: Sequence[NodeYClient], docs: Sequence[Doc], timeout: float = CONVERGE_TIMEOUT
) -> Snapshot:
    """Wait until every client shows the same content; return it.

    Call it after every client's own edits are made: then equal content means each client
    has everybody's edits.
    """
    deadline = time.monotonic() + timeout
    while True:
        snapshots = [*await asyncio.gather(*(node_snapshot(n) for n in nodes))]
        snapshots += [py_snapshot(doc) for doc in docs]
        if all(s == snapshots[0] for s in snapshots[1:]):
            return snapshots[0]
        if time.monotonic() >= deadline:
            listing = "\n".join(f"  {s!r}" for s in snapshots)
            raise AssertionError(f"clients did not converge within {timeout}s:\n{listing}")
        await asyncio.sleep(0.05)


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


# -- server probes -------------------------------------------------------------------------


async def wait_connections(server: ServerProcess, count: int, timeout: float = 10.0) -> None:
    """Wait until the server counts exactly `count` open WebSocket connections."""
    deadline = time.monotonic() + timeout
    while (seen := await metric(server, "tandem_connections")) != count:
        if time.monotonic() >= deadline:
            raise AssertionError(f"server has {seen} connections, expected {count}")
        await asyncio.sleep(0.05)


async def assert_server_healthy(server: ServerProcess) -> None:
    assert server.proc is not None and server.proc.poll() is None, server.log()[-4000:]
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server.http_url}/healthz", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# -- client lifecycles ---------------------------------------------------------------------


async def start_nodes(
    stack: contextlib.AsyncExitStack, server: ServerProcess, doc_id: str, count: int
) -> list[NodeYClient]:
    """Start `count` Node clients at once; each is closed when `stack` unwinds."""
    results = await asyncio.gather(
        *(NodeYClient.start(server.ws_url, doc_id) for _ in range(count)),
        return_exceptions=True,
    )
    clients: list[NodeYClient] = []
    for result in results:
        if isinstance(result, NodeYClient):
            stack.push_async_callback(result.close)
            clients.append(result)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return clients


def start_py(stack: contextlib.AsyncExitStack, server: ServerProcess, doc_id: str) -> SyncClient:
    client = SyncClient(server.ws_url, doc_id)
    client.start()
    stack.push_async_callback(client.close)
    return client


async def all_synced(
    nodes: Sequence[NodeYClient], pys: Sequence[SyncClient], timeout: float = 10.0
) -> None:
    waits: list[Awaitable[None]] = [n.wait_synced(timeout) for n in nodes]
    waits += [p.wait_synced(timeout) for p in pys]
    await asyncio.gather(*waits)


def new_doc_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- 1. concurrent editing by two Node clients and one pycrdt client ---------------------------


def seed(doc: Doc) -> None:
    with doc.transaction():
        doc.get(TEXT, type=Text).insert(0, SEED_TEXT)
        shared = doc.get(MAP, type=Map)
        shared["title"] = "双十一活动 🎉"
        shared["faq"] = "客服 FAQ 😀🚀"
        shared["obsolete"] = "旧版 🗑️"
        shared["tags"] = ["促销", "🎉", {"级别": "高 🔥"}]
        fragment = doc.get(XML, type=XmlFragment)
        fragment.children.append(paragraph("双十一活动 🎉"))
        fragment.children.append(paragraph("客服 FAQ 😀🚀", {"lang": "zh-CN", "align": "center"}))


SEED = Snapshot(
    SEED_TEXT,
    {
        "title": "双十一活动 🎉",
        "faq": "客服 FAQ 😀🚀",
        "obsolete": "旧版 🗑️",
        "tags": ["促销", "🎉", {"级别": "高 🔥"}],
    },
    '<paragraph>双十一活动 🎉</paragraph><paragraph align="center" lang="zh-CN">客服 FAQ 😀🚀'
    "</paragraph>",
)


def para(text: str, attributes: str = "") -> str:
    return f"<paragraph{attributes}>{text}</paragraph>"


async def test_node_and_pycrdt_clients_edit_concurrently_and_converge(
    server: ServerProcess,
) -> None:
    """Two Node clients and a pycrdt client edit Y.Text, Y.Map and Y.XmlFragment at once."""
    doc_id = new_doc_id("双十一-interop")
    async with contextlib.AsyncExitStack() as stack:
        a, b = await start_nodes(stack, server, doc_id, 2)
        py = start_py(stack, server, doc_id)
        await all_synced([a, b], [py])
        doc = py.doc
        text = doc.get(TEXT, type=Text)
        shared = doc.get(MAP, type=Map)
        fragment = doc.get(XML, type=XmlFragment)

        seed(doc)
        assert await converge([a, b], [doc]) == SEED

        # Round 1: all three insert at the same place in the middle of the Chinese text, set
        # the same map key and insert a paragraph at the same index; pycrdt also edits
        # between two emoji, deletes, and edits inside existing XML.
        base = SEED_TEXT

        async def a_round1() -> None:
            await node_insert(a, base, "活动", "限时😀")
            await node_map_set(a, "owner", "甲 😀")
            await node_map_set(a, "a_note", "甲：库存 📦")
            await node_paragraph(a, 1, "甲段落 🍵")

        async def b_round1() -> None:
            await node_insert(b, base, "活动", "秒杀🚀")
            await node_map_set(b, "owner", "乙 🚀")
            await b.call("map_delete", name=MAP, key="obsolete")
            await node_paragraph(b, 1, "乙段落 🎈")

        async def py_round1() -> None:
            # The prefix "双十一" is the same whatever has arrived: the seed's offset holds.
            text.insert(py_index(base, "活动"), "爆款🔥")
            await asyncio.sleep(0)  # let remote updates land between local transactions
            py_insert(text, "😀🚀", "🤝", after=1)
            py_delete(text, "FAQ ")
            shared["owner"] = "丙 🔥"
            await asyncio.sleep(0)
            fragment.children.insert(1, paragraph("丙段落 🎉"))
            first = fragment.children[0]
            assert isinstance(first, XmlElement)
            first_text = first.children[0]
            assert isinstance(first_text, XmlText)
            py_insert(first_text, "活动", "（预热）")
            element_of(paragraph_text(fragment, "客服")).attributes["data-owner"] = "丙 🔥"

        await asyncio.gather(a_round1(), b_round1(), py_round1())
        s1 = await converge([a, b], [doc])

        tokens = ["限时😀", "秒杀🚀", "爆款🔥"]
        assert s1.text in {f"双十一{''.join(o)}活动 🎉 客服 😀🤝🚀" for o in permutations(tokens)}
        assert s1.map.get("owner") in {"甲 😀", "乙 🚀", "丙 🔥"}
        assert s1.map == {
            "title": "双十一活动 🎉",
            "faq": "客服 FAQ 😀🚀",
            "tags": ["促销", "🎉", {"级别": "高 🔥"}],
            "a_note": "甲：库存 📦",
            "owner": s1.map.get("owner"),
        }
        new_paragraphs = [para("甲段落 🍵"), para("乙段落 🎈"), para("丙段落 🎉")]
        last = para("客服 FAQ 😀🚀", ' align="center" data-owner="丙 🔥" lang="zh-CN"')
        assert s1.xml in {
            para("双十一（预热）活动 🎉") + "".join(o) + last for o in permutations(new_paragraphs)
        }

        # Round 2: A deletes and replaces Chinese text and an emoji; B works on the map and
        # the XML; pycrdt edits text after A's part, the map, and text inside the XML.
        t1 = s1.text

        async def a_round2() -> None:
            # Back to front, so that each index computed from t1 still holds.
            await node_delete(a, t1, "🎉 ")
            await node_delete(a, t1, "活动")
            await node_insert(a, t1, "活动", "预售")

        async def b_round2() -> None:
            await node_map_set(b, "faq", "客服 FAQ 😀🚀（已更新）")
            await b.call("map_delete", name=MAP, key="a_note")
            await node_paragraph(b, 0, "乙开头 🌏")

        async def py_round2() -> None:
            py_delete(text, "🤝")
            py_insert(text, "客服", "💬", after=2)
            shared["title"] = "双十一大促 🎊"
            await asyncio.sleep(0)
            # B inserts a paragraph at index 0 meanwhile: find ours by its content.
            warmup = paragraph_text(fragment, "（预热）")
            py_delete(warmup, "（预热）")
            py_insert(warmup, "十一", "🔥")

        await asyncio.gather(a_round2(), b_round2(), py_round2())
        s2 = await converge([a, b], [doc])
        expected_text = replaced(replaced(t1, "活动", "预售"), "🎉 ", "")
        expected_text = replaced(replaced(expected_text, "🤝", ""), "客服", "客服💬")
        expected_map = {k: v for k, v in s1.map.items() if k != "a_note"}
        expected_map |= {"faq": "客服 FAQ 😀🚀（已更新）", "title": "双十一大促 🎊"}
        expected_xml = para("乙开头 🌏") + replaced(s1.xml, "双十一（预热）活动", "双🔥十一活动")
        assert s2 == Snapshot(expected_text, expected_map, expected_xml)

        # Round 3: B deletes a token holding an emoji and inserts between two emoji; A works on
        # the map and the XML; pycrdt appends text and edits the XML and the map.
        t2 = s2.text

        async def a_round3() -> None:
            await node_map_set(a, "owner", "甲 😀（确认）")
            await node_paragraph(a, s2.xml.count("<paragraph"), "甲结尾 🏁")

        async def b_round3() -> None:
            await node_insert(b, t2, "😀🚀", "🧧", after=1)
            await node_delete(b, t2, "秒杀🚀")

        async def py_round3() -> None:
            # Appended at the end (a UTF-8 byte offset): after every Node position.
            text.insert(len(str(text).encode()), "（完）🏁")
            del shared["tags"]
            await asyncio.sleep(0)
            faq = paragraph_text(fragment, "FAQ")
            py_delete(faq, "FAQ ")
            del element_of(faq).attributes["align"]

        await asyncio.gather(a_round3(), b_round3(), py_round3())
        s3 = await converge([a, b], [doc])
        expected_text = replaced(replaced(t2, "秒杀🚀", ""), "😀🚀", "😀🧧🚀") + "（完）🏁"
        expected_map = {k: v for k, v in s2.map.items() if k != "tags"} | {"owner": "甲 😀（确认）"}
        expected_xml = replaced(
            s2.xml,
            last,
            para("客服 😀🚀", ' data-owner="丙 🔥" lang="zh-CN"') + para("甲结尾 🏁"),
        )
        assert s3 == Snapshot(expected_text, expected_map, expected_xml)
        assert "双十一" in s3.text and "😀🧧🚀" in s3.text and "秒杀" not in s3.text

        # Latecomers load the same content from the server.
        (fresh_node,) = await start_nodes(stack, server, doc_id, 1)
        fresh_py = start_py(stack, server, doc_id)
        await all_synced([fresh_node], [fresh_py])
        assert await node_snapshot(fresh_node) == s3
        assert py_snapshot(fresh_py.doc) == s3
        assert await converge([a, b, fresh_node], [doc, fresh_py.doc]) == s3


# -- 2. offline edits merge on reconnect ---------------------------------------------------


async def test_offline_edits_merge_on_reconnect(server: ServerProcess) -> None:
    """Edits made offline (by a Node client, then by the pycrdt client) merge on reconnect."""
    doc_id = new_doc_id("offline")
    async with contextlib.AsyncExitStack() as stack:
        a, b = await start_nodes(stack, server, doc_id, 2)
        py = start_py(stack, server, doc_id)
        await all_synced([a, b], [py])
        await wait_connections(server, 3)
        text = py.doc.get(TEXT, type=Text)
        shared = py.doc.get(MAP, type=Map)
        fragment = py.doc.get(XML, type=XmlFragment)

        # Seeded from Node this time.
        await b.call("insert_text", name=TEXT, index=0, value=SEED_TEXT)
        await node_map_set(b, "title", "双十一活动 🎉")
        await node_paragraph(b, 0, "双十一活动 🎉")
        await node_paragraph(b, 1, "客服 FAQ 😀🚀")
        s0 = await converge([a, b], [py.doc])
        assert s0 == Snapshot(
            SEED_TEXT, {"title": "双十一活动 🎉"}, para("双十一活动 🎉") + para("客服 FAQ 😀🚀")
        )

        # Phase 1: Node client A goes offline; everybody edits.
        await a.call("disconnect")
        await wait_connections(server, 2)  # the server has let A go: nothing more reaches A
        assert (await a.status())["connected"] is False
        t0 = s0.text

        async def a_offline() -> None:
            await node_insert(a, t0, "😀🚀", "🛒", after=1)
            await node_delete(a, t0, "活动")
            await node_insert(a, t0, "活动", "直播")
            await node_map_set(a, "owner", "甲（离线）✈️")
            await node_map_set(a, "offline_a", "离线编辑 ✈️")
            await node_paragraph(a, 0, "离线段落 📴")

        async def b_online() -> None:
            await node_insert(b, t0, "客服", "🎁")
            await node_map_set(b, "owner", "乙（在线）🌐")
            await node_paragraph(b, 2, "乙在线 🌐")

        async def py_online() -> None:
            py_delete(text, "FAQ ")
            shared["p_note"] = "丙在线 🖥️"
            await asyncio.sleep(0)
            py_insert(paragraph_text(fragment, "客服"), "客服", "🙋")

        await asyncio.gather(a_offline(), b_online(), py_online())
        online = await converge([b], [py.doc])
        offline = await node_snapshot(a)
        assert offline.text == "双十一直播 🎉 客服 FAQ 😀🛒🚀"  # none of the others' edits
        assert "🎁" in online.text and "直播" not in online.text and "🛒" not in online.text
        await a.call("connect")
        await a.wait_synced()
        s1 = await converge([a, b], [py.doc])
        assert s1.map.get("owner") in {"甲（离线）✈️", "乙（在线）🌐"}
        assert s1 == Snapshot(
            "双十一直播 🎉 🎁客服 😀🛒🚀",
            {
                "title": "双十一活动 🎉",
                "owner": s1.map.get("owner"),
                "offline_a": "离线编辑 ✈️",
                "p_note": "丙在线 🖥️",
            },
            "".join(
                para(t) for t in ("离线段落 📴", "双十一活动 🎉", "🙋客服 FAQ 😀🚀", "乙在线 🌐")
            ),
        )

        # Phase 2: the pycrdt client goes offline; everybody edits.
        await py.disconnect()
        await wait_connections(server, 2)
        assert not py.connected.is_set()
        t1 = s1.text

        async def py_offline() -> None:
            py_insert(text, "直播", "间", after=2)
            py_delete(text, "🎁")
            shared["offline_p"] = "丙离线 🛰️"
            shared["owner"] = "丙（离线）🛰️"
            del fragment.children[0]

        async def a_online() -> None:
            await node_insert(a, t1, "双十一", "【预告】")
            await node_map_set(a, "a_back", "甲回来了 👋")
            await node_paragraph(a, 4, "甲在线 👋")

        async def b_online2() -> None:
            await b.call("map_delete", name=MAP, key="p_note")
            await node_map_set(b, "title", "双十一大促 🎊")

        await asyncio.gather(py_offline(), a_online(), b_online2())
        online = await converge([a, b], [])
        assert "【预告】" in online.text and "间" not in online.text
        assert str(text) == "双十一直播间 🎉 客服 😀🛒🚀"  # none of the others' edits
        py.start()
        await py.wait_synced()
        s2 = await converge([a, b], [py.doc])
        assert s2 == Snapshot(
            "【预告】双十一直播间 🎉 客服 😀🛒🚀",
            {
                "title": "双十一大促 🎊",
                "owner": "丙（离线）🛰️",
                "offline_a": "离线编辑 ✈️",
                "offline_p": "丙离线 🛰️",
                "a_back": "甲回来了 👋",
            },
            para("双十一活动 🎉") + para("🙋客服 FAQ 😀🚀") + para("乙在线 🌐") + para("甲在线 👋"),
        )

        # The server has the merged state too.
        latecomer = start_py(stack, server, doc_id)
        await latecomer.wait_synced()
        assert py_snapshot(latecomer.doc) == s2


# -- 3. two clients open a brand-new document at the same instant ---------------------------


async def _py_pair_on_new_doc(server: ServerProcess, doc_id: str) -> None:
    first, second = SyncClient(server.ws_url, doc_id), SyncClient(server.ws_url, doc_id)
    first.start()
    second.start()  # same event-loop turn: both connect at once
    try:
        await asyncio.gather(first.wait_synced(5), second.wait_synced(5))
        assert str(first.doc.get(TEXT, type=Text)) == ""
        assert str(second.doc.get(TEXT, type=Text)) == ""
        first.doc.get(TEXT, type=Text).insert(0, "你好 👋")
        second_text = second.doc.get(TEXT, type=Text)
        await wait_until(lambda: str(second_text) == "你好 👋", f"{doc_id}: first -> second", 5)
        second.doc.get(MAP, type=Map)["reply"] = "收到 ✅"
        first_map = first.doc.get(MAP, type=Map)
        await wait_until(lambda: first_map.get("reply") == "收到 ✅", f"{doc_id}: back", 5)
    finally:
        await asyncio.gather(first.close(), second.close())


async def _node_pair_on_new_doc(server: ServerProcess, doc_id: str) -> None:
    async with contextlib.AsyncExitStack() as stack:
        first, second = await start_nodes(stack, server, doc_id, 2)  # spawned together
        await asyncio.gather(first.wait_synced(5), second.wait_synced(5))
        assert (await node_snapshot(first)).text == ""
        await first.call("insert_text", name=TEXT, index=0, value="你好 👋")
        await second.wait_for(lambda s: s["text"][TEXT] == "你好 👋", timeout=5)
        await node_map_set(second, "reply", "收到 ✅")
        await first.wait_for(lambda s: s["map"][MAP].get("reply") == "收到 ✅", timeout=5)


async def test_clients_opening_a_new_document_at_once_both_sync(server: ServerProcess) -> None:
    """Pairs of clients opening a brand-new document at the same instant both sync."""
    for round_ in range(10):
        # Fresh names every round; the Node one is non-ASCII, percent-encoded by the client.
        await asyncio.gather(
            _py_pair_on_new_doc(server, new_doc_id(f"new-py-{round_}")),
            _node_pair_on_new_doc(server, new_doc_id(f"新文档-{round_}")),
        )
    await wait_connections(server, 0)


# -- 4. a client dying with broadcasts pending harms nobody --------------------------------


BLOB_UNIT = "双十一🎉"  # 13 bytes of UTF-8
BLOB_BYTES = 64 * 1024
STALLED_RCVBUF = 16 * 1024


def blob(round_: int, i: int) -> str:
    return f"{round_}:{i}:" + BLOB_UNIT * (BLOB_BYTES // len(BLOB_UNIT.encode()))


def seq_of(doc: Doc) -> tuple[int, int]:
    value = doc.get(MAP, type=Map).get("seq")
    if not isinstance(value, str):
        return (-1, -1)
    round_, i = value.split(":")
    return (int(round_), int(i))


class SeqWatch:
    """Follows the "seq" entry of a client's map as updates arrive."""

    def __init__(self, doc: Doc) -> None:
        self.doc = doc
        self._changed = asyncio.Event()
        self._subscription = doc.get(MAP, type=Map).observe(lambda _: self._changed.set())

    async def reached(self, target: tuple[int, int], timeout: float = 15.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while seq_of(self.doc) < target:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"update {target} not received within {timeout}s (at {seq_of(self.doc)})"
            ) from None


async def stream_updates(
    writer: SyncClient, watch: SeqWatch, round_: int, count: int, window: int = 8
) -> None:
    """`count` updates of about BLOB_BYTES each, at most `window` ahead of a healthy reader.

    Pacing by the reader keeps the stream going while the test kills a client mid-way.
    """
    shared = writer.doc.get(MAP, type=Map)
    for i in range(count):
        if i >= window:
            await watch.reached((round_, i - window))
        with writer.doc.transaction():
            shared["blob"] = blob(round_, i)
            shared["seq"] = f"{round_}:{i}"


async def open_stalled_socket(server: ServerProcess, doc_id: str) -> ClientConnection:
    """A WebSocket client that never reads, with a small, fixed receive window."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Set before connecting: it fixes the advertised window and turns off autotuning.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        return await connect(
            f"{server.ws_url}/{doc_id}",
            sock=sock,
            max_queue=1,  # the library stops reading the socket after one frame
            max_size=None,
            compression=None,
            ping_interval=None,
            open_timeout=5,
        )
    except BaseException:
        sock.close()
        raise


def most_bytes_a_stalled_client_absorbs(sock_rcvbuf: int) -> int:
    """What can leave the server's user-space buffer for a client that never reads."""
    try:
        send_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        send_max = 4 * 1024 * 1024
    # Server send buffer + client receive buffer + what the client library read before it
    # paused the socket (one read of up to 256 KiB, generously rounded up).
    return send_max + sock_rcvbuf + 1024 * 1024


async def test_dead_socket_with_pending_broadcast_harms_nobody(server: ServerProcess) -> None:
    """A socket aborted while the server has frames queued for it harms no other client."""
    doc_id = new_doc_id("dead-raw")
    count, abort_at = 150, 100
    async with contextlib.AsyncExitStack() as stack:
        (node,) = await start_nodes(stack, server, doc_id, 1)
        writer = start_py(stack, server, doc_id)
        reader = start_py(stack, server, doc_id)
        await all_synced([node], [writer, reader])
        watch = SeqWatch(reader.doc)
        await wait_connections(server, 3)

        for round_ in range(5):
            raw = await open_stalled_socket(server, doc_id)
            try:
                await wait_connections(server, 4)
                rcvbuf = raw.transport.get_extra_info("socket").getsockopt(
                    socket.SOL_SOCKET, socket.SO_RCVBUF
                )
                stream = asyncio.create_task(stream_updates(writer, watch, round_, count))
                try:
                    await watch.reached((round_, abort_at))
                    # The server broadcast at least abort_at + 1 updates to the stalled socket,
                    # more than its kernel buffers hold: frames are queued in the server.
                    assert (abort_at + 1) * BLOB_BYTES > most_bytes_a_stalled_client_absorbs(rcvbuf)
                    assert not stream.done(), "the stream must still be running at the abort"
                    raw.transport.abort()
                    async with asyncio.timeout(30):
                        await stream
                finally:
                    stream.cancel()
            finally:
                raw.transport.abort()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(raw.wait_closed(), 5)

            snapshot = await converge([node], [writer.doc, reader.doc], timeout=30)
            assert snapshot.map["seq"] == f"{round_}:{count - 1}"
            assert snapshot.map["blob"] == blob(round_, count - 1)
            await assert_server_healthy(server)
            await wait_connections(server, 3)  # the dead connection was cleaned up

        # The server never had to cut anyone off as a slow reader: the sockets died by abort.
        assert await metric(server, "tandem_slow_peers_dropped_total") == 0
        # Healthy clients still work normally afterwards.
        await node_map_set(node, "after", "一切正常 ✅")
        reader_map = reader.doc.get(MAP, type=Map)
        await wait_until(lambda: reader_map.get("after") == "一切正常 ✅", "an edit after")
        await converge([node], [writer.doc, reader.doc])


async def test_a_reader_that_stalls_then_reads_gets_every_update_once_and_in_order(
    server: ServerProcess,
) -> None:
    """While a client does not read, its frames pile up in the server and the room writes to
    it through its transport; once it reads again it gets them all, in the order sent."""
    doc_id = new_doc_id("stall-order")
    count = 100
    async with contextlib.AsyncExitStack() as stack:
        writer = start_py(stack, server, doc_id)
        reader = start_py(stack, server, doc_id)
        await all_synced([], [writer, reader])
        raw = await open_stalled_socket(server, doc_id)
        stack.push_async_callback(raw.close)
        await wait_connections(server, 3)
        rcvbuf = raw.transport.get_extra_info("socket").getsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF
        )
        assert count * BLOB_BYTES > most_bytes_a_stalled_client_absorbs(rcvbuf)

        log = writer.doc.get("log", type=Array)
        watch = SeqWatch(reader.doc)
        for i in range(count):
            if i >= 8:
                await watch.reached((0, i - 8))
            with writer.doc.transaction():
                log.append(blob(0, i))
                writer.doc.get(MAP, type=Map)["seq"] = f"0:{i}"
        await watch.reached((0, count - 1))  # everything was broadcast, the raw client's too

        mirror = Doc()
        items = mirror.get("log", type=Array)
        async with asyncio.timeout(30):
            async for frame in raw:
                assert isinstance(frame, bytes)
                message = decode_message(frame)
                if message.kind != MSG_SYNC or message.sync == SYNC_STEP1:
                    continue
                before = len(items)
                mirror.apply_update(message.payload)
                # A frame that overtook an earlier one would wait in pycrdt, adding nothing.
                assert len(items) > before, f"a frame arrived out of order after {before}"
                if len(items) == count:
                    break
        assert list(items) == [blob(0, i) for i in range(count)]
        assert await metric(server, "tandem_slow_peers_dropped_total") == 0
        await assert_server_healthy(server)


async def test_sigkilled_node_client_with_pending_broadcast_harms_nobody(
    server: ServerProcess,
) -> None:
    """A stopped Node client SIGKILLed while broadcasts to it are pending harms nobody."""
    doc_id = new_doc_id("dead-node")
    count, kill_at = 80, 40
    async with contextlib.AsyncExitStack() as stack:
        (node,) = await start_nodes(stack, server, doc_id, 1)
        writer = start_py(stack, server, doc_id)
        reader = start_py(stack, server, doc_id)
        await all_synced([node], [writer, reader])
        watch = SeqWatch(reader.doc)

        for round_ in range(3):
            (victim,) = await start_nodes(stack, server, doc_id, 1)
            await victim.wait_synced()
            await wait_connections(server, 4)
            os.kill(victim.pid, signal.SIGSTOP)  # stops reading: broadcasts to it pile up
            stream = asyncio.create_task(stream_updates(writer, watch, round_, count))
            try:
                await watch.reached((round_, kill_at))
                assert not stream.done(), "the stream must still be running at the kill"
                await victim.kill()  # SIGKILL, also ends a stopped process
                assert victim.returncode == -signal.SIGKILL
                async with asyncio.timeout(30):
                    await stream
            finally:
                stream.cancel()
                await victim.kill()

            snapshot = await converge([node], [writer.doc, reader.doc], timeout=30)
            assert snapshot.map["seq"] == f"{round_}:{count - 1}"
            await assert_server_healthy(server)
            await wait_connections(server, 3)

        await node_map_set(node, "after", "一切正常 ✅")
        reader_map = reader.doc.get(MAP, type=Map)
        await wait_until(lambda: reader_map.get("after") == "一切正常 ✅", "an edit after")
        await converge([node], [writer.doc, reader.doc])
