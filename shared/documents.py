"""The three document kinds (board, doc, discussion) and the shape a new one starts with.

The definitive, versioned shapes are the JSON Schemas in shared/schema/.
"""

from __future__ import annotations

from typing import Any, Literal

from pycrdt import Array, Doc, Map, XmlFragment

Kind = Literal["board", "doc", "discussion"]
KINDS: tuple[Kind, ...] = ("board", "doc", "discussion")
SCHEMA_VERSION = 1


def initialize(
    doc: Doc[Any],
    kind: Kind,
    *,
    title: str,
    department: str | None = None,
    project: str | None = None,
) -> None:
    """Write the initial shape of `kind` into an empty `doc` (call inside a transaction)."""
    if kind not in KINDS:
        raise ValueError(f"unknown document kind {kind!r}")
    meta = doc.get("meta", type=Map)
    meta["title"] = title
    meta["kind"] = kind
    meta["schema"] = SCHEMA_VERSION
    if department is not None:
        meta["department"] = department
    if kind == "board":
        if project is not None:
            meta["project"] = project
        doc.get("tasks", type=Map)
    elif kind == "doc":
        doc.get("default", type=XmlFragment)
    else:
        meta["subject_doc"] = None
        meta["subject_task"] = None
        doc.get("messages", type=Array)
