"""Exports: golden files for every kind and format, hostile content, junk.

Golden files live in tests/golden/. After an intended change of the output, rewrite them with

    UPDATE_GOLDEN=1 .venv/bin/pytest -q tests/test_export.py

and review the diff.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Array, Doc, Map, XmlElement, XmlFragment, XmlText

from server.export import CONTENT_TYPES, FORMATS, export_document, problems, read_model
from server.export import markdown as md
from shared import board as boards
from shared import discussion as discussions
from shared import richtext
from shared.documents import KINDS, initialize
from shared.richtext import Mark, Node, TextRun

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


# --- fixtures: deterministic documents ----------------------------------------------------


def board_doc() -> Doc[Any]:
    doc: Doc[Any] = Doc()
    with doc.transaction():
        initialize(doc, "board", title="双11 大促任务板 🎯", department="运营部", project="双11")
        boards.add_task(
            doc,
            "首页 Banner 文案 ✍️",
            status="in_progress",
            assignee="wang.fang",
            department="市场部",
            due="2025-10-25T18:00:00+08:00",
            priority="high",
            tags=("预售", "首页"),
            subtasks=(boards.Subtask("s1", "初稿", True), boards.Subtask("s2", "法务审核")),
            created_by="li.lei",
            description="主视觉：红色 + 金色\n尺寸 1920×600\n\n需要在 10/25 前定稿。",
            task_id="t-banner",
            created_at="2025-10-01T09:00:00+08:00",
        )
        boards.add_task(
            doc,
            "配置满减券 300-40",
            assignee="zhao.min",
            department="运营部",
            due="2025-11-01",
            priority="urgent",
            tags=("优惠券",),
            created_by="li.lei",
            task_id="t-coupon",
            created_at="2025-10-02T10:00:00+08:00",
        )
        boards.add_task(
            doc,
            "客服 FAQ 更新",
            department="客服部",
            description="Answers for the pre-sale questions.",
            task_id="t-faq",
            created_at="2025-10-03T10:00:00+08:00",
        )
        boards.add_task(
            doc,
            "压测演练",
            status="done",
            assignee="chen.jie",
            due="2025-10-20T12:00:00Z",
            priority="low",
            watchers=("li.lei",),
            task_id="t-load",
            created_at="2025-10-04T10:00:00Z",
        )
    return doc


def element(parent: XmlFragment | XmlElement, tag: str, **attrs: Any) -> XmlElement:
    """An XmlElement as y-prosemirror writes one: attribute values as set (numbers stay)."""
    child = parent.children.append(XmlElement(tag))
    for key, value in attrs.items():
        child.attributes[key] = value
    return child


def text(parent: XmlFragment | XmlElement, *runs: tuple[str, dict[str, Any] | None]) -> None:
    """One XmlText holding consecutive text nodes; marks as formatting attributes."""
    node = parent.children.append(XmlText())
    for chunk, marks in runs:
        node.insert(len(node), chunk, marks or {})


def paragraph(parent: XmlFragment | XmlElement, *runs: tuple[str, dict[str, Any] | None]) -> None:
    text(element(parent, "paragraph"), *runs)


def rich_doc(level: Any = 2) -> Doc[Any]:
    """A plan document built the way Tiptap's Collaboration extension stores one."""
    doc: Doc[Any] = Doc()
    with doc.transaction():
        initialize(doc, "doc", title="双11 客服答疑手册", department="客服部")
        meta = doc.get("meta", type=Map)
        meta["tags"] = Array(["FAQ", "双11"])
        meta["notes"] = "每天 18:00 同步一次。"
        root = doc.get("default", type=XmlFragment)
        text(element(root, "heading", level=level), ("预售规则 🛒", None))
        paragraph(
            root,
            ("定金 ", None),
            ("不退", {"bold": {}}),
            ("，尾款在 ", None),
            ("11月11日", {"italic": {}}),
            (" 支付。详见 ", None),
            ("活动页", {"link": {"href": "https://example.com/d11?a=1&b=2", "target": "_blank"}}),
            ("。", None),
        )
        para = element(root, "paragraph")
        text(para, ("注意：", {"bold": {}}), ("券码 ", None), ("D11-300", {"code": {}}))
        element(para, "hardBreak")
        text(para, ("旧规则", {"strike": {}}), (" 与 ", None), ("粗斜", {"bold": {}, "italic": {}}))
        bullets = element(root, "bulletList")
        for label in ("满 300 减 40", "跨店满减"):
            paragraph(element(bullets, "listItem"), (label, None))
        ordered = element(root, "orderedList", start=1)
        paragraph(element(ordered, "listItem"), ("登录", None))
        second = element(ordered, "listItem")
        paragraph(second, ("领券", None))
        paragraph(element(element(second, "bulletList"), "listItem"), ("在首页领取", None))
        tasks = element(root, "taskList")
        paragraph(element(tasks, "taskItem", checked=True), ("培训客服", None))
        paragraph(element(tasks, "taskItem", checked=False), ("更新话术", None))
        paragraph(element(root, "blockquote"), ("亲，定金不退哦 😊", None))
        text(element(root, "codeBlock", language="json"), ('{"coupon": "D11-300"}\n```', None))
        element(root, "horizontalRule")
        table = element(root, "table")
        header = element(table, "tableRow")
        for label in ("问题", "回答"):
            paragraph(element(header, "tableHeader", colspan=1, rowspan=1), (label, None))
        row = element(table, "tableRow")
        for label in ("能退定金吗？", "不能 | 除非缺货"):
            paragraph(element(row, "tableCell", colspan=1, rowspan=1), (label, None))
    return doc


