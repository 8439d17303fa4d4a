"""Raw documents: the `raw` kind, any Yjs document not shaped like a board, doc or discussion.

A raw document has no schema: every root is read generically, as JSON (for the JSON export
and for comparing versions) and as rich text (for Markdown and HTML exports).

JSON of a root, by what it holds (see shared/roots.py `root_shapes`):

- Map: an object, keys sorted;
- Array: a list;
- Text: the string, or, when some of it is formatted or embeds something, the delta
  `[{"insert": "...", "attributes": {...}}, ...]` (`attributes` only where there are some);
- XmlFragment: a list of XML nodes, an element as
  `{"element": name, "attributes": {...}, "children": [...]}`, an XmlText as `{"text": "..."}`
  or, when formatted, `{"delta": [...]}` as for Text;
- a root with both keyed entries and a sequence (two clients used it as different types):
  `{"entries": {...the Map's object...}, "items": ...the sequence's JSON...}`.

Shared types nested anywhere are converted the same way, a subdocument as
`{"subdocument": guid}`, plain values as shared.documents.to_plain does. Reading stops at
MAX_DEPTH levels and after MAX_VALUES values; what is left out is reported as a Problem.

    raw, problems = read_raw(private_copy(doc))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import Any

from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from shared.documents import (
    MAX_DEPTH,
    JsonValue,
    Problem,
    ProblemLog,
    call_with_deep_stack,
    guarded,
    pointer,
    to_plain,
)
from shared.richtext import DocMeta, Mark, Node, TextRun, read_richtext, text_paragraphs
from shared.roots import root_shapes

__all__ = ["MAX_VALUES", "RawDocument", "read_raw"]

MAX_VALUES = 100_000
"""Values (shared types, items, entries, XML nodes) converted before the rest is left out."""

_SHARED: tuple[type[Any], ...] = (Map, Array, Text, XmlText, XmlElement, XmlFragment)


@dataclass(frozen=True, slots=True)
class RawDocument:
    meta: DocMeta
    """kind "raw"; the title is the `meta` Map's `title` string, if there is one."""
    roots: dict[str, JsonValue]
    """Root name -> the root's JSON (see the module docstring), names sorted."""
    content: Node
    """Every root as rich text (a "doc" node): its name as a level-2 heading, then its content."""

    def to_json(self) -> dict[str, JsonValue]:
        return {"meta": self.meta.to_json(), "roots": dict(self.roots)}


def read_raw(doc: Doc[Any]) -> tuple[RawDocument, list[Problem]]:
    """Read every root of `doc` generically. Never raises because of the document's content;
    runs on a deep stack (see shared.documents.call_with_deep_stack).

    Pass a private copy (shared.roots.private_copy), never a live room's document: finding out
    what each root is means viewing it as several Yjs types, which re-types it in `doc`.
    """
    return call_with_deep_stack(lambda: _read_raw(doc))


def _read_raw(doc: Doc[Any]) -> tuple[RawDocument, list[Problem]]:
    log = ProblemLog()
    nothing: dict[str, tuple[bool, type[Any] | None]] = {}
    shapes = guarded(log, "", "the document's roots", lambda: root_shapes(doc), nothing)
    reader = _JsonReader(log)
    roots: dict[str, JsonValue] = {}
    blocks: list[Node] = []
    title = ""
    for name, (keyed, sequence) in shapes.items():
        path = pointer("", name)
        read_json = partial(_root_json, doc, name, keyed, sequence, reader)
        value = guarded(log, path, "root", read_json, None)
        roots[name] = value
        blocks.append(Node("heading", {"level": 2}, (TextRun(name),)))
        empty: tuple[Node, ...] = ()
        read_blocks = partial(_root_blocks, doc, name, keyed, sequence, value, log)
        blocks.extend(guarded(log, path, "root", read_blocks, empty))
        if name == "meta" and isinstance(value, dict):
            found = value.get("entries", value) if sequence is not None else value
            if isinstance(found, dict) and isinstance(found.get("title"), str):
                title = str(found["title"])
    meta = DocMeta(title=title, kind="raw")
    return RawDocument(meta, roots, Node("doc", {}, tuple(blocks))), log.problems()


def _root_json(
    doc: Doc[Any], name: str, keyed: bool, sequence: type[Any] | None, reader: _JsonReader
) -> JsonValue:
    path = pointer("", name)
    entries: JsonValue = None
    if keyed:
        entries_path = pointer(path, "entries") if sequence is not None else path
        entries = reader.map(doc.get(name, type=Map), entries_path, 0)
    if sequence is None:
        return entries
    items_path = pointer(path, "items") if keyed else path
    items: JsonValue
    if sequence is Text:
        items = reader.text(doc.get(name, type=Text).diff(), items_path, 0)
    elif sequence is XmlFragment:
        items = reader.children(doc.get(name, type=XmlFragment), items_path, 0)
    else:
        items = reader.array(doc.get(name, type=Array), items_path, 0)
    if keyed:
        return {"entries": entries, "items": items}
    return items


def _root_blocks(
    doc: Doc[Any],
    name: str,
    keyed: bool,
    sequence: type[Any] | None,
    value: JsonValue,
    log: ProblemLog,
) -> tuple[Node, ...]:
    """A root as rich-text blocks (`value` is its JSON, already read and bounded)."""
    path = pointer("", name)
    blocks: list[Node] = []
    if keyed:
        entries = (
            value.get("entries") if sequence is not None and isinstance(value, dict) else value
        )
        blocks.append(_json_block(entries))
    if sequence is Text:
        blocks.extend(text_paragraphs(doc.get(name, type=Text).diff(), log, path))
    elif sequence is XmlFragment:
        for child in read_richtext(doc.get(name, type=XmlFragment), log, path).content:
            blocks.append(child if isinstance(child, Node) else Node("paragraph", {}, (child,)))
    elif sequence is Array:
        items = value.get("items") if keyed and isinstance(value, dict) else value
        blocks.append(_json_block(items))
    return tuple(blocks)


