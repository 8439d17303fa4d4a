"""Make one document's content equal to another's, as an ordinary change to the first.

    mirror_document(live_doc, old_doc)   # inside a transaction of live_doc

Used to restore a version: the live document is edited until every root reads exactly as in the
old one, so the change travels to every connected client like any edit and history is never
rewritten. It works on any document, whatever its kind:

- root names and types come from the documents themselves: a root whose items have keys is a
  Map; a sequence root holding strings or formatting is a Text, one holding XML nodes an
  XmlFragment, anything else an Array (Yjs updates do not record a root's type, so this is read
  from the content; one root can even hold both keyed entries and a sequence, and both parts are
  made equal);
- roots that only the live document has are emptied;
- Maps: keys deleted and set, nested shared types of the same type made equal in place (so
  untouched parts keep their identity and concurrent edits to them still merge), others
  replaced by fresh copies;
- Arrays and XML children: the common prefix and suffix stay, the differing middle is made equal
  item by item when both sides line up (same length, same types, same tags), else replaced by
  fresh copies;
- Text and XmlText: left alone when equal; plain text gets a minimal edit (common prefix and
  suffix kept); formatted text or text with embeds is replaced with a copy of every chunk and
  its formatting attributes; XmlText and XmlElement attributes are made equal.

Nothing from the old document is shared with the live one: every shared type is created empty in
the live document, integrated, then filled (pycrdt cannot fill a type that is not integrated
yet). Run it on a deep C stack (shared.documents.call_with_deep_stack): pycrdt converts plain
nested values recursively. Shared types nested deeper than `MAX_NESTING` are refused before
anything changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from shared.documents import sequence_items
from shared.roots import root_shapes

__all__ = ["MAX_NESTING", "TooDeep", "mirror_document", "same_content"]

MAX_NESTING = 200
"""Shared types nested deeper than this are not restored (no real document comes near it)."""

_SHARED: tuple[type[Any], ...] = (Map, Array, Text, XmlText, XmlElement, XmlFragment)
_MISSING = object()


class TooDeep(ValueError):
    """The source document nests shared types deeper than MAX_NESTING; nothing was changed."""


def mirror_document(target: Doc[Any], source: Doc[Any]) -> None:
    """Change `target` so that every root reads as in `source`; roots only `target` has are
    emptied. Call inside a transaction of `target` (one update for the whole change).

    Raises TooDeep, before changing anything, for a source nested deeper than MAX_NESTING.
    """
    _check_depth(source)
    wanted = root_shapes(source)
    # A private copy: reading the live document's roots through other views would re-type them.
    copy: Doc[Any] = Doc()
    copy.apply_update(target.get_update())
    present = root_shapes(copy)
    for name in sorted(set(wanted) | set(present)):
        keyed, sequence = wanted.get(name, (False, None))
        had_keys, had_sequence = present.get(name, (False, None))
        if had_sequence is not None and had_sequence is not sequence:
            _clear_sequence(target, name, had_sequence)
        if sequence is not None:
            _mirror_sequence_root(target, source, name, sequence)
        if keyed or had_keys:
            _mirror_map(target.get(name, type=Map), source.get(name, type=Map))
        # Leave the root typed as its main content, as a client would read it.
        final = sequence if sequence is not None and not keyed else Map
        target.get(name, type=final)


def _clear_sequence(doc: Doc[Any], name: str, kind: type[Any]) -> None:
    if kind is Text:
        text = doc.get(name, type=Text)
        if len(text):
            del text[:]
    elif kind is XmlFragment:
        fragment = doc.get(name, type=XmlFragment)
        if len(fragment.children):
            del fragment.children[:]
    else:
        array = doc.get(name, type=Array)
        if len(array):
            del array[:]


def _mirror_sequence_root(target: Doc[Any], source: Doc[Any], name: str, kind: type[Any]) -> None:
    if kind is Text:
        _mirror_text(target.get(name, type=Text), source.get(name, type=Text))
    elif kind is XmlFragment:
        _mirror_children(target.get(name, type=XmlFragment), source.get(name, type=XmlFragment))
    else:
        _mirror_array(target.get(name, type=Array), source.get(name, type=Array))


# --- depth ----------------------------------------------------------------------------------


def _children_of(value: object) -> list[Any]:
    if isinstance(value, Map):
        return [v for _, v in value.items()]
    if isinstance(value, Array):
        return sequence_items(value)
    if isinstance(value, XmlElement):
        return [*_xml_children(value), *[v for _, v in _attributes(value)]]
    if isinstance(value, XmlFragment):
        return _xml_children(value)
    if isinstance(value, Text | XmlText):
        embedded = [v for v, _ in value.diff() if not isinstance(v, str)]
        return embedded + ([v for _, v in _attributes(value)] if isinstance(value, XmlText) else [])
    return []


def _check_depth(doc: Doc[Any]) -> None:
    stack: list[tuple[Any, int]] = []
    for name, (keyed, sequence) in root_shapes(doc).items():
        if keyed:
            stack.append((doc.get(name, type=Map), 1))
        if sequence is not None:
            stack.append((doc.get(name, type=sequence), 1))
    while stack:
        value, depth = stack.pop()
        if depth > MAX_NESTING:
            raise TooDeep(f"shared types are nested more than {MAX_NESTING} levels deep")
        for child in _children_of(value):
            if isinstance(child, _SHARED):
                stack.append((child, depth + 1))


# --- comparing ------------------------------------------------------------------------------


def _plain_equal(a: object, b: object) -> bool:
    """Equality of plain values that tells booleans from numbers and NaN from nothing."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_plain_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_plain_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def same_content(a: object, b: object) -> bool:
    """Whether two values read from documents have the same content (shared types compared
    structurally, text with its formatting, XML with tags and attributes)."""
    try:
        return _same(a, b)
    except RecursionError:
        return False


