"""Rich-text documents: the `doc` kind (shared/schema/doc.schema.json).

Shape: root Map `meta` (title, department, tags, notes) and root XmlFragment `default`, the rich
text as Tiptap's Collaboration extension (y-prosemirror) stores it:

- each ProseMirror node is an XmlElement named after the node type (`paragraph`, `heading`,
  `bulletList`, ...), its attributes are the node attributes with the values as set (Tiptap's
  heading `level` is a number; older clients wrote strings);
- the text of a textblock is XmlText; consecutive text nodes share one XmlText whose formatting
  attributes are the marks, mark name -> mark attributes (`{"bold": {}}`,
  `{"link": {"href": "https://..."}}`); y-prosemirror may suffix a mark name with `--` and an
  8-character hash when marks of one type overlap;
- `hardBreak` is an XmlElement between XmlTexts.

`read_richtext` turns that into a small tree of `Node` and `TextRun` (ProseMirror's JSON model),
keeping unknown node and mark types but reporting them, and never raising on content.
`set_content` and `set_text` write a tree, or simple Markdown, the way y-prosemirror would.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from shared.documents import (
    MAX_DEPTH,
    JsonValue,
    Problem,
    ProblemLog,
    call_with_deep_stack,
    describe,
    guarded,
    pointer,
    read_meta,
    read_root,
    to_plain,
)
from shared.roots import private_copy, root_shape
from shared.schema import KNOWN_MARKS, KNOWN_NODES

__all__ = [
    "DocMeta",
    "Mark",
    "Node",
    "TextDocument",
    "TextRun",
    "parse_markdown",
    "plain_text",
    "read_doc",
    "read_richtext",
    "set_content",
    "set_meta",
    "set_text",
    "text_marks",
    "text_paragraphs",
]

MAX_NODES = 100_000
"""Nodes read from one fragment before the rest is skipped (and reported)."""

# prosemirror-schema-basic / -list spellings of the same node and mark types.
NODE_ALIASES: Mapping[str, str] = {
    "bullet_list": "bulletList",
    "ordered_list": "orderedList",
    "list_item": "listItem",
    "task_list": "taskList",
    "task_item": "taskItem",
    "code_block": "codeBlock",
    "horizontal_rule": "horizontalRule",
    "hard_break": "hardBreak",
    "table_row": "tableRow",
    "table_header": "tableHeader",
    "table_cell": "tableCell",
}
MARK_ALIASES: Mapping[str, str] = {"strong": "bold", "em": "italic", "strikethrough": "strike"}
MARK_ORDER: tuple[str, ...] = ("link", "bold", "italic", "strike", "underline", "code")
"""Canonical nesting of marks, outermost first (unknown marks sort after these)."""

_HASHED_MARK = re.compile(r"^(.+)--[A-Za-z0-9+/=]{8}$")


@dataclass(frozen=True, slots=True)
class Mark:
    type: str
    attrs: dict[str, JsonValue] = field(default_factory=dict)

    @property
    def known(self) -> bool:
        return self.type in KNOWN_MARKS

    @property
    def href(self) -> str | None:
        href = self.attrs.get("href")
        return href if isinstance(href, str) else None

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {"type": self.type}
        if self.attrs:
            out["attrs"] = dict(self.attrs)
        return out


@dataclass(frozen=True, slots=True)
class TextRun:
    """A run of text with one set of marks (ProseMirror's text node)."""

    text: str
    marks: tuple[Mark, ...] = ()

    type = "text"

    def has(self, mark: str) -> bool:
        return any(m.type == mark for m in self.marks)

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {"type": "text", "text": self.text}
        if self.marks:
            out["marks"] = [m.to_json() for m in self.marks]
        return out


@dataclass(frozen=True, slots=True)
class Node:
    """A ProseMirror node: `type` is the Tiptap name; unknown types are kept (see `known`)."""

    type: str
    attrs: dict[str, JsonValue] = field(default_factory=dict)
    content: tuple[Node | TextRun, ...] = ()

    @property
    def known(self) -> bool:
        return self.type in KNOWN_NODES

    @property
    def level(self) -> int:
        """Heading level, 1-6."""
        level = self.attrs.get("level")
        return level if isinstance(level, int) and 1 <= level <= 6 else 1

    @property
    def checked(self) -> bool:
        return self.attrs.get("checked") is True

    @property
    def start(self) -> int:
        start = self.attrs.get("start")
        return start if isinstance(start, int) and not isinstance(start, bool) else 1

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {"type": self.type}
        if self.attrs:
            out["attrs"] = dict(self.attrs)
        if self.content:
            out["content"] = [c.to_json() for c in self.content]
        return out


@dataclass(frozen=True, slots=True)
class DocMeta:
    title: str = ""
    department: str | None = None
    tags: tuple[str, ...] = ()
    notes: str | None = None
    kind: str | None = "doc"
    schema: int | None = None

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "title": self.title,
            "department": self.department,
            "tags": list(self.tags),
            "notes": self.notes,
            "kind": self.kind,
            "schema": self.schema,
        }


