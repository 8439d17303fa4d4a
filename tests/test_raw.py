"""The `raw` kind: documents written by any Yjs application, read generically (shared/raw.py).

The documents are made by stock Yjs in Node (tests/js), as such applications would write them,
and read by pycrdt from the update Yjs encodes.
"""

from __future__ import annotations

import base64
import json
import subprocess
from typing import Any

from conftest import free_port
from pycrdt import Array, Doc, Map, Text, XmlFragment
from yjs_node import JS_DIR, NodeYClient, node_executable

from server.export import export_document, read_model
from server.persistence.versions import summarize_changes
from shared.raw import RawDocument, read_raw
from shared.richtext import Mark, Node, TextRun, read_doc
from shared.roots import private_copy, recognise

# The Tiptap content written into XmlFragments (ProseMirror JSON, built by tests/js/pmbuild.mjs
# as y-prosemirror stores it).
TIPTAP = [
    {
        "type": "heading",
        "attrs": {"level": 2},
        "content": [{"type": "text", "text": "双十一 计划"}],
    },
    {
        "type": "paragraph",
        "content": [
            {"type": "text", "text": "Owner "},
            {"type": "text", "text": "王小明", "marks": [{"type": "bold"}]},
            {"type": "text", "text": ", see "},
            {
                "type": "text",
                "text": "the wiki",
                "marks": [{"type": "link", "attrs": {"href": "https://wiki.example.com/x"}}],
            },
        ],
    },
    {
        "type": "bulletList",
        "content": [
            {
                "type": "listItem",
                "content": [{"type": "paragraph", "content": [{"type": "text", "text": "准备"}]}],
            },
            {
                "type": "listItem",
                "content": [
                    {"type": "paragraph", "content": [{"type": "text", "text": "上线 🎉"}]}
                ],
            },
        ],
    },
    {
        "type": "codeBlock",
        "attrs": {"language": "python"},
        "content": [{"type": "text", "text": "print('双十一')"}],
    },
    {
        "type": "callout",
        "attrs": {"tone": "warn"},
        "content": [{"type": "paragraph", "content": [{"type": "text", "text": "小心 🎉"}]}],
    },
]

MIXED = f"""
doc.getText('notes').insert(0, '王小明\\n双十一 🎉\\n')
const quill = doc.getText('quill')
quill.insert(0, 'plain ')
quill.insert(6, 'bold', {{ bold: true }})
quill.insert(10, ' link', {{ link: 'https://example.com' }})
const settings = doc.getMap('settings')
settings.set('owner', '王小明')
const inner = new Y.Map()
settings.set('inner', inner)
inner.set('count', 3)
inner.set('on', true)
const list = new Y.Array()
settings.set('list', list)
list.push([1, 'two', {{ sale: '双十一' }}])
doc.getArray('items').push([1, 2.5, 'x', null, {{ k: [1, 2] }}])
doc.getMap('meta').set('title', '双十一 🎉 notes')
buildXml(doc, 'prose', {json.dumps(TIPTAP)})
"""


