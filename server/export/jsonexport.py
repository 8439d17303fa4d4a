"""JSON exports: the read model (the schema's JSON view of the document) and its problems."""

from __future__ import annotations

import json
from collections.abc import Sequence

from shared.board import Board
from shared.discussion import Discussion
from shared.documents import SCHEMA_VERSION, JsonValue, Kind, Problem
from shared.richtext import TextDocument


def export(
    model: Board | TextDocument | Discussion, kind: Kind, problems: Sequence[Problem]
) -> bytes:
    """`{"kind", "schema", <the kind's roots>..., "problems"}`, keys in a fixed order, UTF-8
    without \\u escapes, two-space indented, newline-terminated."""
    data: dict[str, JsonValue] = {"kind": kind, "schema": SCHEMA_VERSION}
    data.update(model.to_json())
    data["problems"] = [{"path": p.path, "message": p.message} for p in problems]
    text = json.dumps(data, ensure_ascii=False, indent=2, allow_nan=False)
    return (text + "\n").encode("utf-8", "replace")