@dataclass(frozen=True, slots=True)
class TextDocument:
    meta: DocMeta
    content: Node
    """The `default` fragment as a node of type "doc"."""

    def to_json(self) -> dict[str, JsonValue]:
        return {"meta": self.meta.to_json(), "default": self.content.to_json()}


def plain_text(node: Node | TextRun) -> str:
    """The text of a node: blocks separated by newlines, hard breaks as newlines."""
    if isinstance(node, TextRun):
        return node.text
    if node.type == "hardBreak":
        return "\n"
    group = KNOWN_NODES[node.type].group if node.known else None
    parts = [plain_text(child) for child in node.content]
    if group in ("block", "root", "item", "row", "cell") and node.type not in (
        "paragraph",
        "heading",
        "codeBlock",
    ):
        return "\n".join(p for p in parts if p)
    return "".join(parts)


# --- reading --------------------------------------------------------------------------------


def _group(node: Node | TextRun) -> str | None:
    if isinstance(node, TextRun):
        return "inline"
    spec = KNOWN_NODES.get(node.type)
    return spec.group if spec is not None else None


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,9}\s*", value):
        return int(value)
    return None


class _Reader:
    def __init__(self, log: ProblemLog) -> None:
        self.log = log
        self.count = 0
        self.truncated = False

    # attributes

    def attrs(self, element: XmlElement, node_type: str, path: str) -> dict[str, JsonValue]:
        raw: dict[str, Any] = {}
        for key, value in list(element.attributes.__iter__()):
            if isinstance(key, str) and value is not None:
                raw[key] = value
        out: dict[str, JsonValue] = {}
        for key, value in sorted(raw.items(), key=lambda e: e[0]):
            plain, cut = to_plain(value, max_depth=8)
            if cut:
                self.log.add(pointer(path, "attrs", key), "nested too deeply; cut")
            out[key] = plain
        at = pointer(path, "attrs")
        if node_type == "heading":
            level = _as_int(out.get("level"))
            if level is None:
                self.log.add(pointer(at, "level"), "missing or not a number; read as 1")
                level = 1
            elif not 1 <= level <= 6:
                self.log.add(pointer(at, "level"), f"{level} is not 1-6; clamped")
                level = min(6, max(1, level))
            out["level"] = level
        elif node_type == "orderedList" and "start" in out:
            start = _as_int(out["start"])
            if start is None or start < 0:
                self.log.add(pointer(at, "start"), "not a whole number >= 0; read as 1")
                start = 1
            out["start"] = start
        elif node_type == "taskItem":
            checked = out.get("checked", False)
            if checked in ("true", "false"):
                checked = checked == "true"
            if not isinstance(checked, bool):
                self.log.add(
                    pointer(at, "checked"), f"expected a boolean, found {describe(checked)}"
                )
                checked = False
            out["checked"] = checked
        elif node_type in ("tableCell", "tableHeader"):
            for key in ("colspan", "rowspan"):
                if key in out:
                    span = _as_int(out[key])
                    if span is None or not 1 <= span <= 1000:
                        self.log.add(pointer(at, key), "not a whole number 1-1000; read as 1")
                        span = 1
                    out[key] = span
        elif node_type == "codeBlock" and "language" in out:
            if not isinstance(out["language"], str):
                self.log.add(pointer(at, "language"), "not a string; ignored")
                del out["language"]
        elif node_type == "image":
            for key in ("src", "alt", "title"):
                if key in out and not isinstance(out[key], str):
                    self.log.add(pointer(at, key), "not a string; ignored")
                    del out[key]
        return out

    # marks

    def marks(self, attrs: Mapping[str, Any] | None, path: str) -> tuple[Mark, ...]:
        if not attrs:
            return ()
        marks: list[Mark] = []
        for raw_name, value in attrs.items():
            if value is None or value is False or not isinstance(raw_name, str):
                continue
            hashed = _HASHED_MARK.match(raw_name)
            name = hashed.group(1) if hashed else raw_name
            name = MARK_ALIASES.get(name, name)
            if any(m.type == name for m in marks):
                continue
            plain, _cut = to_plain(value, max_depth=8)
            mark_attrs: dict[str, JsonValue] = dict(plain) if isinstance(plain, dict) else {}
            if name not in KNOWN_MARKS:
                self.log.add_once(
                    "mark:" + name, path, f"unknown mark {name[:40]!r}: kept, not rendered"
                )
            elif name == "link":
                href = mark_attrs.get("href")
                if not isinstance(href, str):
                    self.log.add(path, "link without an href; rendered as text")
                    continue
                mark_attrs = {"href": href}
                target = plain.get("target") if isinstance(plain, dict) else None
                if isinstance(target, str):
                    mark_attrs["target"] = target
            else:
                mark_attrs = {}
            marks.append(Mark(name, mark_attrs))
        rank = {name: i for i, name in enumerate(MARK_ORDER)}
        marks.sort(key=lambda m: (rank.get(m.type, len(rank)), m.type))
        return tuple(marks)

    # nodes

    def text(self, xml_text: XmlText, path: str) -> list[TextRun]:
        runs: list[TextRun] = []
        for value, attrs in xml_text.diff():
            if not isinstance(value, str):
                self.log.add(path, f"{describe(value)} embedded in text; skipped")
                continue
            if value:
                runs.append(TextRun(value, self.marks(attrs, path)))
        return runs

    def children(
        self, parent: XmlFragment | XmlElement, parent_type: str, path: str, depth: int
    ) -> tuple[Node | TextRun, ...]:
        spec = KNOWN_NODES.get(parent_type)
        out: list[Node | TextRun] = []
        for index, child in enumerate(list(parent.children)):
            if self.count >= MAX_NODES:
                if not self.truncated:
                    self.truncated = True
                    self.log.add(path, f"more than {MAX_NODES} nodes; the rest is skipped")
                break
            child_path = pointer(path, "content", index)
            nothing: list[Node | TextRun] = []
            read = partial(self.node, child, child_path, depth + 1)
            for item in guarded(self.log, child_path, "node", read, nothing):
                allowed = spec is None or spec.allows(item.type, _group(item))
                # Unknown nodes are reported as such, not again for where they are.
                if not allowed and (isinstance(item, TextRun) or item.known):
                    self.log.add_once(
                        f"place:{item.type}:{parent_type}",
                        child_path,
                        f"{item.type} is not allowed in {parent_type}; kept",
                    )
                if isinstance(item, TextRun) and out and isinstance(out[-1], TextRun):
                    if out[-1].marks == item.marks:
                        out[-1] = TextRun(out[-1].text + item.text, item.marks)
                        continue
                out.append(item)
        if parent_type == "codeBlock":
            out = [TextRun(c.text) if isinstance(c, TextRun) else c for c in out]
            merged: list[Node | TextRun] = []
            for item in out:
                if isinstance(item, TextRun) and merged and isinstance(merged[-1], TextRun):
                    merged[-1] = TextRun(merged[-1].text + item.text)
                else:
                    merged.append(item)
            out = merged
        return tuple(out)

    def node(self, child: object, path: str, depth: int) -> list[Node | TextRun]:
        self.count += 1
        if isinstance(child, XmlText):
            return list(self.text(child, path))
        if depth > MAX_DEPTH:
            self.log.add(path, f"nested deeper than {MAX_DEPTH} levels; skipped")
            return []
        if isinstance(child, XmlElement):
            tag = child.tag
            if not isinstance(tag, str) or not tag:
                self.log.add(path, "element without a name; skipped")
                return []
            name = NODE_ALIASES.get(tag, tag)
            if name not in KNOWN_NODES or name in ("doc", "text"):
                self.log.add_once(
                    "node:" + name, path, f"unknown node type {name[:40]!r}: rendered as its text"
                )
            attrs = self.attrs(child, name, path)
            content = self.children(child, name, path, depth)
            return [Node(name, attrs, content)]
        if isinstance(child, XmlFragment):
            self.log.add(path, "a nested XmlFragment; read as its content")
            return list(self.children(child, "fragment", path, depth))
        self.log.add(path, f"{describe(child)} in the XML tree; skipped")
        return []


