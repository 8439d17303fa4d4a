"""JSON exports: the read model (the schema's JSON view of the document), the files attached to
a board, and its problems."""

from __future__ import annotations

import json
from collections.abc import Sequence

from server.export.common import Attachment
from shared.board import Board
from shared.discussion import Discussion
from shared.documents import SCHEMA_VERSION, AnyKind, JsonValue, Problem
from shared.raw import RawDocument
from shared.richtext import TextDocument


def export(
    model: Board | TextDocument | Discussion | RawDocument,
    kind: AnyKind,
    problems: Sequence[Problem],
    *,
    attachments: Sequence[Attachment] = (),
) -> bytes:
    """`{"kind", "schema", <the kind's roots>..., "attachments", "problems"}`, keys in a fixed
    order, UTF-8 without \\u escapes, two-space indented, newline-terminated.

    `attachments` is there only when there are some: one object per file version with its
    `url`, a link relative to the Tandem server (`/api/files/{file_id}/content`)."""
    data: dict[str, JsonValue] = {"kind": kind, "schema": SCHEMA_VERSION}
    data.update(model.to_json())
    if attachments:
        data["attachments"] = [_attachment(a) for a in attachments]
    data["problems"] = [{"path": p.path, "message": p.message} for p in problems]
    text = json.dumps(data, ensure_ascii=False, indent=2, allow_nan=False)
    return (text + "\n").encode("utf-8", "replace")


def _attachment(attachment: Attachment) -> dict[str, JsonValue]:
    return {
        "file_id": attachment.file_id,
        "name": attachment.name,
        "version": attachment.version,
        "size": attachment.size,
        "content_type": attachment.content_type,
        "task_id": attachment.task_id,
        "uploaded_by": attachment.uploaded_by,
        "uploaded_at": attachment.uploaded_at,
        "url": attachment.link,
    }