def discussion_doc() -> Doc[Any]:
    doc: Doc[Any] = Doc()
    with doc.transaction():
        initialize(doc, "discussion", title="Banner 文案讨论 💬", department="市场部")
        meta = doc.get("meta", type=Map)
        meta["subject_doc"] = "doc-plan"
        meta["subject_task"] = "t-banner"
        discussions.post_message(
            doc,
            "wang.fang",
            "初稿已上传，请大家看看 👀",
            mentions=("li.lei",),
            message_id="m1",
            created_at="2025-10-20T09:30:00+08:00",
        )
        anchor = discussions.Anchor(
            {"type": {"client": 1, "clock": 4}, "item": {"client": 1, "clock": 7}, "assoc": 0},
            {"type": {"client": 1, "clock": 4}, "item": {"client": 1, "clock": 12}, "assoc": -1},
            "双11 狂欢节",
        )
        discussions.post_message(
            doc,
            "li.lei",
            "标题里的「狂欢」改成「盛典」？",
            reply_to="m1",
            anchor=anchor,
            message_id="m2",
            created_at="2025-10-20T09:45:00+08:00",
        )
        discussions.edit_message(
            doc,
            "m2",
            "标题里的「狂欢」改成「盛典」？*语气更正式*",
            edited_at="2025-10-20T10:00:00+08:00",
        )
        discussions.post_message(
            doc,
            "zhao.min",
            "同意 +1",
            reply_to="m2",
            message_id="m3",
            created_at="2025-10-20T10:05:00+08:00",
        )
        discussions.post_message(
            doc, "chen.jie", "发错群了", message_id="m4", created_at="2025-10-20T10:06:00+08:00"
        )
        discussions.delete_message(doc, "m4", deleted_at="2025-10-20T10:07:00+08:00")
        discussions.post_message(
            doc,
            "wang.fang",
            "总结：\n1. 改标题\n2. 周五定稿\n\n# 这一行不是标题",
            message_id="m5",
            created_at="2025-10-20T11:00:00+08:00",
        )
    return doc


HOSTILE = "<script>alert(1)</script> # hi *x* _y_ [a](javascript:alert(1)) `c` | ~~s~~ &amp;"


