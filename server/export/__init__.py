"""Read-only exports of a document: Markdown, standalone HTML and JSON.

    body, content_type = export_document(doc, "board", "md")

Exports read the document through the typed readers in shared/ (board, richtext, discussion):
content that does not fit the kind's schema is skipped and listed in a "Problems" section (a
`problems` array in JSON), never rendered as structure, and never makes an export fail.
A `raw` document (any other Yjs document, shared/raw.py) is exported as every root: in JSON as
`roots` (root name -> generic JSON), in Markdown and HTML as a section per root.
Reading runs on a thread with a deep C stack (see shared.documents.call_with_deep_stack) while
the caller waits; call it from the thread that owns `doc`, or on a private copy of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pycrdt import Doc

from server.export import html, jsonexport, markdown
from server.export.common import Attachment, link_problems
from shared.board import Board, read_board
from shared.discussion import Discussion, read_discussion
from shared.documents import ANY_KINDS, AnyKind, Problem, call_with_deep_stack
from shared.raw import RawDocument, read_raw
from shared.richtext import TextDocument, read_doc
from shared.roots import private_copy

__all__ = [
    "CONTENT_TYPES",
    "FORMATS",
    "Format",
    "export_document",
    "problems",
    "read_model",
    "render",
]

Format = Literal["md", "html", "json"]
FORMATS: tuple[Format, ...] = ("md", "html", "json")
CONTENT_TYPES: dict[Format, str] = {
    "md": "text/markdown; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "json": "application/json",
}
EXTENSIONS: dict[Format, str] = {"md": ".md", "html": ".html", "json": ".json"}

Model = Board | TextDocument | Discussion | RawDocument


def _check(kind: str, fmt: str | None = None) -> None:
    if kind not in ANY_KINDS:
        raise ValueError(f"unknown document kind {kind!r} (expected one of {', '.join(ANY_KINDS)})")
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (expected one of {', '.join(FORMATS)})")


def _read(doc: Doc[Any], kind: AnyKind) -> tuple[Model, list[Problem]]:
    if kind == "board":
        return read_board(doc)
    if kind == "doc":
        text_doc, found = read_doc(doc)
        return text_doc, found + link_problems(text_doc.content)
    if kind == "raw":
        # Reading a raw document re-types its roots: read a copy, `doc` may be a live room's.
        raw, found = read_raw(private_copy(doc))
        return raw, found + link_problems(raw.content)
    return read_discussion(doc)


def read_model(doc: Doc[Any], kind: AnyKind) -> tuple[Model, list[Problem]]:
    """The typed read model of `doc` as `kind`, and what did not fit (never raises on
    content; ValueError for an unknown kind)."""
    _check(kind)
    return call_with_deep_stack(lambda: _read(doc, kind))


def problems(doc: Doc[Any], kind: AnyKind) -> list[Problem]:
    """What in `doc` does not fit `kind`'s schema (what an export would skip or replace)."""
    return read_model(doc, kind)[1]


def render(
    model: Model,
    kind: AnyKind,
    fmt: Format,
    found: list[Problem],
    *,
    attachments: Sequence[Attachment] = (),
) -> bytes:
    """Render an already-read model. `attachments` (the files attached to the document, read
    from the database by the caller) are listed in board exports and ignored for other kinds."""
    _check(kind, fmt)
    files = attachments if isinstance(model, Board) else ()
    if fmt == "json":
        return jsonexport.export(model, kind, found, attachments=files)
    if isinstance(model, Board):
        if fmt == "md":
            return markdown.board(model, found, attachments=files)
        return html.board(model, found, attachments=files)
    if isinstance(model, RawDocument):
        # Every root rendered as rich text (see shared/raw.py), shown as a doc is.
        model = TextDocument(model.meta, model.content)
    if isinstance(model, TextDocument):
        return markdown.document(model, found) if fmt == "md" else html.document(model, found)
    return markdown.discussion(model, found) if fmt == "md" else html.discussion(model, found)


def export_document(
    doc: Doc[Any],
    kind: AnyKind,
    fmt: Format | str,
    *,
    attachments: Sequence[Attachment] = (),
) -> tuple[bytes, str]:
    """Export `doc`, read as `kind`, in `fmt` ("md", "html" or "json"; "markdown" is accepted).

    A board export lists `attachments` (name, version, size and a download link relative to
    the Tandem server, `/api/files/{id}/content`); other kinds ignore them.
    Returns (body, content type). Raises ValueError only for an unknown kind or format.
    """
    name = "md" if fmt == "markdown" else fmt
    _check(kind, name)
    chosen: Format = "md" if name == "md" else "html" if name == "html" else "json"
    model, found = read_model(doc, kind)
    body = render(model, kind, chosen, found, attachments=attachments)
    return body, CONTENT_TYPES[chosen]