def yjs_doc(body: str) -> Doc[Any]:
    """Run `body` in Node against `doc`, a fresh Y.Doc, and load its encoded state."""
    script = (
        "import * as Y from 'yjs'\n"
        "import { buildXml } from './pmbuild.mjs'\n"
        "const doc = new Y.Doc()\n"
        f"{body}\n"
        "process.stdout.write(Buffer.from(Y.encodeStateAsUpdate(doc)).toString('base64'))\n"
    )
    done = subprocess.run(
        [node_executable(), "--input-type=module", "-e", script],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    doc: Doc[Any] = Doc()
    doc.apply_update(base64.b64decode(done.stdout))
    return doc


def tiptap_json() -> list[Any]:
    """The generic JSON of the TIPTAP fragment."""

    def para(*children: Any) -> dict[str, Any]:
        return {"element": "paragraph", "attributes": {}, "children": list(children)}

    def item(text: str) -> dict[str, Any]:
        return {"element": "listItem", "attributes": {}, "children": [para({"text": text})]}

    return [
        {"element": "heading", "attributes": {"level": 2}, "children": [{"text": "双十一 计划"}]},
        para(
            {
                "delta": [
                    {"insert": "Owner "},
                    {"insert": "王小明", "attributes": {"bold": {}}},
                    {"insert": ", see "},
                    {
                        "insert": "the wiki",
                        "attributes": {"link": {"href": "https://wiki.example.com/x"}},
                    },
                ]
            }
        ),
        {"element": "bulletList", "attributes": {}, "children": [item("准备"), item("上线 🎉")]},
        {
            "element": "codeBlock",
            "attributes": {"language": "python"},
            "children": [{"text": "print('双十一')"}],
        },
        {
            "element": "callout",
            "attributes": {"tone": "warn"},
            "children": [para({"text": "小心 🎉"})],
        },
    ]


def test_recognise_mixed_is_raw_and_default_only_is_doc() -> None:
    mixed = yjs_doc(MIXED)
    assert recognise(private_copy(mixed)) == "raw"
    only_default = yjs_doc(f"buildXml(doc, 'default', {json.dumps(TIPTAP)})")
    assert recognise(private_copy(only_default)) == "doc"


def test_read_raw_json_of_every_root() -> None:
    raw, problems = read_raw(private_copy(yjs_doc(MIXED)))
    assert raw.meta.kind == "raw"
    assert raw.meta.title == "双十一 🎉 notes"
    assert list(raw.roots) == ["items", "meta", "notes", "prose", "quill", "settings"]
    assert raw.roots["notes"] == "王小明\n双十一 🎉\n"
    assert raw.roots["quill"] == [
        {"insert": "plain "},
        {"insert": "bold", "attributes": {"bold": True}},
        {"insert": " link", "attributes": {"link": "https://example.com"}},
    ]
    assert raw.roots["settings"] == {
        "inner": {"count": 3, "on": True},
        "list": [1, "two", {"sale": "双十一"}],
        "owner": "王小明",
    }
    assert raw.roots["items"] == [1, 2.5, "x", None, {"k": [1, 2]}]
    assert raw.roots["meta"] == {"title": "双十一 🎉 notes"}
    assert raw.roots["prose"] == tiptap_json()
    assert raw.to_json() == {"meta": raw.meta.to_json(), "roots": raw.roots}
    # Only the unknown Tiptap node is reported; it is kept, not dropped.
    assert [p.path for p in problems] == ["/prose/content/4"]
    assert "callout" in problems[0].message


def test_read_raw_content_as_rich_text() -> None:
    raw, _ = read_raw(private_copy(yjs_doc(MIXED)))
    blocks = raw.content.content
    headings = [
        b.content[0].text
        for b in blocks
        if isinstance(b, Node) and b.type == "heading" and isinstance(b.content[0], TextRun)
    ]
    assert headings[:2] == ["items", "meta"]
    assert "quill" in headings and "settings" in headings
    quill = blocks[[i for i, b in enumerate(blocks) if b == _heading("quill")][0] + 1]
    assert quill == Node(
        "paragraph",
        {},
        (
            TextRun("plain "),
            TextRun("bold", (Mark("bold"),)),
            TextRun(" link", (Mark("link", {"href": "https://example.com"}),)),
        ),
    )
    notes = blocks.index(_heading("notes"))
    assert blocks[notes + 1 : notes + 3] == (
        Node("paragraph", {}, (TextRun("王小明"),)),
        Node("paragraph", {}, (TextRun("双十一 🎉"),)),
    )
    assert blocks[notes + 3] == _heading("prose")


def _heading(name: str) -> Node:
    return Node("heading", {"level": 2}, (TextRun(name),))


def test_raw_markdown_export() -> None:
    body, content_type = export_document(yjs_doc(MIXED), "raw", "md")
    assert content_type.startswith("text/markdown")
    text = body.decode("utf-8")
    assert text.startswith("# 双十一 🎉 notes\n")
    for name in ("items", "meta", "notes", "prose", "quill", "settings"):
        assert f"\n## {name}\n" in text
    assert "- **owner**: 王小明" in text
    assert "- **inner**\n  - **count**: 3\n  - **on**: true" in text
    assert "- 准备\n- 上线 🎉" in text
    assert "```python\nprint('双十一')\n```" in text
    assert "小心 🎉" in text  # the unknown node keeps its text
    assert "Owner **王小明**, see [the wiki](https://wiki.example.com/x)" in text
    assert "plain **bold**[ link](https://example.com)" in text
    assert "\n王小明\n\n双十一 🎉\n" in text


def test_raw_html_export() -> None:
    body, content_type = export_document(yjs_doc(MIXED), "raw", "html")
    assert content_type.startswith("text/html")
    text = body.decode("utf-8")
    assert "<h2>settings</h2>" in text
    assert "<ul><li>" in text.replace("\n", "")
    assert "<pre><code" in text
    assert "print(&#x27;双十一&#x27;)" in text or "print('双十一')" in text
    assert "小心 🎉" in text
    assert "<strong>王小明</strong>" in text


def test_raw_json_export_round_trips() -> None:
    doc = yjs_doc(MIXED)
    body, content_type = export_document(doc, "raw", "json")
    assert content_type == "application/json"
    data = json.loads(body)
    assert list(data) == ["kind", "schema", "meta", "roots", "problems"]
    assert data["kind"] == "raw"
    assert data["schema"] == 1
    assert data["meta"]["title"] == "双十一 🎉 notes"
    assert data["roots"]["prose"] == tiptap_json()
    assert data["roots"]["settings"]["owner"] == "王小明"
    assert data["problems"] == [
        {"path": "/prose/content/4", "message": "unknown node type 'callout': rendered as its text"}
    ]
    model, _ = read_model(doc, "raw")
    assert isinstance(model, RawDocument)
    # The export reads a copy: the caller's document keeps its roots' types.
    assert str(doc.get("notes", type=Text)) == "王小明\n双十一 🎉\n"


def test_export_leaves_a_live_documents_roots_alone() -> None:
    doc = yjs_doc(MIXED)
    notes = doc.get("notes", type=Text)
    export_document(doc, "raw", "json")
    notes.insert(len(notes), "more")
    assert str(doc.get("notes", type=Text)).endswith("🎉\nmore")


def test_summarize_changes_raw() -> None:
    before = yjs_doc(MIXED)
    after = private_copy(before)
    with after.transaction():
        after.get("settings", type=Map)["owner"] = "李雷"
        after.get("extra", type=Array).append("new")
    changes = summarize_changes("raw", before, after)
    assert changes["kind"] == "raw"
    assert changes["changed"] is True
    assert changes["roots_added"] == ["extra"]
    assert changes["roots_removed"] == []
    assert changes["roots_changed"] == ["settings"]
    assert changes["meta_changed"] == []
    assert changes["summary"] == "1 root added, 1 root changed"
    same = summarize_changes("raw", before, private_copy(before))
    assert same["changed"] is False
    assert same["summary"] == ""
    retitled = private_copy(before)
    retitled.get("meta", type=Map)["title"] = "新"
    renamed = summarize_changes("raw", before, retitled)
    assert renamed["roots_changed"] == ["meta"]
    assert renamed["meta_changed"] == [
        {"field": "title", "before": "双十一 🎉 notes", "after": "新"}
    ]


def test_read_doc_reads_a_text_root() -> None:
    doc = yjs_doc(
        "const text = doc.getText('text')\n"
        "text.insert(0, '第一行 plain ')\n"
        "text.insert(text.length, 'bold', { bold: true, italic: true })\n"
        # Without attributes Yjs would continue the formatting before: {} ends it.
        "text.insert(text.length, '\\n\\n双十一 🎉\\n', {})\n"
    )
    assert recognise(private_copy(doc)) == "doc"
    text_doc, problems = read_doc(doc)
    assert [p.path for p in problems] == ["/meta"]  # no meta: reported, nothing else
    assert text_doc.content.content == (
        Node(
            "paragraph",
            {},
            (TextRun("第一行 plain "), TextRun("bold", (Mark("bold"), Mark("italic")))),
        ),
        Node("paragraph"),
        Node("paragraph", {}, (TextRun("双十一 🎉"),)),
    )


def test_read_doc_default_first_then_text() -> None:
    doc = yjs_doc(
        "const a = [{ type: 'paragraph', content: [{ type: 'text', text: 'A' }] }]\n"
        "buildXml(doc, 'default', a)\n"
        "doc.getText('text').insert(0, 'B\\nC')\n"
    )
    text_doc, _ = read_doc(doc)
    assert text_doc.content.content == (
        Node("paragraph", {}, (TextRun("A"),)),
        Node("paragraph", {}, (TextRun("B"),)),
        Node("paragraph", {}, (TextRun("C"),)),
    )
    # Read through a copy: the caller's `text` root is untouched and still works as a Text.
    text = doc.get("text", type=Text)
    text.insert(0, ">")
    assert str(text) == ">B\nC"
    assert isinstance(doc.get("default", type=XmlFragment), XmlFragment)


async def test_yclient_xml_build_and_array_push() -> None:
    # No server: the commands work on the client's own Y.Doc, which encode_state returns.
    client = await NodeYClient.start(f"ws://127.0.0.1:{free_port()}/ws", "offline")
    try:
        built = await client.call("xml_build", name="prose", nodes=TIPTAP)
        assert built["length"] == len(TIPTAP)
        pushed = await client.call("array_push", name="items", values=[1, "two", {"x": [3]}])
        assert pushed["length"] == 3
        bad = None
        try:
            await client.call("xml_build", nodes=[{"content": []}])
        except RuntimeError as exc:
            bad = str(exc)
        assert bad is not None and '"type"' in bad
        update = (await client.call("encode_state"))["update"]
    finally:
        await client.close()
    doc: Doc[Any] = Doc()
    doc.apply_update(base64.b64decode(update))
    raw, _ = read_raw(doc)
    assert raw.roots == {"items": [1, "two", {"x": [3]}], "prose": tiptap_json()}


def test_read_raw_mixed_root_deep_values_and_embeds() -> None:
    doc = yjs_doc(
        "doc.getMap('both').set('k', 1)\n"
        "const other = new Y.Doc()\n"
        "other.getText('both').insert(0, 'hi')\n"
        "Y.applyUpdate(doc, Y.encodeStateAsUpdate(other))\n"
        "let deep = doc.getMap('deep')\n"
        "for (let i = 0; i < 70; i++) {\n"
        "  const next = new Y.Map()\n"
        "  deep.set('c', next)\n"
        "  deep = next\n"
        "}\n"
        "const text = doc.getText('emb')\n"
        "text.insert(0, 'ab')\n"
        "text.insertEmbed(1, { img: 'x.png' })\n"
    )
    raw, problems = read_raw(private_copy(doc))
    # A root used as a Map by one client and as a Text by another keeps both.
    assert raw.roots["both"] == {"entries": {"k": 1}, "items": "hi"}
    assert raw.roots["emb"] == [{"insert": "a"}, {"insert": {"img": "x.png"}}, {"insert": "b"}]
    deep = raw.roots["deep"]
    for _ in range(64):
        assert isinstance(deep, dict)
        deep = deep["c"]
    assert deep is None
    messages = {p.path.split("/")[1]: p.message for p in problems}
    assert messages["deep"] == "nested deeper than 64 levels; left out"
    assert messages["emb"] == "a plain object embedded in text; skipped"
    body, _ = export_document(doc, "raw", "md")
    assert "## both\n\n- **k**: 1\n\nhi\n" in body.decode()