def _same(a: object, b: object) -> bool:
    if isinstance(a, _SHARED) or isinstance(b, _SHARED):
        if type(a) is not type(b):
            return False
        if isinstance(a, Map):
            assert isinstance(b, Map)
            left, right = dict(a.items()), dict(b.items())
            return left.keys() == right.keys() and all(_same(left[k], right[k]) for k in left)
        if isinstance(a, Array):
            assert isinstance(b, Array)
            return _same_list(sequence_items(a), sequence_items(b))
        if isinstance(a, Text | XmlText):
            assert isinstance(b, Text | XmlText)
            if isinstance(a, XmlText) and isinstance(b, XmlText) and not _same_attributes(a, b):
                return False
            return _same_chunks(a.diff(), b.diff())
        if isinstance(a, XmlElement):
            assert isinstance(b, XmlElement)
            if a.tag != b.tag or not _same_attributes(a, b):
                return False
        assert isinstance(a, XmlElement | XmlFragment) and isinstance(b, XmlElement | XmlFragment)
        return _same_list(_xml_children(a), _xml_children(b))
    return _plain_equal(a, b)


def _same_list(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))


def _same_chunks(a: list[tuple[Any, Any]], b: list[tuple[Any, Any]]) -> bool:
    if len(a) != len(b):
        return False
    for (value_a, attrs_a), (value_b, attrs_b) in zip(a, b, strict=True):
        if not _plain_equal(attrs_a or {}, attrs_b or {}) or not _same(value_a, value_b):
            return False
    return True


def _attributes(node: XmlElement | XmlText) -> list[tuple[str, Any]]:
    return sorted(
        ((str(k), v) for k, v in list(node.attributes.__iter__()) if v is not None),
        key=lambda entry: entry[0],
    )


def _same_attributes(a: XmlElement | XmlText, b: XmlElement | XmlText) -> bool:
    left, right = dict(_attributes(a)), dict(_attributes(b))
    return left.keys() == right.keys() and all(_same(left[k], right[k]) for k in left)


def _xml_children(node: XmlElement | XmlFragment) -> list[Any]:
    with node.doc.transaction():
        return list(node.children)


# --- writing --------------------------------------------------------------------------------


def _shell(value: object) -> Any:
    """An empty shared type of the same type as `value` (to integrate, then fill)."""
    if isinstance(value, Map):
        return Map()
    if isinstance(value, Array):
        return Array()
    if isinstance(value, Text):
        return Text()
    if isinstance(value, XmlText):
        return XmlText()
    if isinstance(value, XmlElement):
        return XmlElement(value.tag or "undefined")
    return XmlFragment()


def _fill(shell: Any, value: object) -> None:
    """Make a just-integrated empty shell equal to `value`."""
    _mirror_value_in_place(shell, value)


def _mergeable(target: object, source: object) -> bool:
    """Whether `target` can be made equal to `source` in place."""
    if type(target) is not type(source) or not isinstance(source, _SHARED):
        return False
    if isinstance(source, XmlElement):
        assert isinstance(target, XmlElement)
        return target.tag == source.tag
    return True


def _mirror_value_in_place(target: Any, source: Any) -> None:
    if isinstance(source, Map):
        _mirror_map(target, source)
    elif isinstance(source, Array):
        _mirror_array(target, source)
    elif isinstance(source, Text):
        _mirror_text(target, source)
    elif isinstance(source, XmlText):
        _mirror_attributes(target, source)
        _mirror_text(target, source)
    elif isinstance(source, XmlElement):
        _mirror_attributes(target, source)
        _mirror_children(target, source)
    elif isinstance(source, XmlFragment):
        _mirror_children(target, source)


