"""The versioned JSON Schemas of the three document kinds, and constants derived from them.

The schemas live in shared/schema/*.schema.json (JSON Schema draft 2020-12) so that the server,
the Python client and the browser editor read one definition. They describe the JSON view of each
Yjs document (root name -> content); `x-crdt` annotations say which Yjs type holds each part,
`x-node` / `x-mark` annotations list the rich-text node and mark types, `x-labels` the display
names of enum values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any

from shared.documents import KINDS, SCHEMA_VERSION, Kind

__all__ = [
    "KNOWN_MARKS",
    "KNOWN_NODES",
    "PRIORITIES",
    "PRIORITY_LABELS",
    "ROOT_TYPES",
    "SCHEMA_VERSION",
    "STATUSES",
    "STATUS_LABELS",
    "NodeSpec",
    "load_schema",
    "schema_text",
]


def schema_text(kind: Kind) -> str:
    """The schema of `kind` exactly as stored (for serving it to clients)."""
    if kind not in KINDS:
        raise ValueError(f"unknown document kind {kind!r}")
    return (resources.files("shared") / "schema" / f"{kind}.schema.json").read_text("utf-8")


@cache
def _load(kind: Kind) -> Mapping[str, Any]:
    data = json.loads(schema_text(kind))
    if not isinstance(data, dict):
        raise RuntimeError(f"{kind}.schema.json is not a JSON object")
    version = data.get("x-schema-version")
    if version != SCHEMA_VERSION:
        raise RuntimeError(
            f"{kind}.schema.json has x-schema-version {version!r}, expected {SCHEMA_VERSION}"
        )
    return MappingProxyType(data)


def load_schema(kind: Kind) -> dict[str, Any]:
    """A fresh copy of the parsed schema of `kind`."""
    copy: dict[str, Any] = json.loads(json.dumps(dict(_load(kind))))
    return copy


def _defs(kind: Kind) -> Mapping[str, Any]:
    defs = _load(kind)["$defs"]
    assert isinstance(defs, dict)
    return defs


def _enum(kind: Kind, name: str) -> tuple[str, ...]:
    values = _defs(kind)[name]["enum"]
    assert all(isinstance(v, str) for v in values)
    return tuple(values)


def _labels(kind: Kind, name: str) -> Mapping[str, Mapping[str, str]]:
    labels = _defs(kind)[name].get("x-labels", {})
    return MappingProxyType({k: MappingProxyType(dict(v)) for k, v in labels.items()})


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A rich-text node type: its group and which children (names or groups) it may hold."""

    name: str
    group: str
    content: tuple[str, ...]

    def allows(self, child: str, child_group: str | None) -> bool:
        return child in self.content or (child_group is not None and child_group in self.content)


def _node_specs() -> Mapping[str, NodeSpec]:
    specs: dict[str, NodeSpec] = {}
    for name, definition in _defs("doc").items():
        spec = definition.get("x-node") if isinstance(definition, dict) else None
        if isinstance(spec, dict):
            specs[name] = NodeSpec(name, str(spec["group"]), tuple(spec["content"]))
    return MappingProxyType(specs)


def _marks() -> tuple[str, ...]:
    return tuple(
        name
        for name, definition in _defs("doc").items()
        if isinstance(definition, dict) and "x-mark" in definition
    )


def _root_types() -> Mapping[Kind, Mapping[str, str]]:
    roots: dict[Kind, Mapping[str, str]] = {}
    for kind in KINDS:
        props = _load(kind)["properties"]
        roots[kind] = MappingProxyType({name: str(p["x-crdt"]) for name, p in props.items()})
    return MappingProxyType(roots)


STATUSES: tuple[str, ...] = _enum("board", "status")
"""Task statuses in board order: todo, in_progress, done."""
PRIORITIES: tuple[str, ...] = _enum("board", "priority")
"""Task priorities, lowest first: low, normal, high, urgent."""
STATUS_LABELS: Mapping[str, Mapping[str, str]] = _labels("board", "status")
"""status -> language ("en", "zh") -> display label."""
PRIORITY_LABELS: Mapping[str, Mapping[str, str]] = _labels("board", "priority")
KNOWN_NODES: Mapping[str, NodeSpec] = _node_specs()
"""Rich-text node types (Tiptap names), including "doc" and "text"."""
KNOWN_MARKS: tuple[str, ...] = _marks()
"""Rich-text mark types (Tiptap names)."""
ROOT_TYPES: Mapping[Kind, Mapping[str, str]] = _root_types()
"""kind -> root name -> Yjs type ("Map", "Array", "XmlFragment")."""
