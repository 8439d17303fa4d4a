"""PUT /api/docs/{id}/text: replacing a `doc`'s rich text with Markdown or plain text.

The new text is one edit in the document's live room (server/api/live.py); text on
something other than a `doc` is 409.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.api import live
from server.api.caller import writer
from server.api.describe import WRITE_ERRORS, json_body, operation
from server.api.errors import ApiError, parse
from shared import richtext

MAX_TEXT_BYTES = 4 * 1024 * 1024

# -- request models ----------------------------------------------------------------------------


class TextBody(BaseModel):
    """The new text of a `doc`: Markdown (headings, lists, task lists, tables, quotes, code,
    bold, italic, strike, links) or plain text (blank lines separate paragraphs)."""

    model_config = ConfigDict(extra="forbid")

    text: Annotated[str, StringConstraints(max_length=MAX_TEXT_BYTES)]
    format: Literal["markdown", "plain"] = "markdown"


# -- rich text ---------------------------------------------------------------------------------


def _plain_blocks(text: str) -> list[richtext.Node]:
    """Plain text as paragraphs (split at blank lines), single newlines as hard breaks."""
    normal = text.replace("\r\n", "\n").replace("\r", "\n")
    blocks: list[richtext.Node] = []
    for chunk in normal.split("\n\n"):
        if not chunk.strip("\n"):
            continue
        content: list[richtext.Node | richtext.TextRun] = []
        for index, line in enumerate(chunk.strip("\n").split("\n")):
            if index:
                content.append(richtext.Node("hardBreak"))
            if line:
                content.append(richtext.TextRun(line))
        blocks.append(richtext.Node("paragraph", {}, tuple(content)))
    return blocks


async def put_text(request: Request) -> Response:
    """Replace a `doc`'s rich text with Markdown or plain text (the raw body as text/markdown
    or text/plain, or JSON {"text", "format"})."""
    doc_id: str = request.path_params["doc_id"]
    user = (await writer(request, doc_id)).user
    media = live.media_type(request)
    raw = await live.read_body(request, MAX_TEXT_BYTES)
    if media in ("text/markdown", "text/plain", "text/x-markdown"):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(422, "body: not UTF-8 text", field="body") from None
        fmt = "plain" if media == "text/plain" else "markdown"
    else:
        body = parse(TextBody, live.json_body(raw))
        text, fmt = body.text, body.format
    blocks = richtext.parse_markdown(text) if fmt == "markdown" else _plain_blocks(text)
    row = await live.document(request, doc_id)
    async with live.open_room(request, doc_id) as room:
        live.require_kind(row, room, "doc")
        live.edit(request, room, user, lambda doc: richtext.set_content(doc, blocks))
        content = live.content_json(doc_id, "doc", room.doc)
    await live.saved(request, doc_id, user)
    return JSONResponse(content)


routes = [
    Route("/docs/{doc_id}/text", put_text, methods=["PUT"]),
]

OPENAPI_INPUTS: list[type[BaseModel]] = [TextBody]
OPENAPI_OUTPUTS: list[type[BaseModel]] = []  # the answer is live.Content, listed there


def openapi_paths() -> dict[str, dict[str, Any]]:
    """Text outside a `doc` is 409."""
    return {
        "/api/docs/{doc_id}/text": {
            "put": operation(
                "Replace a doc's rich text with Markdown or plain text",
                ok=(200, "the new content", json_body(live.Content)),
                body={
                    "text/markdown": {"schema": {"type": "string"}},
                    "text/plain": {"schema": {"type": "string"}},
                    **json_body(TextBody),
                },
                errors=WRITE_ERRORS,
                tag="content",
            ),
        },
    }