def hostile_board() -> Doc[Any]:
    doc: Doc[Any] = Doc()
    with doc.transaction():
        initialize(doc, "board", title=HOSTILE, department="<b>dept</b>", project="# p")
        boards.add_task(
            doc,
            HOSTILE + "\n- injected item\n# injected heading",
            assignee='<img src=x onerror="alert(1)">',
            department="1. not a list",
            due="2025-11-11",
            tags=("<b>tag</b>", "|pipe|", "- dash", "#hash"),
            subtasks=(boards.Subtask("s1", "[ ] fake box\n- [x] injected", False),),
            description="</div><script>alert(2)</script>\n===\n---\n    indented code?\n> quote",
            watchers=("\u202eevil\u0000",),
            task_id="<t>\"'&",
            created_at="2025-10-01T00:00:00Z",
        )
    return doc


def junk_board() -> Doc[Any]:
    doc = board_doc()
    with doc.transaction():
        tasks = doc.get("tasks", type=Map)
        tasks["str"] = "a string"
        tasks["bad"] = Map({"title": 5, "status": "blocked", "due": "next friday", "tags": "x"})
        deep: Map[Any] = Map()
        tasks["deep"] = deep
        for _ in range(1000):
            inner: Map[Any] = Map()
            deep["title"] = inner
            deep = inner
        doc.get("meta", type=Map)["project"] = ["not", "a", "string"]
    return doc


def junk_doc() -> Doc[Any]:
    doc = rich_doc()
    with doc.transaction():
        root = doc.get("default", type=XmlFragment)
        text(root, ("stray <text>", None))
        paragraph(root, ("evil link", {"link": {"href": "javascript:alert(1)"}}))
        paragraph(root, ("tabbed", {"link": {"href": "java\tscript:alert(1)"}}))
        mention = element(element(root, "paragraph"), "mention", id="u1")
        text(mention, ("@wang.fang", None))
        element(root, "image", src="javascript:alert(1)", alt="<alt>")
        element(root, "heading", level="x")
        current: XmlElement = element(root, "blockquote")
        for _ in range(1000):
            current = element(current, "blockquote")
        doc.get("meta", type=Map)["tags"] = "not an array"
    return doc


def junk_discussion() -> Doc[Any]:
    doc = discussion_doc()
    with doc.transaction():
        messages = doc.get("messages", type=Array)
        messages.append("a string")
        messages.append(Map({"id": "m1", "author": "dup", "body": "dup", "created_at": None}))
        messages.append(
            Map(
                {
                    "id": "x",
                    "author": "<i>who</i>",
                    "body": HOSTILE,
                    "created_at": "yesterday",
                    "reply_to": "gone",
                }
            )
        )
    return doc


BUILDERS: dict[str, Callable[[], Doc[Any]]] = {
    "board": board_doc,
    "doc": rich_doc,
    "discussion": discussion_doc,
}


# --- golden files ---------------------------------------------------------------------------


def check_golden(name: str, body: bytes) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        return
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    expected = path.read_bytes()
    assert body.decode("utf-8") == expected.decode("utf-8"), f"{name} differs from its golden file"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", KINDS)
def test_golden(kind: str, fmt: str) -> None:
    body, content_type = export_document(BUILDERS[kind](), kind, fmt)  # type: ignore[arg-type]
    assert content_type == CONTENT_TYPES[fmt]  # type: ignore[index]
    check_golden(f"{kind}.{fmt}", body)


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_golden_hostile_board(fmt: str) -> None:
    body, _ = export_document(hostile_board(), "board", fmt)
    check_golden(f"hostile-board.{fmt}", body)


@pytest.mark.parametrize("kind", KINDS)
def test_exports_are_deterministic_across_replicas(kind: str) -> None:
    original = BUILDERS[kind]()
    replica: Doc[Any] = Doc()
    replica.apply_update(original.get_update())
    for fmt in FORMATS:
        assert export_document(original, kind, fmt) == export_document(replica, kind, fmt)  # type: ignore[arg-type]