def read_richtext(
    fragment: XmlFragment, log: ProblemLog | None = None, path: str = "/default"
) -> Node:
    """Read a y-prosemirror XmlFragment into a node of type "doc". Never raises because of
    content; problems go to `log`."""
    log = log if log is not None else ProblemLog()
    reader = _Reader(log)
    empty: tuple[Node | TextRun, ...] = ()

    def read() -> tuple[Node | TextRun, ...]:
        return reader.children(fragment, "doc", path, 0)

    content = call_with_deep_stack(lambda: guarded(log, path, "rich text", read, empty))
    return Node("doc", {}, content)


def text_marks(attrs: Mapping[str, Any] | None, log: ProblemLog, path: str) -> tuple[Mark, ...]:
    """The marks of a run of a Y.Text from its formatting attributes, as Quill and other
    Y.Text editors write them: `bold`, `italic`, `strike`, `underline`, `code` set to true,
    `link` set to the URL (or to `{"href": ...}`). Other attributes are reported once and
    ignored."""
    if not attrs:
        return ()
    marks: list[Mark] = []
    for raw_name, value in attrs.items():
        if value is None or value is False or not isinstance(raw_name, str):
            continue
        name = MARK_ALIASES.get(raw_name, raw_name)
        if any(m.type == name for m in marks):
            continue
        if name == "link":
            plain, _cut = to_plain(value, max_depth=4)
            href = plain.get("href") if isinstance(plain, dict) else plain
            if not isinstance(href, str) or not href:
                log.add(path, "link without a URL; rendered as text")
                continue
            marks.append(Mark("link", {"href": href}))
        elif name in KNOWN_MARKS:
            marks.append(Mark(name))
        else:
            log.add_once(
                "text-attribute:" + name,
                path,
                f"text attribute {name[:40]!r} is not a known mark; ignored",
            )
    rank = {name: i for i, name in enumerate(MARK_ORDER)}
    marks.sort(key=lambda m: (rank.get(m.type, len(rank)), m.type))
    return tuple(marks)