def _mirror_map(target: Map[Any], source: Map[Any]) -> None:
    wanted = dict(source.items())
    present = dict(target.items())
    for key in sorted(present.keys() - wanted.keys()):
        del target[key]
    for key in sorted(wanted):
        value = wanted[key]
        current = present.get(key, _MISSING)
        if current is not _MISSING and _mergeable(current, value):
            _mirror_value_in_place(current, value)
        elif current is not _MISSING and same_content(current, value):
            continue
        elif isinstance(value, _SHARED):
            shell = _shell(value)
            target[key] = shell
            _fill(shell, value)
        elif isinstance(value, Doc):
            continue  # subdocuments are documents of their own: not copied
        else:
            target[key] = value


def _mirror_attributes(target: XmlElement | XmlText, source: XmlElement | XmlText) -> None:
    wanted = dict(_attributes(source))
    present = dict(_attributes(target))
    for key in sorted(present.keys() - wanted.keys()):
        del target.attributes[key]
    for key in sorted(wanted):
        value = wanted[key]
        current = present.get(key, _MISSING)
        if current is not _MISSING and same_content(current, value):
            continue
        if isinstance(value, _SHARED):
            shell = _shell(value)
            target.attributes[key] = shell
            _fill(shell, value)
        else:
            target.attributes[key] = value


def _mirror_items(
    present: list[Any],
    wanted: list[Any],
    delete: Callable[[int, int], None],
    insert: Callable[[int, Any], None],
) -> None:
    """Make a sequence equal: keep the common prefix and suffix, then edit the middle in place
    when both sides line up, else replace it."""
    start = 0
    limit = min(len(present), len(wanted))
    while start < limit and same_content(present[start], wanted[start]):
        start += 1
    end = 0
    while end < limit - start and same_content(present[-1 - end], wanted[-1 - end]):
        end += 1
    old_middle = present[start : len(present) - end]
    new_middle = wanted[start : len(wanted) - end]
    if len(old_middle) == len(new_middle) and all(
        _mergeable(t, s) for t, s in zip(old_middle, new_middle, strict=True)
    ):
        for t, s in zip(old_middle, new_middle, strict=True):
            _mirror_value_in_place(t, s)
        return
    if old_middle:
        delete(start, len(old_middle))
    for offset, value in enumerate(new_middle):
        insert(start + offset, value)


def _mirror_array(target: Array[Any], source: Array[Any]) -> None:
    def delete(start: int, count: int) -> None:
        del target[start : start + count]

    def insert(index: int, value: Any) -> None:
        if isinstance(value, _SHARED):
            shell = _shell(value)
            target.insert(index, shell)
            _fill(shell, value)
        elif not isinstance(value, Doc):
            target.insert(index, value)

    _mirror_items(sequence_items(target), sequence_items(source), delete, insert)


def _mirror_children(target: XmlElement | XmlFragment, source: XmlElement | XmlFragment) -> None:
    def delete(start: int, count: int) -> None:
        del target.children[start : start + count]

    def insert(index: int, value: Any) -> None:
        if isinstance(value, XmlElement | XmlText):
            shell = target.children.insert(index, _shell(value))
            _fill(shell, value)

    wanted = [c for c in _xml_children(source) if isinstance(c, XmlElement | XmlText)]
    _mirror_items(_xml_children(target), wanted, delete, insert)


def _plain_chunks(chunks: list[tuple[Any, Any]]) -> str | None:
    """The text of chunks without formatting or embeds, else None."""
    if all(isinstance(value, str) and not attrs for value, attrs in chunks):
        return "".join(value for value, _ in chunks)
    return None


def _mirror_text(target: Text | XmlText, source: Text | XmlText) -> None:
    wanted = source.diff()
    present = target.diff()
    try:
        if _same_chunks(present, wanted):
            return
    except RecursionError:
        pass  # attributes nested too deeply to compare: rewrite the text
    old_text, new_text = _plain_chunks(present), _plain_chunks(wanted)
    if old_text is not None and new_text is not None:
        # Plain on both sides: replace only what differs. Positions are UTF-8 bytes.
        start = 0
        limit = min(len(old_text), len(new_text))
        while start < limit and old_text[start] == new_text[start]:
            start += 1
        end = 0
        while end < limit - start and old_text[-1 - end] == new_text[-1 - end]:
            end += 1
        at = len(old_text[:start].encode())
        removed = len(old_text[start : len(old_text) - end].encode())
        if removed:
            del target[at : at + removed]
        inserted = new_text[start : len(new_text) - end]
        if inserted:
            target.insert(at, inserted)
        return
    if len(target):
        del target[:]
    for value, attrs in wanted:
        # An explicit (possibly empty) attribute map: text inserted after formatted text
        # would otherwise inherit its formatting.
        formatting = dict(attrs or {})
        if isinstance(value, str):
            if value:
                target.insert(len(target), value, formatting)
        elif isinstance(value, _SHARED):
            shell = _shell(value)
            target.insert_embed(len(target), shell, formatting)
            _fill(shell, value)
        elif not isinstance(value, Doc):
            target.insert_embed(len(target), value, formatting)