def test_clean_fixtures_have_no_problems() -> None:
    for kind, build in BUILDERS.items():
        assert problems(build(), kind) == [], kind  # type: ignore[arg-type]


# --- content of the exports -----------------------------------------------------------------


def test_board_markdown_sections_and_tasks() -> None:
    body = export_document(board_doc(), "board", "md")[0].decode()
    headings = [ln for ln in body.splitlines() if ln.startswith("#")]
    assert headings == [
        "# 双11 大促任务板 🎯",
        "## To do · 待开始 (2)",
        "### 配置满减券 300-40",
        "### 客服 FAQ 更新",
        "## In progress · 进行中 (1)",
        "### 首页 Banner 文案 ✍️",
        "## Done · 已完成 (1)",
        "### 压测演练",
    ]
    assert "- **Owner:** *unassigned*" in body
    assert "- **Due:** 2025-10-25 18:00 +08:00" in body
    assert "- [x] 初稿\n- [ ] 法务审核" in body
    assert "Problems" not in body


def test_json_export_is_the_read_model() -> None:
    body, content_type = export_document(board_doc(), "board", "json")
    assert content_type == "application/json"
    data = json.loads(body)
    assert list(data) == ["kind", "schema", "meta", "tasks", "problems"]
    assert list(data["tasks"]) == ["t-coupon", "t-faq", "t-banner", "t-load"]
    assert list(data["tasks"]["t-banner"]) == [
        "title",
        "description",
        "status",
        "assignee",
        "department",
        "due",
        "priority",
        "tags",
        "subtasks",
        "order",
        "watchers",
        "created_by",
        "created_at",
    ]
    assert "双11 大促任务板 🎯" in body.decode()  # not \\u-escaped
    model, found = read_model(board_doc(), "board")
    assert data["meta"] == model.to_json()["meta"] and found == []


def test_rich_text_markdown_and_html() -> None:
    markdown = export_document(rich_doc(), "doc", "md")[0].decode()
    assert "## 预售规则 🛒" in markdown
    assert (
        "定金 **不退**，尾款在 *11月11日* 支付。详见 [活动页](https://example.com/d11?a=1&b=2)。"
        in markdown
    )
    # Punctuation moves out of the emphasis so that CommonMark still sees it as closed.
    assert "**注意**：券码 `D11-300`\\\n~~旧规则~~ 与 ***粗斜***" in markdown
    assert "1. 登录\n2. 领券\n   - 在首页领取" in markdown
    assert "- [x] 培训客服\n- [ ] 更新话术" in markdown
    assert '````json\n{"coupon": "D11-300"}\n```\n````' in markdown
    assert "| 能退定金吗？ | 不能 \\| 除非缺货 |" in markdown
    page = export_document(rich_doc(), "doc", "html")[0].decode()
    assert "<h2>预售规则 🛒</h2>" in page
    link = '<a href="https://example.com/d11?a=1&amp;b=2" rel="noopener noreferrer nofollow">'
    assert link + "活动页</a>" in page
    assert "<strong><em>粗斜</em></strong>" in page and "<s>旧规则</s>" in page
    assert '<input type="checkbox" disabled checked><p>培训客服</p>' in page
    assert "<td><p>不能 | 除非缺货</p></td>" in page


@pytest.mark.parametrize("level", [2, 2.0, "2"])
def test_heading_level_as_number_or_string(level: Any) -> None:
    for fmt in ("md", "html"):
        assert export_document(rich_doc(level), "doc", fmt) == export_document(
            rich_doc(2), "doc", fmt
        )


