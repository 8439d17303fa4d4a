"""What a document's roots are, read from their content, and which kind that makes it.

Yjs updates do not record a root's type: a client that calls `getText("t")` and one that
calls `getMap("t")` write the same root name, and only the items under it differ (entries of a
Map have keys; a Text holds strings and formatting; an XmlFragment holds XML nodes; an Array
anything else). pycrdt hands out a root only as the type it is asked for, so these functions
look at each root through several views. Each view re-types the root in that document: call
them on a private copy (`private_copy`), never on a live room's document.

    kind = recognise(private_copy(doc))   # "board", "doc", "discussion" or "raw"
"""

from __future__ import annotations

from typing import Any

from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from shared.documents import AnyKind, detect_kind, sequence_items

__all__ = ["CANDIDATE_ROOTS", "private_copy", "recognise", "recognise_by_content", "root_shapes"]

_SHARED: tuple[type[Any], ...] = (Map, Array, Text, XmlText, XmlElement, XmlFragment)

CANDIDATE_ROOTS = frozenset({"tasks", "messages", "default", "text"})
"""Root names that can make a document without `meta.kind` a board, discussion or doc."""


def private_copy(doc: Doc[Any]) -> Doc[Any]:
    """A new document with `doc`'s state (run on a deep stack: see call_with_deep_stack)."""
    copy: Doc[Any] = Doc()
    copy.apply_update(doc.get_update())
    return copy


def root_shapes(doc: Doc[Any]) -> dict[str, tuple[bool, type[Any] | None]]:
    """For each root with content: (has keyed entries, sequence type or None).

    The sequence type is Text, XmlFragment or Array. Reading a root through several views
    re-types it, so call this on a private copy of a live document.
    """
    shapes: dict[str, tuple[bool, type[Any] | None]] = {}
    for name in sorted(doc.keys()):
        shape = root_shape(doc, name)
        if shape is not None:
            shapes[name] = shape
    return shapes


def root_shape(doc: Doc[Any], name: str) -> tuple[bool, type[Any] | None] | None:
    """(has keyed entries, sequence type or None) of one root, None when it holds nothing."""
    keyed = len(doc.get(name, type=Map)) > 0
    sequence = _sequence_type(doc, name)
    if keyed or sequence is not None:
        return keyed, sequence
    return None


def _sequence_type(doc: Doc[Any], name: str) -> type[Any] | None:
    # A Text view lists strings (only a Text or XmlText holds them), formatting, embeds and
    # shared types, but no plain Array items; an Array view lists every item.
    chunks = doc.get(name, type=Text).diff()
    for value, attrs in chunks:
        if attrs or isinstance(value, str) or not isinstance(value, _SHARED):
            return Text
    items = sequence_items(doc.get(name, type=Array))
    if not items:
        return None
    if all(isinstance(item, XmlElement | XmlText) for item in items):
        return XmlFragment
    return Array


def recognise(doc: Doc[Any]) -> AnyKind:
    """The kind `meta.kind` names, else the one the content has (see recognise_by_content).

    `doc` must be private: looking at its roots re-types them.
    """
    return detect_kind(doc) or recognise_by_content(doc)


def recognise_by_content(doc: Doc[Any]) -> AnyKind:
    """The kind a document's roots make it, whatever `meta` says: a `tasks` Map makes a
    board, a `messages` Array a discussion, a `default` XmlFragment or a `text` Text a doc;
    anything else is `raw` (readable generically). `doc` must be private.
    """
    names = set(doc.keys()) & CANDIDATE_ROOTS
    if not names:
        return "raw"  # no view needed: no root has a name that could make it another kind
    shapes = {name: root_shape(doc, name) for name in names}

    def shape(name: str) -> tuple[bool, type[Any] | None]:
        return shapes.get(name) or (False, None)

    if shape("tasks")[0]:
        return "board"
    if shape("messages")[1] is Array:
        return "discussion"
    if shape("default")[1] is XmlFragment or shape("text")[1] is Text:
        return "doc"
    return "raw"
