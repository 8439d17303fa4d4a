"""The three document kinds: schemas, typed writers and readers, and readers' tolerance of junk.

Readers must never raise on a document's content (clients can write anything a CRDT allows):
whatever does not fit the schema is skipped and reported as a Problem(path, message).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from shared import board as boards
from shared import discussion as discussions
from shared import richtext
from shared.documents import (
    KINDS,
    Problem,
    ProblemLog,
    call_with_deep_stack,
    detect_kind,
    initialize,
    parse_timestamp,
    to_plain,
    utc_now,
)
from shared.richtext import Mark, Node, TextRun
from shared.schema import (
    KNOWN_MARKS,
    KNOWN_NODES,
    PRIORITIES,
    ROOT_TYPES,
    STATUSES,
    load_schema,
)

ROOT = Path(__file__).resolve().parent.parent


def new_doc(kind: str, **kwargs: Any) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    with doc.transaction():
        initialize(doc, kind, title=kwargs.pop("title", "标题 ✅"), **kwargs)  # type: ignore[arg-type]
    return doc


def synced(doc: Doc[Any]) -> Doc[Any]:
    """A fresh replica of `doc`, as a server or another client would have it."""
    copy: Doc[Any] = Doc()
    copy.apply_update(doc.get_update())
    return copy


def paths(problems: list[Problem]) -> set[str]:
    return {p.path for p in problems}


# --- a small JSON Schema (2020-12) checker for the subset the schemas use ---------------------


def validate(
    instance: Any, schema: dict[str, Any], root: dict[str, Any], at: str = ""
) -> list[str]:
    errors: list[str] = []
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/$defs/")
        errors += validate(instance, root["$defs"][ref[len("#/$defs/") :]], root, at)
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        checks = {
            "object": lambda v: isinstance(v, dict),
            "array": lambda v: isinstance(v, list),
            "string": lambda v: isinstance(v, str),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "boolean": lambda v: isinstance(v, bool),
            "null": lambda v: v is None,
        }
        if not any(checks[name](instance) for name in names):
            return errors + [f"{at}: {instance!r} is not {types}"]
    if "const" in schema and instance != schema["const"]:
        errors.append(f"{at}: {instance!r} != {schema['const']!r}")
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{at}: {instance!r} not in {schema['enum']}")
    if "not" in schema and not validate(instance, schema["not"], root, at):
        errors.append(f"{at}: {instance!r} matches a `not` schema")
    if "anyOf" in schema and not any(
        not validate(instance, sub, root, at) for sub in schema["anyOf"]
    ):
        errors.append(f"{at}: {instance!r} matches no anyOf branch")
    if isinstance(instance, str):
        if len(instance) < schema.get("minLength", 0):
            errors.append(f"{at}: too short")
        if schema.get("format") in ("date", "date-time"):
            try:
                parsed = parse_timestamp(instance)
            except ValueError:
                errors.append(f"{at}: {instance!r} is not a {schema['format']}")
            else:
                if (schema["format"] == "date") == isinstance(parsed, datetime):
                    errors.append(f"{at}: {instance!r} is not a {schema['format']}")
    if isinstance(instance, int | float) and not isinstance(instance, bool):
        if "minimum" in schema and instance < schema["minimum"]:
            errors.append(f"{at}: below minimum")
        if "maximum" in schema and instance > schema["maximum"]:
            errors.append(f"{at}: above maximum")
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in instance:
                errors.append(f"{at}/{key}: required")
        for key, value in instance.items():
            if key in props:
                errors += validate(value, props[key], root, f"{at}/{key}")
            else:
                extra = schema.get("additionalProperties", True)
                if extra is False:
                    errors.append(f"{at}/{key}: not allowed")
                elif isinstance(extra, dict):
                    errors += validate(value, extra, root, f"{at}/{key}")
    if isinstance(instance, list) and "items" in schema:
        for index, item in enumerate(instance):
            errors += validate(item, schema["items"], root, f"{at}/{index}")
    return errors


def conforms(kind: str, data: dict[str, Any]) -> list[str]:
    schema = load_schema(kind)  # type: ignore[arg-type]
    return validate(data, schema, schema)


# --- schemas --------------------------------------------------------------------------------


def test_schemas_are_versioned_and_agree_with_the_code() -> None:
    for kind in KINDS:
        schema = load_schema(kind)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["x-schema-version"] == 1
        assert schema["x-kind"] == kind
        text = (ROOT / "shared" / "schema" / f"{kind}.schema.json").read_text("utf-8")
        assert '"x-schema-version": 1' in text
    assert STATUSES == ("todo", "in_progress", "done")
    assert PRIORITIES == ("low", "normal", "high", "urgent")
    assert dict(ROOT_TYPES["board"]) == {"meta": "Map", "tasks": "Map"}
    assert dict(ROOT_TYPES["doc"]) == {"meta": "Map", "default": "XmlFragment"}
    assert dict(ROOT_TYPES["discussion"]) == {"meta": "Map", "messages": "Array"}
    starter_kit = {
        "paragraph",
        "heading",
        "bulletList",
        "orderedList",
        "listItem",
        "blockquote",
        "codeBlock",
        "horizontalRule",
        "hardBreak",
    }
    extensions = {"taskList", "taskItem", "table", "tableRow", "tableHeader", "tableCell"}
    assert starter_kit | extensions <= set(KNOWN_NODES)
    assert {"bold", "italic", "code", "strike", "link"} <= set(KNOWN_MARKS)
    unknown = load_schema("doc")["$defs"]["unknown"]["properties"]["type"]["not"]["enum"]
    assert set(unknown) == set(KNOWN_NODES)


@pytest.mark.parametrize("kind", KINDS)
def test_initialize_writes_the_roots_of_the_schema(kind: str) -> None:
    doc = synced(new_doc(kind, department="市场部"))
    assert detect_kind(doc) == kind
    meta = doc.get("meta", type=Map)
    assert meta["kind"] == kind and meta["schema"] == 1 and meta["department"] == "市场部"
    reader = {
        "board": boards.read_board,
        "doc": richtext.read_doc,
        "discussion": discussions.read_discussion,
    }[kind]
    model, problems = reader(doc)
    assert problems == []
    errors = conforms(kind, model.to_json())  # type: ignore[attr-defined]
    assert errors == []


def test_set_meta_of_a_rich_text_document() -> None:
    doc = new_doc("doc")
    richtext.set_meta(
        doc, title="新标题", department="客服部", tags=["FAQ", "FAQ", "双11"], notes="备注"
    )
    model, problems = richtext.read_doc(synced(doc))
    assert problems == []
    assert model.meta == richtext.DocMeta("新标题", "客服部", ("FAQ", "双11"), "备注", "doc", 1)


def test_detect_kind_tolerates_junk() -> None:
    doc: Doc[Any] = Doc()
    assert detect_kind(doc) is None
    doc.get("meta", type=Map)["kind"] = Map({"x": 1})
    assert detect_kind(doc) is None
    doc.get("meta", type=Map)["kind"] = "spreadsheet"
    assert detect_kind(doc) is None


# --- boards ---------------------------------------------------------------------------------


def test_board_writers_and_reader_round_trip() -> None:
    doc = new_doc("board", title="双11 任务板", department="运营部", project="双11")
    first = boards.add_task(
        doc,
        "首页 Banner 🎨",
        status="in_progress",
        assignee="wang.fang",
        department="市场部",
        due="2025-10-25T18:00:00+08:00",
        priority="high",
        tags=("预售", "首页", "预售"),
        subtasks=("初稿", boards.Subtask("s2", "审核", True)),
        created_by="li.lei",
        description="第一行\n第二行",
        watchers=("zhao.min",),
        created_at="2025-10-01T09:00:00Z",
    )
    second = boards.add_task(doc, "满减券", due=date(2025, 11, 1), task_id="t-coupon")
    third = boards.add_task(doc, "FAQ", due=datetime(2025, 11, 2, 9, 30, tzinfo=UTC))
    assert second == "t-coupon" and len({first, second, third}) == 3

    board, problems = boards.read_board(synced(doc))
    assert problems == []
    assert board.meta == boards.BoardMeta("双11 任务板", "运营部", "双11", "board", 1)
    task = board.task(first)
    assert task is not None
    assert task.title == "首页 Banner 🎨" and task.status == "in_progress"
    assert task.assignee == "wang.fang" and task.department == "市场部"
    assert task.due == "2025-10-25T18:00:00+08:00" and task.priority == "high"
    assert task.tags == ("预售", "首页")
    assert [(s.title, s.done) for s in task.subtasks] == [("初稿", False), ("审核", True)]
    assert task.subtasks[1].id == "s2" and task.subtasks_done == 1
    assert task.description == "第一行\n第二行" and task.watchers == ("zhao.min",)
    assert task.created_by == "li.lei" and task.created_at == "2025-10-01T09:00:00Z"
    coupon = board.task(second)
    assert coupon is not None and coupon.due == "2025-11-01" and coupon.priority == "normal"
    faq = board.task(third)
    assert faq is not None and faq.due == "2025-11-02T09:30:00+00:00"
    assert faq.created_at is not None and faq.created_at.endswith("Z")
    # Column order: todo tasks in the order they were added.
    assert [t.id for t in board.column("todo")] == [second, third]
    assert conforms("board", board.to_json()) == []


def test_board_task_operations() -> None:
    doc = new_doc("board")
    a = boards.add_task(doc, "A", task_id="a")
    b = boards.add_task(doc, "B", task_id="b")
    c = boards.add_task(doc, "C", task_id="c", status="in_progress")

    boards.move_task(doc, a, "in_progress")
    board, _ = boards.read_board(doc)
    assert [t.id for t in board.column("in_progress")] == [c, a]
    boards.move_task(doc, a, "in_progress", order=-1)
    board, _ = boards.read_board(doc)
    assert [t.id for t in board.column("in_progress")] == [a, c]

    boards.assign_task(doc, b, "chen.jie")
    boards.set_due(doc, b, "2025-11-11")
    boards.set_priority(doc, b, "urgent")
    boards.complete_task(doc, c)
    boards.complete_task(doc, c)  # already done: unchanged
    sub = boards.add_subtask(doc, b, "子任务")
    boards.set_subtask_done(doc, b, sub)
    boards.update_task(doc, b, title="B2", tags=["x"], watchers=["y"], description="d")
    board, problems = boards.read_board(synced(doc))
    assert problems == []
    task_b = board.task(b)
    assert task_b is not None
    assert (task_b.assignee, task_b.due, task_b.priority) == ("chen.jie", "2025-11-11", "urgent")
    assert task_b.title == "B2" and task_b.tags == ("x",) and task_b.watchers == ("y",)
    assert task_b.subtasks == (boards.Subtask(sub, "子任务", True),)
    task_c = board.task(c)
    assert task_c is not None and task_c.status == "done"

    boards.update_task(doc, b, status="done", subtasks=["only"], assignee=None, due=None)
    board, _ = boards.read_board(doc)
    task_b = board.task(b)
    assert task_b is not None and task_b.status == "done" and task_b.assignee is None
    assert task_b.due is None and [s.title for s in task_b.subtasks] == ["only"]
    assert [t.id for t in board.column("done")] == [c, b]

    assert boards.delete_task(doc, a) is True
    assert boards.delete_task(doc, a) is False
    board, _ = boards.read_board(doc)
    assert board.task(a) is None


def test_board_writers_reject_bad_arguments() -> None:
    doc = new_doc("board")
    task = boards.add_task(doc, "T")
    with pytest.raises(ValueError):
        boards.add_task(doc, "X", status="blocked")
    with pytest.raises(ValueError):
        boards.add_task(doc, "X", priority="p0")
    with pytest.raises(ValueError):
        boards.add_task(doc, "X", due="next friday")
    with pytest.raises(ValueError):
        boards.add_task(doc, "X", tags="not-a-list")
    with pytest.raises(ValueError):
        boards.add_task(doc, "X", task_id=task)
    with pytest.raises(ValueError):
        boards.move_task(doc, task, "archived")
    with pytest.raises(ValueError):
        boards.update_task(doc, task, colour="red")
    with pytest.raises(ValueError):
        boards.set_due(doc, task, "31/12/2025")
    with pytest.raises(KeyError):
        boards.assign_task(doc, "missing", "x")
    with pytest.raises(KeyError):
        boards.set_subtask_done(doc, task, "missing")
    doc.get("tasks", type=Map)["junk"] = "not a map"
    with pytest.raises(ValueError):
        boards.move_task(doc, "junk", "done")
    board, _ = boards.read_board(doc)
    assert [t.title for t in board.tasks] == ["T"]


# --- rich text ------------------------------------------------------------------------------

MARKDOWN = """# 双11 计划 🎉