def test_discussion_thread() -> None:
    body = export_document(discussion_doc(), "discussion", "md")[0].decode()
    assert "> **li.lei** · 2025-10-20 09:45 +08:00 · in reply to wang.fang · edited" in body
    assert "> > **zhao.min**" in body
    assert "*\\[deleted\\]*" in body and "发错群了" not in body
    assert "\\# 这一行不是标题" in body
    page = export_document(discussion_doc(), "discussion", "html")[0].decode()
    assert '<article class="message depth-2" id="m-m3">' in page
    assert "<p>[deleted]</p>" in page and "发错群了" not in page
    data = json.loads(export_document(discussion_doc(), "discussion", "json")[0])
    assert [m["id"] for m in data["messages"]] == ["m1", "m2", "m3", "m4", "m5"]
    assert data["messages"][3]["deleted"] is True and data["messages"][3]["body"] == ""
    assert data["messages"][1]["anchor"]["quote"] == "双11 狂欢节"


# --- hostile content ------------------------------------------------------------------------


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def assert_safe_html(page: str) -> _Collect:
    assert page.startswith('<!doctype html>\n<html>\n<head>\n<meta charset="utf-8">')
    parser = _Collect()
    parser.feed(page)
    allowed = {
        "html", "head", "meta", "title", "style", "body", "header", "main", "section", "article",
        "h1", "h2", "h3", "h4", "h5", "h6", "p", "br", "ul", "ol", "li", "dl", "dt", "dd", "b",
        "strong", "em", "s", "u", "code", "pre", "blockquote", "hr", "table", "tbody", "tr",
        "th", "td", "a", "span", "div", "time", "input", "figure", "img",
    }  # fmt: skip
    for tag, attrs in parser.tags:
        assert tag in allowed, tag
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            if name in ("href", "src"):
                assert value is not None
                assert re.match(r"^(https?:|mailto:|#)", value), (tag, value)
    return parser


def test_hostile_board_html_is_escaped() -> None:
    page = export_document(hostile_board(), "board", "html")[0].decode()
    parser = assert_safe_html(page)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert (
        "&lt;b&gt;tag&lt;/b&gt;" in page
        and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    )
    assert 'id="task-&lt;t&gt;&quot;&#x27;&amp;"' in page
    assert "\u0000" not in page and "\u202e" not in page  # no NUL, no bidi override
    text = "".join(parser.text)
    assert "<script>alert(1)</script> # hi *x*" in text  # shown as text, intact


def test_hostile_board_markdown_is_escaped() -> None:
    body = export_document(hostile_board(), "board", "md")[0].decode()
    lines = body.splitlines()
    headings = [ln for ln in lines if ln.startswith("#")]
    assert len(headings) == 5  # title, three columns, one task: nothing injected
    title = headings[0]
    assert title.startswith(
        "# \\<script\\>alert(1)\\</script\\> \\# hi \\*x\\* \\_y\\_ \\[a\\](javascript"
    )
    assert not re.search(r"(?<!\\)\]\(javascript", body)
    assert not re.search(r"(?<!\\)<script", body)
    assert not any(
        ln.startswith(("- injected", "- [x] injected", "===", "    indented")) for ln in lines
    )
    assert "\\# injected heading" in body
    assert "- [ ] \\[ \\] fake box - \\[x\\] injected" in body
    assert "- **Tags:** \\<b\\>tag\\</b\\>, \\|pipe\\|, \\- dash, \\#hash" in body
    assert "- **Department:** 1\\. not a list" in body