def text_paragraphs(
    chunks: Iterable[tuple[Any, Mapping[str, Any] | None]], log: ProblemLog, path: str
) -> tuple[Node, ...]:
    """A Y.Text's formatted chunks (`Text.diff()`) as paragraphs, one per line.

    Formatting becomes marks (see `text_marks`); a final newline ends the last line rather
    than starting an empty one; embeds are reported and skipped. At most MAX_NODES lines are
    read.
    """
    lines: list[list[TextRun]] = [[]]
    for value, attrs in chunks:
        if not isinstance(value, str):
            log.add(path, f"{describe(value)} embedded in text; skipped")
            continue
        parts = value.replace("\r\n", "\n").split("\n")
        marks = text_marks(attrs, log, path) if any(parts) else ()
        for index, part in enumerate(parts):
            if index:
                if len(lines) >= MAX_NODES:
                    log.add(path, f"more than {MAX_NODES} lines; the rest is skipped")
                    return tuple(Node("paragraph", {}, tuple(line)) for line in lines)
                lines.append([])
            if not part:
                continue
            line = lines[-1]
            if line and line[-1].marks == marks:
                line[-1] = TextRun(line[-1].text + part, marks)
            else:
                line.append(TextRun(part, marks))
    if len(lines) > 1 and not lines[-1]:
        lines.pop()
    if lines == [[]]:
        return ()
    return tuple(Node("paragraph", {}, tuple(line)) for line in lines)


def _text_root(doc: Doc[Any], log: ProblemLog) -> tuple[Node, ...]:
    """The paragraphs of a `text` root holding a Y.Text (as `doc.getText("text")` writes it).

    Which type the root is can only be seen by viewing it as several, which re-types it: that
    is done on a private copy, so `doc` (perhaps a live room's) is left as it was.
    """
    if "text" not in doc.keys():
        return ()
    copy = private_copy(doc)
    shape = root_shape(copy, "text")
    if shape is None or shape[1] is not Text:
        return ()
    return text_paragraphs(copy.get("text", type=Text).diff(), log, "/text")


def _read_meta(doc: Doc[Any], log: ProblemLog) -> DocMeta:
    fields = read_meta(doc, log, "doc")
    if fields is None:
        return DocMeta()
    return DocMeta(
        title=fields.string("title", required=True) or "",
        department=fields.string("department"),
        tags=fields.strings("tags"),
        notes=fields.string("notes"),
        kind="doc",
        schema=fields.integer("schema"),
    )


