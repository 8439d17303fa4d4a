"""Read-only exports of a document: Markdown, standalone HTML and JSON.

    body, content_type = export_document(doc, "board", "md")

Exports read the document through the typed readers in shared/ (board, richtext, discussion):
content that does not fit the kind's schema is skipped and listed in a "Problems" section (a
`problems` array in JSON), never rendered as structure, and never makes an export fail.
Reading runs on a thread with a deep C stack (see shared.documents.call_with_deep_stack) while
the caller waits; call it from the thread that owns `doc`, or on a private copy of it.
"""

from __future__ import annotations

from typing import Any, Literal

from pycrdt import Doc

from server.export import html, jsonexport, markdown
from server.export.common import link_problems
from shared.board import Board, read_board
from shared.discussion import Discussion, read_discussion
from shared.documents import KINDS, Kind, Problem, call_with_deep_stack
from shared.richtext import TextDocument, read_doc

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

Model = Board | TextDocument | Discussion


def _check(kind: str, fmt: str | None = None) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown document kind {kind!r} (expected one of {', '.join(KINDS)})")
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (expected one of {', '.join(FORMATS)})")


def _read(doc: Doc[Any], kind: Kind) -> tuple[Model, list[Problem]]:
    if kind == "board":
        return read_board(doc)
    if kind == "doc":
        text_doc, found = read_doc(doc)
        return text_doc, found + link_problems(text_doc.content)
    return read_discussion(doc)


def read_model(doc: Doc[Any], kind: Kind) -> tuple[Model, list[Problem]]:
    """The typed read model of `doc` as `kind`, and what did not fit (never raises on
    content; ValueError for an unknown kind)."""
    _check(kind)
    return call_with_deep_stack(lambda: _read(doc, kind))


def problems(doc: Doc[Any], kind: Kind) -> list[Problem]:
    """What in `doc` does not fit `kind`'s schema (what an export would skip or replace)."""
    return read_model(doc, kind)[1]


def render(model: Model, kind: Kind, fmt: Format, found: list[Problem]) -> bytes:
    """Render an already-read model."""
    _check(kind, fmt)
    if fmt == "json":
        return jsonexport.export(model, kind, found)
    if isinstance(model, Board):
        return markdown.board(model, found) if fmt == "md" else html.board(model, found)
    if isinstance(model, TextDocument):
        return markdown.document(model, found) if fmt == "md" else html.document(model, found)
    return markdown.discussion(model, found) if fmt == "md" else html.discussion(model, found)


def export_document(doc: Doc[Any], kind: Kind, fmt: Format | str) -> tuple[bytes, str]:
    """Export `doc`, read as `kind`, in `fmt` ("md", "html" or "json"; "markdown" is accepted).

    Returns (body, content type). Raises ValueError only for an unknown kind or format.
    """
    name = "md" if fmt == "markdown" else fmt
    _check(kind, name)
    chosen: Format = "md" if name == "md" else "html" if name == "html" else "json"
    model, found = read_model(doc, kind)
    return render(model, kind, chosen, found), CONTENT_TYPES[chosen]