def test_markdown_escaping_round_trips_through_a_parser() -> None:
    """What the exporter escapes, a Markdown reader reads back as the same text."""
    nasty = [
        "# hi",
        "*x* and **y** and _z_",
        "[a](javascript:alert(1))",
        "1. one",
        "2) two",
        "- dash",
        "+ plus",
        "> quote",
        "`tick` ``double``",
        "a | b",
        "~~gone~~",
        "<b>html</b> &amp; &lt;",
        "back\\slash\\",
        "===",
        "---",
        "    four spaces",
        "!\\[not an image\\]",
        "中文“引号”！*星*",
    ]
    for sample in nasty:
        node = Node("doc", {}, (Node("paragraph", {}, (TextRun(sample),)),))
        rendered = "\n".join(md.richtext(node))
        back = richtext.parse_markdown(rendered)
        assert richtext.plain_text(back) == sample.lstrip(), (sample, rendered)
    marked = Node(
        "doc",
        {},
        (
            Node(
                "paragraph",
                {},
                (
                    TextRun("a*b ", (Mark("bold"),)),
                    TextRun("[c]", (Mark("link", {"href": "https://x.test/a(b)"}),)),
                    TextRun(" `d`", (Mark("code"),)),
                ),
            ),
        ),
    )
    rendered = "\n".join(md.richtext(marked))
    assert rendered == "**a\\*b** [\\[c\\]](https://x.test/a%28b%29)``  `d` ``"
    back = richtext.parse_markdown(rendered)
    runs = [(r.text, tuple(m.type for m in r.marks)) for r in back.content[0].content]  # type: ignore[union-attr]
    assert runs == [("a*b", ("bold",)), (" ", ()), ("[c]", ("link",)), (" `d`", ("code",))]


# --- junk -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_junk_board_exports_with_problems(fmt: str) -> None:
    body = export_document(junk_board(), "board", fmt)[0].decode()
    if fmt == "json":
        data = json.loads(body)
        where = {p["path"] for p in data["problems"]}
        assert {"/tasks/str", "/tasks/bad/status", "/tasks/bad/due", "/meta/project"} <= where
        assert set(data["tasks"]) == {"t-banner", "t-coupon", "t-faq", "t-load", "bad", "deep"}
        return
    assert "Problems" in body
    assert "/tasks/str" in body and "blocked" in body and "next friday" in body
    if fmt == "html":
        assert_safe_html(body)


@pytest.mark.parametrize("fmt", FORMATS)
def test_junk_doc_exports_with_problems(fmt: str) -> None:
    body = export_document(junk_doc(), "doc", fmt)[0].decode()
    if fmt == "json":
        data = json.loads(body)
        messages = " ".join(p["message"] for p in data["problems"])
        assert "nested deeper than 64 levels" in messages
        assert "rendered as text (not http/https)" in messages
        assert "unknown node type 'mention'" in messages
        return
    assert "nested deeper than 64 levels" in body and "Problems" in body
    assert "@wang.fang" in body and "evil link" in body
    if fmt == "html":
        parser = assert_safe_html(body)
        assert not any(tag == "img" for tag, _ in parser.tags)
        assert "stray &lt;text&gt;" in body
    else:
        assert "stray \\<text\\>" in body
        assert "](javascript" not in body


@pytest.mark.parametrize("fmt", FORMATS)
def test_junk_discussion_exports_with_problems(fmt: str) -> None:
    body = export_document(junk_discussion(), "discussion", fmt)[0].decode()
    assert "duplicate message id" in body and "yesterday" in body
    if fmt == "html":
        assert_safe_html(body)
        assert "in reply to a message that is not here" in body
    if fmt == "md":
        assert not re.search(r"(?<!\\)<script", body)


def test_export_rejects_unknown_kind_or_format() -> None:
    with pytest.raises(ValueError):
        export_document(board_doc(), "spreadsheet", "md")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        export_document(board_doc(), "board", "pdf")
    assert export_document(board_doc(), "board", "markdown") == export_document(
        board_doc(), "board", "md"
    )


def test_exporting_another_kind_reports_instead_of_failing() -> None:
    for kind in KINDS:
        for fmt in FORMATS:
            body, _ = export_document(rich_doc(), kind, fmt)
            assert body
    assert any(p.path == "/meta/kind" for p in problems(rich_doc(), "board"))
    assert export_document(Doc(), "doc", "md")[0].startswith(b"# Document\n")