第一段 **粗体** 和 *斜体* 以及 `code`、~~删除~~ 和 [链接](https://example.com)
第二行

- 项目 A
  - 子项目
- 项目 B

3. 三
4. 四

- [ ] 待办
- [x] 完成

> 引用

```python
print("hi")
```

---

| 列1 | 列2 |
| --- | --- |
| a | b |
"""


def test_set_text_writes_what_read_doc_reads() -> None:
    doc = new_doc("doc")
    richtext.set_text(doc, MARKDOWN)
    model, problems = richtext.read_doc(synced(doc))
    assert problems == []
    assert model.content == richtext.parse_markdown(MARKDOWN)
    blocks = [n.type for n in model.content.content if isinstance(n, Node)]
    assert blocks == [
        "heading",
        "paragraph",
        "bulletList",
        "orderedList",
        "taskList",
        "blockquote",
        "codeBlock",
        "horizontalRule",
        "table",
    ]
    first = model.content.content[1]
    assert isinstance(first, Node)
    runs = [
        (c.text, tuple(m.type for m in c.marks)) for c in first.content if isinstance(c, TextRun)
    ]
    assert ("粗体", ("bold",)) in runs and ("斜体", ("italic",)) in runs
    assert ("code", ("code",)) in runs and ("删除", ("strike",)) in runs
    assert ("链接", ("link",)) in runs
    assert any(isinstance(c, Node) and c.type == "hardBreak" for c in first.content)
    ordered = model.content.content[3]
    assert isinstance(ordered, Node) and ordered.start == 3
    tasks = model.content.content[4]
    assert isinstance(tasks, Node)
    assert [isinstance(i, Node) and i.checked for i in tasks.content] == [False, True]
    assert conforms("doc", model.to_json()) == []
    # The stored shape is y-prosemirror's: numbers stay numbers, marks are formatting.
    xml = str(doc.get("default", type=XmlFragment))
    assert '<heading level="1">' in xml and "<bold>粗体</bold>" in xml
    assert '<link href="https://example.com">链接</link>' in xml
    richtext.set_text(doc, "plain\ntext")
    model, _ = richtext.read_doc(doc)
    assert richtext.plain_text(model.content) == "plain\ntext"


def _element(parent: XmlFragment | XmlElement, tag: str, **attrs: Any) -> XmlElement:
    element = parent.children.append(XmlElement(tag))
    for key, value in attrs.items():
        element.attributes[key] = value
    return element


def _text(parent: XmlElement | XmlFragment, *runs: tuple[str, dict[str, Any]]) -> XmlText:
    text = parent.children.append(XmlText())
    for chunk, attrs in runs:
        text.insert(len(text), chunk, attrs)
    return text


def test_read_richtext_as_tiptap_stores_it() -> None:
    doc = new_doc("doc")
    with doc.transaction():
        fragment = doc.get("default", type=XmlFragment)
        _text(_element(fragment, "heading", level=2), ("标题 🎯", {}))
        _text(_element(fragment, "heading", level="3"), ("old clients wrote strings", {}))
        paragraph = _element(fragment, "paragraph")
        _text(
            paragraph,
            ("粗 ", {"bold": {}}),
            ("粗斜", {"bold": {}, "italic": {}}),
            (" link", {"link": {"href": "https://x.test", "target": "_blank", "rel": None}}),
            (" hashed", {"link--a1B2c3D4": {"href": "https://y.test"}}),
            (" strong", {"strong": True}),
        )
        _element(paragraph, "hardBreak")
        _text(paragraph, ("after break", {}))
        _text(
            _element(
                _element(_element(fragment, "taskList"), "taskItem", checked=True), "paragraph"
            ),
            ("done", {}),
        )
        _element(fragment, "bullet_list")
    model, problems = richtext.read_doc(synced(doc))
    assert problems == []
    h2, h3, para, tasks, bullets = model.content.content
    assert isinstance(h2, Node) and h2.type == "heading" and h2.level == 2
    assert isinstance(h3, Node) and h3.level == 3 and h3.attrs == {"level": 3}
    assert isinstance(para, Node)
    assert para.content[0] == TextRun("粗 ", (Mark("bold"),))
    assert para.content[1] == TextRun("粗斜", (Mark("bold"), Mark("italic")))
    assert para.content[2] == TextRun(
        " link", (Mark("link", {"href": "https://x.test", "target": "_blank"}),)
    )
    assert para.content[3] == TextRun(" hashed", (Mark("link", {"href": "https://y.test"}),))
    assert para.content[4] == TextRun(" strong", (Mark("bold"),))
    assert isinstance(para.content[5], Node) and para.content[5].type == "hardBreak"
    assert isinstance(tasks, Node) and tasks.content[0].checked  # type: ignore[union-attr]
    assert isinstance(bullets, Node) and bullets.type == "bulletList"


def test_read_richtext_reports_unknown_and_misplaced_nodes() -> None:
    doc = new_doc("doc")
    with doc.transaction():
        fragment = doc.get("default", type=XmlFragment)
        _text(fragment, ("text at the top", {}))
        mention = _element(_element(fragment, "paragraph"), "mention", id="u1")
        _text(mention, ("@wang", {}))
        _element(fragment, "heading", level="nine")
        _element(fragment, "heading", level=9)
        _element(fragment, "taskList").children.append(XmlElement("paragraph"))
        _text(_element(fragment, "paragraph"), ("hi", {"highlight": {"color": "red"}}))
        _text(_element(fragment, "paragraph"), ("x", {"link": {"target": "_blank"}}))
        embed = _text(_element(fragment, "paragraph"), ("a", {}))
        embed.insert_embed(1, {"image": "x.png"})
        _element(fragment, "codeBlock", language=5)
    model, problems = richtext.read_doc(doc)
    messages = " | ".join(p.message for p in problems)
    assert "text is not allowed in doc" in messages
    assert "unknown node type 'mention'" in messages
    assert "missing or not a number" in messages and "9 is not 1-6" in messages
    assert "paragraph is not allowed in taskList" in messages
    assert "unknown mark 'highlight'" in messages
    assert "link without an href" in messages
    assert "embedded in text" in messages
    assert "/default/content/8/attrs/language" in paths(problems)
    assert all(p.path.startswith("/default") for p in problems)
    assert richtext.plain_text(model.content).startswith("text at the top\n@wang")


def test_parse_markdown_reads_escapes_and_nesting() -> None:
    node = richtext.parse_markdown("\\# not a heading \\*x\\*\n\n1) a\n   - b\n     - c\n2) d")
    paragraph, ordered = node.content
    assert isinstance(paragraph, Node) and richtext.plain_text(paragraph) == "# not a heading *x*"
    assert isinstance(ordered, Node) and ordered.type == "orderedList"
    assert richtext.plain_text(ordered) == "a\nb\nc\nd"


# --- discussions ----------------------------------------------------------------------------


def test_discussion_writers_and_reader_round_trip() -> None:
    doc = new_doc("discussion", title="讨论")
    anchor = discussions.Anchor(
        {
            "type": {"client": 1, "clock": 2},
            "tname": None,
            "item": {"client": 1, "clock": 5},
            "assoc": 0,
        },
        "AAECAw==",
        "双11 狂欢节",
    )
    m1 = discussions.post_message(doc, "wang", "你好 👋", mentions=["li"], anchor=anchor)
    m2 = discussions.post_message(doc, "li", "回复", reply_to=m1, message_id="m2")
    m3 = discussions.post_message(
        doc, "zhao", "再回复", reply_to=m2, created_at="2025-10-20T10:00:00+08:00"
    )
    m4 = discussions.post_message(doc, "chen", "另一个话题")
    discussions.edit_message(
        doc, m2, "回复（改）", mentions=["wang"], edited_at="2025-10-20T11:00:00Z"
    )
    discussions.delete_message(doc, m4)
    with pytest.raises(ValueError):
        discussions.edit_message(doc, m4, "again")
    with pytest.raises(KeyError):
        discussions.delete_message(doc, "nope")

    model, problems = discussions.read_discussion(synced(doc))
    assert problems == []
    assert [m.id for m in model.messages] == [m1, m2, m3, m4]
    first = model.message(m1)
    assert first is not None and first.anchor == anchor and first.mentions == ("li",)
    second = model.message(m2)
    assert second is not None and second.body == "回复（改）" and second.mentions == ("wang",)
    assert second.edited_at == "2025-10-20T11:00:00Z" and second.reply_to == m1
    deleted = model.message(m4)
    assert deleted is not None and deleted.deleted and deleted.body == ""
    entries = discussions.thread(model)
    assert [(e.message.id, e.depth) for e in entries] == [(m1, 0), (m2, 1), (m3, 2), (m4, 0)]
    assert entries[2].parent is not None and entries[2].parent.id == m2
    assert conforms("discussion", model.to_json()) == []


def test_thread_survives_cycles_and_missing_parents() -> None:
    doc = new_doc("discussion")
    with doc.transaction():
        messages = doc.get("messages", type=Array)
        for message_id, reply_to in (("a", "b"), ("b", "a"), ("c", "gone"), ("d", "d")):
            messages.append(
                Map(
                    {
                        "id": message_id,
                        "author": "x",
                        "body": "",
                        "created_at": None,
                        "reply_to": reply_to,
                    }
                )
            )
    model, problems = discussions.read_discussion(doc)
    entries = discussions.thread(model)
    assert sorted(e.message.id for e in entries) == ["a", "b", "c", "d"]
    assert len(entries) == 4
    messages_text = " | ".join(p.message for p in problems)
    assert "'gone' is not a message of this discussion" in messages_text
    assert "replies to itself" in messages_text


def test_long_discussions_are_read_in_order() -> None:
    doc = new_doc("discussion")
    with doc.transaction():
        messages = doc.get("messages", type=Array)
        for index in range(1500):
            messages.append(
                Map({"id": f"m{index}", "author": "a", "body": str(index), "created_at": None})
            )
        messages.append("junk in a long array")
    model, problems = discussions.read_discussion(synced(doc))
    assert [m.body for m in model.messages] == [str(i) for i in range(1500)]
    assert any("1 items are plain values" in p.message for p in problems)
    assert doc.get("messages", type=Array)[1500] == "junk in a long array"


# --- junk -----------------------------------------------------------------------------------


def put_deep_maps(parent: Map[Any] | Array[Any], key: str | None, depth: int) -> None:
    """Put Maps nested `depth` levels deep at parent[key] (or append them to an Array)."""
    current: Map[Any] = Map()
    if isinstance(parent, Array):
        parent.append(current)
    else:
        assert key is not None
        parent[key] = current
    for _ in range(depth):
        inner: Map[Any] = Map()
        current["x"] = inner
        current = inner


def put_deep_arrays(parent: Map[Any] | Array[Any], key: str | None, depth: int) -> None:
    current: Array[Any] = Array()
    if isinstance(parent, Array):
        parent.append(current)
    else:
        assert key is not None
        parent[key] = current
    for _ in range(depth):
        inner: Array[Any] = Array()
        current.append(inner)
        current = inner


def nested_dict(depth: int) -> dict[str, Any]:
    top: dict[str, Any] = {}
    current = top
    for _ in range(depth):
        current["x"] = {}
        current = current["x"]
    return top


JUNK: list[Any] = [
    None,
    0,
    -1.5,
    float("nan"),
    2**60,
    True,
    "",
    "junk <script>alert(1)</script>",
    b"\x00\x01",
    [1, "two", None],
    {"a": {"b": [1, 2]}},
    "deep-dict",
    "deep-maps",
    "deep-arrays",
    "text",
    "map",
    "array",
]


def put_junk(parent: Map[Any], key: str, name: Any) -> None:
    """Put a fresh junk value at parent[key] (shared types cannot be reused)."""
    if name == "deep-dict":
        parent[key] = nested_dict(1000)
    elif name == "deep-maps":
        put_deep_maps(parent, key, 1000)
    elif name == "deep-arrays":
        put_deep_arrays(parent, key, 1000)
    elif name == "text":
        parent[key] = Text("a Y.Text")
    elif name == "map":
        parent[key] = Map({"title": Map({"x": 1})})
    elif name == "array":
        parent[key] = Array([Map(), Array(), "x"])
    else:
        parent[key] = name


TASK_KEYS = [
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


@pytest.mark.parametrize("key", TASK_KEYS)
def test_board_reader_tolerates_junk_at_every_task_key(key: str) -> None:
    doc = new_doc("board")
    task_id = boards.add_task(doc, "valid", task_id="t")
    for index, junk in enumerate(JUNK):
        with doc.transaction():
            put_junk(doc.get("tasks", type=Map)["t"], key, junk)
        board, problems = boards.read_board(synced(doc))
        task = board.task(task_id)
        assert task is not None, (key, index)
        for problem in problems:
            assert isinstance(problem, Problem)
            assert problem.path.startswith(f"/tasks/t/{key}"), (key, junk, problem)
        assert conforms("board", board.to_json()) == [], (key, junk)


def test_board_reader_tolerates_junk_tasks_and_roots() -> None:
    doc = new_doc("board")
    boards.add_task(doc, "valid", task_id="ok")
    with doc.transaction():
        tasks = doc.get("tasks", type=Map)
        tasks["string"] = "just a string"
        tasks["number"] = 42
        tasks["array"] = Array([1, 2])
        put_deep_maps(tasks, "deep", 1000)
        tasks["deep-any"] = nested_dict(1000)
        tasks["plain"] = {"title": "a plain object", "status": "done"}
        tasks["bad"] = Map(
            {
                "title": 2025,
                "status": "blocked",
                "due": "next friday",
                "priority": "p0",
                "tags": Array(["ok", 5, Map()]),
                "subtasks": Array(
                    ["x", Map({"title": "no id"}), Map({"id": "s", "title": Map(), "done": "yes"})]
                ),
                "order": "first",
                "watchers": "everyone",
                "assignee": ["a"],
                "created_at": 1_700_000_000_000,
                "description": Map(),
            }
        )
        meta = doc.get("meta", type=Map)
        meta["title"] = Map({"x": 1})
        meta["kind"] = "doc"
        meta["schema"] = 99
    board, problems = boards.read_board(synced(doc))
    by_path = {p.path: p.message for p in problems}
    assert "not a Map" in by_path["/tasks/string"]
    assert "not a Map" in by_path["/tasks/number"]
    assert "not a Map" in by_path["/tasks/array"]
    assert "plain object" in by_path["/tasks/plain"]
    assert "'blocked' is not one of todo, in_progress, done" in by_path["/tasks/bad/status"]
    assert "not an ISO 8601" in by_path["/tasks/bad/due"]
    assert "/tasks/bad/tags/1" in by_path and "/tasks/bad/subtasks/0" in by_path
    assert "/tasks/bad/subtasks/1/id" in by_path and "/tasks/bad/subtasks/2/title" in by_path
    assert "/tasks/bad/order" in by_path and "/tasks/bad/watchers" in by_path
    assert "/meta/title" in by_path and "/meta/kind" in by_path and "/meta/schema" in by_path
    ids = {t.id for t in board.tasks}
    assert ids == {"ok", "plain", "bad", "deep", "deep-any"}
    bad = board.task("bad")
    assert bad is not None and bad.status == "todo" and bad.priority == "normal"
    assert bad.tags == ("ok",) and [s.id for s in bad.subtasks] == ["s"]
    assert bad.subtasks[0].done is False and bad.due is None
    assert conforms("board", board.to_json()) == []


def test_wrong_root_types_are_reported() -> None:
    doc: Doc[Any] = Doc()
    with doc.transaction():
        doc.get("meta", type=Array).append("not a map")
        doc.get("tasks", type=Array).extend(["a", "b"])
    board, problems = boards.read_board(synced(doc))
    assert board.tasks == ()
    assert {"/meta", "/tasks"} <= paths(problems)

    doc = Doc()
    with doc.transaction():
        doc.get("default", type=Map)["x"] = 1
        doc.get("messages", type=Text).insert(0, "text, not messages")
    model, problems = richtext.read_doc(synced(doc))
    assert model.content.content == () and "/default" in paths(problems)
    discussion, problems = discussions.read_discussion(synced(doc))
    assert discussion.messages == ()
    assert "/meta" in paths(problems)


def test_rich_text_reader_bounds_depth() -> None:
    doc = new_doc("doc")
    with doc.transaction():
        current: XmlFragment | XmlElement = doc.get("default", type=XmlFragment)
        for _ in range(1000):
            current = _element(current, "blockquote")
        _text(_element(current, "paragraph"), ("deep", {}))
        _element(doc.get("default", type=XmlFragment), "heading", level=1, junk=nested_dict(1000))
    model, problems = richtext.read_doc(synced(doc))
    assert any("nested deeper than 64 levels" in p.message for p in problems)
    assert any("nested too deeply" in p.message for p in problems)
    assert len(model.content.content) == 2


def test_discussion_reader_tolerates_junk_messages() -> None:
    doc = new_doc("discussion")
    discussions.post_message(doc, "a", "ok", message_id="ok")
    with doc.transaction():
        messages = doc.get("messages", type=Array)
        messages.append("a string")
        messages.append(7)
        messages.append(Map({"author": "no id"}))
        messages.append(Map({"id": "ok", "author": "dup", "body": "dup", "created_at": None}))
        put_deep_arrays(messages, None, 1000)
        messages.append(
            Map(
                {
                    "id": "bad",
                    "author": 5,
                    "body": Map(),
                    "created_at": "yesterday",
                    "reply_to": 3,
                    "mentions": "everyone",
                    "anchor": Map({"start": {"evil": 1}, "end": nested_dict(1000)}),
                    "edited_at": False,
                    "deleted": "true",
                }
            )
        )
        messages.append(
            Map(
                {"id": "anchored", "author": "x", "body": "y", "created_at": None, "anchor": "junk"}
            )
        )
    model, problems = discussions.read_discussion(synced(doc))
    assert [m.id for m in model.messages] == ["ok", "bad", "anchored"]
    bad = model.message("bad")
    assert bad is not None and bad.deleted and bad.body == "" and bad.anchor is None
    assert bad.author == "" and bad.created_at is None and bad.mentions == ()
    where = paths(problems)
    for path in ("/messages/1", "/messages/2", "/messages/3", "/messages/4/id", "/messages/5"):
        assert path in where, path
    assert "/messages/6/created_at" in where and "/messages/6/deleted" in where
    assert "/messages/6/anchor" in where and "/messages/7/anchor" in where
    assert conforms("discussion", model.to_json()) == []


def test_problem_log_caps_its_list() -> None:
    doc = new_doc("board")
    with doc.transaction():
        tasks = doc.get("tasks", type=Map)
        for index in range(800):
            tasks[f"junk{index:04d}"] = index
    board, problems = boards.read_board(doc)
    assert board.tasks == ()
    assert len(problems) == 501
    assert problems[-1] == Problem("", "300 more problems not listed")
    log = ProblemLog(limit=1)
    log.add_once("k", "/a", "m")
    log.add_once("k", "/b", "m")
    assert log.problems() == [Problem("/a", "m")]


def test_to_plain_is_bounded_and_json_safe() -> None:
    value, cut = to_plain(nested_dict(100), max_depth=5)
    assert cut and isinstance(value, dict)
    value, cut = to_plain({"b": float("inf"), "a": 2.0, "c": b"\x01"})
    assert value == {"a": 2, "b": None, "c": "AQ=="} and cut
    assert list(value) == ["a", "b", "c"]  # type: ignore[arg-type]


def test_readers_survive_values_nested_beyond_the_c_stack() -> None:
    """A plain value nested 20,000 levels deep (40 kB on the wire) overflows a default thread's
    stack while pycrdt converts it; readers run themselves on a deep stack.
    Run in a subprocess: the failure mode is a segfault."""
    script = textwrap.dedent(
        """
        from pycrdt import Doc, Map
        from server.export import export_document
        from shared.board import read_board
        from shared.discussion import read_discussion
        from shared.documents import detect_kind
        from shared.richtext import read_doc

        source = Doc(client_id=1)
        source.get("meta", type=Map)["title"] = [[[["leaf"]]]]
        update = source.get_update()
        nest = bytes([0x75, 0x01])
        at = update.find(nest * 4)
        crafted = update[:at] + nest * 20000 + update[at + 8:]
        doc = Doc()
        doc.apply_update(crafted)
        for read in (read_board, read_doc, read_discussion):
            model, problems = read(doc)
            assert any(p.path == "/meta/title" for p in problems), problems
        assert detect_kind(doc) is None
        for kind in ("board", "doc", "discussion"):
            body, _ = export_document(doc, kind, "md")
            assert b"/meta/title" in body
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


def test_call_with_deep_stack_returns_and_raises() -> None:
    assert call_with_deep_stack(lambda: 42) == 42
    with pytest.raises(ZeroDivisionError):
        call_with_deep_stack(lambda: 1 / 0)


def test_parse_timestamp_accepts_what_clients_write() -> None:
    assert parse_timestamp("2025-11-11") == date(2025, 11, 11)
    assert parse_timestamp("2025-11-11T12:00:00.000Z") == datetime(2025, 11, 11, 12, tzinfo=UTC)
    assert isinstance(parse_timestamp("2025-11-11T20:00:00+08:00"), datetime)
    for bad in ("", "next friday", "2025-13-01", "20251111", "1700000000000", "x" * 100):
        with pytest.raises(ValueError):
            parse_timestamp(bad)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", utc_now())