class _JsonReader:
    """Converts shared types to JSON one level at a time, within MAX_DEPTH and MAX_VALUES."""

    def __init__(self, log: ProblemLog) -> None:
        self.log = log
        self.count = 0
        self.full = False

    def room(self, path: str, wanted: int = 1) -> int:
        """How many of `wanted` values may still be read (reporting the first time none)."""
        left = max(0, MAX_VALUES - self.count)
        taken = min(left, wanted)
        self.count += taken
        if taken < wanted and not self.full:
            self.full = True
            self.log.add(path, f"more than {MAX_VALUES} values; the rest is left out")
        return taken

    def value(self, value: object, path: str, depth: int) -> JsonValue:
        if not self.room(path):
            return None
        if isinstance(value, Doc):
            return {"subdocument": str(value.guid)}
        if isinstance(value, _SHARED) and depth >= MAX_DEPTH:
            self.log.add(path, f"nested deeper than {MAX_DEPTH} levels; left out")
            return None
        if isinstance(value, Map):
            return self.map(value, path, depth)
        if isinstance(value, Array):
            return self.array(value, path, depth)
        if isinstance(value, Text):
            return self.text(value.diff(), path, depth)
        if isinstance(value, XmlText):
            return self.xml_text(value, path, depth)
        if isinstance(value, XmlElement):
            return self.element(value, path, depth)
        if isinstance(value, XmlFragment):
            return self.children(value, path, depth)
        return self.plain(value, path, depth)

    def plain(self, value: object, path: str, depth: int) -> JsonValue:
        plain, cut = to_plain(value, max_depth=max(1, MAX_DEPTH - depth))
        if cut:
            self.log.add(path, "nested too deeply or not representable in JSON; cut")
        return plain

    def map(self, value: Map[Any], path: str, depth: int) -> JsonValue:
        entries = sorted(((str(k), v) for k, v in value.items()), key=lambda e: e[0])
        taken = self.room(path, len(entries))
        return {k: self.value(v, pointer(path, k), depth + 1) for k, v in entries[:taken]}

    def array(self, value: Array[Any], path: str, depth: int) -> JsonValue:
        # Reading an item walks from the start, so only read as many as will be converted.
        with value.doc.transaction():
            taken = self.room(path, len(value))
            items = [value[i] for i in range(taken)]
        return [self.value(v, pointer(path, i), depth + 1) for i, v in enumerate(items)]

    def text(self, chunks: list[tuple[Any, Any]], path: str, depth: int) -> JsonValue:
        if all(isinstance(v, str) and not attrs for v, attrs in chunks):
            return "".join(v for v, _attrs in chunks)
        delta: list[JsonValue] = []
        for index, (insert, attrs) in enumerate(chunks[: self.room(path, len(chunks))]):
            at = pointer(path, index)
            op: dict[str, JsonValue] = {
                "insert": insert if isinstance(insert, str) else self.value(insert, at, depth + 1)
            }
            if attrs:
                op["attributes"] = self.plain(dict(attrs), pointer(at, "attributes"), depth + 1)
            delta.append(op)
        return delta

    def xml_text(self, value: XmlText, path: str, depth: int) -> JsonValue:
        text = self.text(value.diff(), path, depth)
        return {"text": text} if isinstance(text, str) else {"delta": text}

    def element(self, value: XmlElement, path: str, depth: int) -> JsonValue:
        attributes: dict[str, JsonValue] = {}
        pairs: list[tuple[Any, Any]] = list(value.attributes.__iter__())
        for key, item in sorted(pairs, key=lambda e: str(e[0])):
            attributes[str(key)] = self.plain(item, pointer(path, "attributes", key), depth + 1)
        return {
            "element": str(value.tag),
            "attributes": attributes,
            "children": self.children(value, pointer(path, "children"), depth),
        }

    def children(self, value: XmlFragment | XmlElement, path: str, depth: int) -> JsonValue:
        items = list(value.children)
        taken = self.room(path, len(items))
        return [self.value(v, pointer(path, i), depth + 1) for i, v in enumerate(items[:taken])]


# --- JSON as rich text ----------------------------------------------------------------------

_BOLD = (Mark("bold"),)


def _scalar(value: JsonValue) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "{}"  # only empty objects and lists are shown as scalars
    if isinstance(value, list):
        return "[]"
    return json.dumps(value)


def _is_container(value: JsonValue) -> bool:
    return isinstance(value, dict | list) and bool(value)


def _json_block(value: JsonValue) -> Node:
    """A JSON value as a block: objects and lists as nested bullet lists ("key: value", the
    key bold), anything else as a paragraph of its text."""
    if not _is_container(value):
        text = _scalar(value)
        return Node("paragraph", {}, (TextRun(text),) if text else ())
    entries: list[tuple[str | None, JsonValue]]
    if isinstance(value, dict):
        entries = list(value.items())
    else:
        assert isinstance(value, list)
        entries = [(None, item) for item in value]
    items: list[Node] = []
    for key, item in entries:
        runs: list[TextRun] = []
        if key is not None:
            runs.append(TextRun(key, _BOLD))
        if not _is_container(item):
            text = _scalar(item)
            if key is not None:
                text = ": " + text
            if text:
                runs.append(TextRun(text))
        content: list[Node] = [Node("paragraph", {}, tuple(runs))] if runs else []
        if _is_container(item):
            content.append(_json_block(item))
        items.append(Node("listItem", {}, tuple(content)))
    return Node("bulletList", {}, tuple(items))