def read_doc(doc: Doc[Any]) -> tuple[TextDocument, list[Problem]]:
    """Read a rich-text document. Never raises because of the document's content (and runs on
    a deep stack, see shared.documents.call_with_deep_stack).

    The content is the `default` fragment, followed by the lines of a `text` root when that
    holds a Y.Text (read from a private copy, so `doc` may be a live room's)."""
    return call_with_deep_stack(lambda: _read_doc(doc))


def _read_doc(doc: Doc[Any]) -> tuple[TextDocument, list[Problem]]:
    log = ProblemLog()
    with doc.transaction():
        meta = guarded(log, "/meta", "meta", lambda: _read_meta(doc, log), DocMeta())

        def body() -> Node:
            fragment = read_root(doc, "default", XmlFragment, log)
            # An empty root is not sent in updates: absent means no text yet.
            return Node("doc") if fragment is None else read_richtext(fragment, log)

        content = guarded(log, "/default", "rich text", body, Node("doc"))
        # Plain Yjs apps (and the README's example) write a Y.Text `text` root instead.
        nothing: tuple[Node, ...] = ()
        extra = guarded(log, "/text", "text", lambda: _text_root(doc, log), nothing)
        if extra:
            content = Node("doc", content.attrs, content.content + extra)
    return TextDocument(meta, content), log.problems()


# --- writing --------------------------------------------------------------------------------


def _write_inline(parent: XmlElement, items: Iterable[Node | TextRun]) -> None:
    text: XmlText | None = None
    for item in items:
        if isinstance(item, TextRun):
            if not item.text:
                continue
            if text is None:
                text = parent.children.append(XmlText())
            attrs: dict[str, Any] = {m.type: dict(m.attrs) for m in item.marks}
            # Explicit nulls end marks that the previous run had (Yjs would inherit them).
            text.insert(len(text), item.text, attrs)
        else:
            text = None
            _write_node(parent, item)


def _write_node(parent: XmlFragment | XmlElement, node: Node) -> None:
    element = parent.children.append(XmlElement(node.type))
    for key, value in node.attrs.items():
        if value is not None:
            element.attributes[key] = value
    spec = KNOWN_NODES.get(node.type)
    inline = spec is not None and ("inline" in spec.content or "text" in spec.content)
    if inline or any(isinstance(c, TextRun) for c in node.content):
        _write_inline(element, node.content)
    else:
        for child in node.content:
            if isinstance(child, Node):
                _write_node(element, child)


def set_content(doc: Doc[Any], content: Node | Iterable[Node]) -> None:
    """Replace the `default` fragment with `content` (a "doc" node or a list of blocks), in one
    transaction, stored as y-prosemirror stores it."""
    blocks = content.content if isinstance(content, Node) and content.type == "doc" else content
    nodes = [blocks] if isinstance(blocks, Node) else list(blocks)
    with doc.transaction():
        fragment = doc.get("default", type=XmlFragment)
        length = len(fragment.children)
        if length:
            del fragment.children[0:length]
        for node in nodes:
            if isinstance(node, TextRun):
                node = Node("paragraph", {}, (node,))
            _write_node(fragment, node)


def set_text(doc: Doc[Any], text: str) -> None:
    """Replace the document's text with `text`, read as simple Markdown (plain text works:
    blank lines separate paragraphs, single newlines are hard breaks)."""
    set_content(doc, parse_markdown(text))


def set_meta(
    doc: Doc[Any],
    *,
    title: str | None = None,
    department: str | None = None,
    tags: Iterable[str] | None = None,
    notes: str | None = None,
) -> None:
    """Set the given meta fields of a rich-text document."""
    with doc.transaction():
        meta = doc.get("meta", type=Map)
        if title is not None:
            meta["title"] = title
        if department is not None:
            meta["department"] = department
        if tags is not None:
            meta["tags"] = Array([t for t in dict.fromkeys(tags) if isinstance(t, str)])
        if notes is not None:
            meta["notes"] = notes


# --- simple Markdown ------------------------------------------------------------------------

_INLINE = re.compile(
    r"\\(?P<esc>[!-/:-@\[-`{-~])"
    r"|(?P<tick>`+)(?P<code>.+?)(?P=tick)"
    r"|\[(?P<ltext>(?:\\.|[^\]\\])*)\]\((?P<href>[^()\s]*)\)"
    r"|\*\*(?P<b1>.+?)\*\*|__(?P<b2>.+?)__"
    r"|~~(?P<s>.+?)~~"
    r"|\*(?P<i1>[^*\s](?:.*?[^*\s])?)\*|\b_(?P<i2>[^_\s](?:.*?[^_\s])?)_\b"
)


def _inline(text: str, marks: tuple[Mark, ...] = ()) -> list[TextRun]:
    if len(marks) > 8:  # nested deeper than any sensible markup: keep the rest as text
        return [TextRun(text, marks)] if text else []
    runs: list[TextRun] = []

    def add(chunk: str, chunk_marks: tuple[Mark, ...]) -> None:
        if not chunk:
            return
        if runs and runs[-1].marks == chunk_marks:
            runs[-1] = TextRun(runs[-1].text + chunk, chunk_marks)
        else:
            runs.append(TextRun(chunk, chunk_marks))

    def with_mark(mark: Mark) -> tuple[Mark, ...]:
        rank = {name: i for i, name in enumerate(MARK_ORDER)}
        return tuple(sorted((*marks, mark), key=lambda m: rank.get(m.type, len(rank))))

    position = 0
    for match in _INLINE.finditer(text):
        add(text[position : match.start()], marks)
        position = match.end()
        groups = match.groupdict()
        if groups["esc"] is not None:
            add(groups["esc"], marks)
        elif groups["code"] is not None:
            code = groups["code"]
            if len(code) > 1 and code.startswith(" ") and code.endswith(" ") and code.strip():
                code = code[1:-1]
            add(code, with_mark(Mark("code")))
        elif groups["ltext"] is not None:
            for run in _inline(groups["ltext"], with_mark(Mark("link", {"href": groups["href"]}))):
                add(run.text, run.marks)
        else:
            for name, mark in (("b1", "bold"), ("b2", "bold"), ("s", "strike")):
                if groups[name] is not None:
                    inner = _inline(groups[name], with_mark(Mark(mark)))
                    break
            else:
                body = groups["i1"] if groups["i1"] is not None else groups["i2"]
                inner = _inline(body or "", with_mark(Mark("italic")))
            for run in inner:
                add(run.text, run.marks)
    add(text[position:], marks)
    return runs


def _inline_lines(lines: list[str]) -> tuple[Node | TextRun, ...]:
    out: list[Node | TextRun] = []
    for index, line in enumerate(lines):
        if index:
            if out and isinstance(out[-1], TextRun) and out[-1].text.endswith("\\"):
                last = out[-1]
                out[-1] = TextRun(last.text[:-1], last.marks)
            out.append(Node("hardBreak"))
        out.extend(_inline(line.strip() if index else line.rstrip()))
    return tuple(out)


_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:\s+(.*?))?\s*#*\s*$")
_RULE = re.compile(r"^ {0,3}([-*_])(?:\s*\1){2,}\s*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)")
_ITEM = re.compile(r"^(\s*)([-*+]|\d{1,9}[.)])(?:\s+|$)(?:\[([ xX])\](?:\s+|$))?(.*)$")
_QUOTE = re.compile(r"^ {0,3}> ?(.*)$")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{1,}:?\s*(\|\s*:?-{1,}:?\s*)*\|?\s*$")


def _cells(line: str) -> list[str]:
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    return [c.strip() for c in re.split(r"(?<!\\)\|", body)]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _blocks(lines: list[str], depth: int = 0) -> list[Node]:
    if depth >= MAX_DEPTH:  # deeper quotes and lists stay text
        text = [ln for ln in lines if ln.strip()]
        return [Node("paragraph", {}, _inline_lines(text))] if text else []
    blocks: list[Node] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            marker = fence.group(1)
            body: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(marker):
                body.append(lines[i])
                i += 1
            i += 1
            attrs: dict[str, JsonValue] = {"language": fence.group(2)} if fence.group(2) else {}
            code = "\n".join(body)
            blocks.append(Node("codeBlock", attrs, (TextRun(code),) if code else ()))
            continue
        heading = _HEADING.match(line)
        if heading:
            level = len(heading.group(1))
            blocks.append(Node("heading", {"level": level}, tuple(_inline(heading.group(2) or ""))))
            i += 1
            continue
        if _RULE.match(line):
            blocks.append(Node("horizontalRule"))
            i += 1
            continue
        if _QUOTE.match(line):
            quoted: list[str] = []
            while i < len(lines) and lines[i].strip():
                match = _QUOTE.match(lines[i])
                quoted.append(match.group(1) if match else lines[i])
                i += 1
            blocks.append(Node("blockquote", {}, tuple(_blocks(quoted, depth + 1))))
            continue
        if _ITEM.match(line):
            node, i = _list(lines, i, depth)
            blocks.append(node)
            continue
        if (
            "|" in line
            and i + 1 < len(lines)
            and _TABLE_SEP.match(lines[i + 1])
            and "-" in lines[i + 1]
        ):
            rows = [_cells(line)]
            i += 2
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                rows.append(_cells(lines[i]))
                i += 1
            table_rows: list[Node] = []
            for r, row in enumerate(rows):
                cell_type = "tableHeader" if r == 0 else "tableCell"
                cells = tuple(
                    Node(cell_type, {}, (Node("paragraph", {}, tuple(_inline(c))),)) for c in row
                )
                table_rows.append(Node("tableRow", {}, cells))
            blocks.append(Node("table", {}, tuple(table_rows)))
            continue
        paragraph: list[str] = []
        while i < len(lines) and lines[i].strip():
            if paragraph and (
                _HEADING.match(lines[i])
                or _FENCE.match(lines[i])
                or _QUOTE.match(lines[i])
                or _RULE.match(lines[i])
                or _ITEM.match(lines[i])
            ):
                break
            paragraph.append(lines[i])
            i += 1
        blocks.append(Node("paragraph", {}, _inline_lines(paragraph)))
    return blocks


def _starts_block(line: str) -> bool:
    return bool(
        _HEADING.match(line) or _FENCE.match(line) or _QUOTE.match(line) or _RULE.match(line)
    )


def _list(lines: list[str], i: int, depth: int) -> tuple[Node, int]:
    first = _ITEM.match(lines[i])
    assert first is not None
    base = len(first.group(1))
    ordered = first.group(2)[0].isdigit()
    task = first.group(3) is not None and not ordered
    items: list[Node] = []
    while i < len(lines):
        match = _ITEM.match(lines[i])
        if match is None or len(match.group(1)) != base:
            break
        if match.group(2)[0].isdigit() != ordered:
            break
        content_indent = base + len(match.group(2)) + 1
        checked = match.group(3)
        body = [match.group(4)]
        if checked is not None and not task:
            body = [f"[{checked}] {match.group(4)}"]
        i += 1
        while i < len(lines):
            line = lines[i]
            if not line.strip():
                j = i + 1
                while j < len(lines) and not lines[j].strip():
                    j += 1
                if j < len(lines) and _indent(lines[j]) > base:
                    body.extend([""] * (j - i))
                    i = j
                    continue
                break
            inner = _ITEM.match(line)
            if inner is not None and len(inner.group(1)) <= base:
                break
            if inner is None and _indent(line) <= base:
                if _starts_block(line):
                    break
                body.append(line.strip())  # a lazy continuation line
                i += 1
                continue
            body.append(line[min(_indent(line), content_indent) :])
            i += 1
        content = tuple(_blocks(body, depth + 1)) or (Node("paragraph"),)
        if task:
            items.append(Node("taskItem", {"checked": checked in ("x", "X")}, content))
        else:
            items.append(Node("listItem", {}, content))
        j = i
        while j < len(lines) and not lines[j].strip():
            j += 1
        nxt = _ITEM.match(lines[j]) if j < len(lines) else None
        if nxt is not None and len(nxt.group(1)) == base and j > i:
            i = j
    if task:
        return Node("taskList", {}, tuple(items)), i
    if ordered:
        start = int(first.group(2)[:-1])
        return Node("orderedList", {"start": start}, tuple(items)), i
    return Node("bulletList", {}, tuple(items)), i


def parse_markdown(text: str) -> Node:
    """Parse simple Markdown (headings, paragraphs, bullet / ordered / task lists, blockquotes,
    fenced code, rules, pipe tables, bold, italic, strike, code, links) into a "doc" node."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4).split("\n")
    return Node("doc", {}, tuple(_blocks(lines)))


def iter_nodes(node: Node) -> Iterator[Node | TextRun]:
    """Every node and text run under `node`, depth first (not including `node`)."""
    stack: list[Node | TextRun] = list(reversed(node.content))
    while stack:
        item = stack.pop()
        yield item
        if isinstance(item, Node):
            stack.extend(reversed(item.content))
