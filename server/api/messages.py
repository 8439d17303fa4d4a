"""POST /api/docs/{id}/messages: posting a message to a discussion, as the caller.

The message is one edit in the discussion's live room (server/api/live.py); a message
outside a discussion is 409.
"""

from __future__ import annotations

from typing import Annotated, Any

from pycrdt import Doc
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.api import live
from server.api.caller import writer
from server.api.describe import WRITE_ERRORS, json_body, operation
from server.api.errors import ApiError, parse_body
from server.api.fields import Reference, UserName
from shared import discussion

MAX_MENTIONS = 100

# -- request models ----------------------------------------------------------------------------


def _no_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("may not be blank")
    return value


MessageBody = Annotated[
    str, StringConstraints(min_length=1, max_length=20_000), AfterValidator(_no_blank)
]


class AnchorIn(BaseModel):
    """Where in the subject document a comment points: Yjs relative positions (their JSON
    form, or the binary encoding as base64 text) and the text they covered."""

    model_config = ConfigDict(extra="forbid")

    start: dict[str, Any] | str
    end: dict[str, Any] | str
    quote: Annotated[str, StringConstraints(max_length=2000)] | None = None


class MessageCreate(BaseModel):
    """A message by the caller; `reply_to` must be a message of this discussion."""

    model_config = ConfigDict(extra="forbid")

    body: MessageBody
    reply_to: Reference | None = None
    mentions: list[UserName] = Field(default_factory=list, max_length=MAX_MENTIONS)
    anchor: AnchorIn | None = None


# -- response models ---------------------------------------------------------------------------


class Message(BaseModel):
    id: str
    author: str
    body: str
    created_at: str | None
    reply_to: str | None
    mentions: list[str]
    anchor: dict[str, Any] | None
    edited_at: str | None
    deleted: bool


# -- discussions -------------------------------------------------------------------------------


async def post_message(request: Request) -> Response:
    """Post a message to a discussion, as the caller."""
    doc_id: str = request.path_params["doc_id"]
    user = (await writer(request, doc_id)).user
    body = await parse_body(request, MessageCreate)
    row = await live.document(request, doc_id)
    anchor = None if body.anchor is None else body.anchor.model_dump()

    def post(doc: Doc[Any]) -> str:
        return discussion.post_message(
            doc,
            user,
            body.body,
            reply_to=body.reply_to,
            mentions=body.mentions,
            anchor=anchor,
        )

    async with live.open_room(request, doc_id) as room:
        live.require_kind(row, room, "discussion")
        # Checked and posted with no await in between: nothing can change meanwhile.
        if body.reply_to is not None:
            current, _ = discussion.read_discussion(room.doc)
            if current.message(body.reply_to) is None:
                raise ApiError(
                    422,
                    f"reply_to: {body.reply_to} is not a message of this discussion",
                    field="reply_to",
                )
        message_id = live.edit(request, room, user, post)
        posted = discussion.read_discussion(room.doc)[0].message(message_id)
    if posted is None:
        raise ApiError(409, f"message {message_id} cannot be read back")
    await live.saved(request, doc_id, user)
    return JSONResponse(Message.model_validate(posted.to_json()).model_dump(mode="json"), 201)


routes = [
    Route("/docs/{doc_id}/messages", post_message, methods=["POST"]),
]

OPENAPI_INPUTS: list[type[BaseModel]] = [MessageCreate]
OPENAPI_OUTPUTS: list[type[BaseModel]] = [Message]


def openapi_paths() -> dict[str, dict[str, Any]]:
    """A message outside a discussion is 409."""
    return {
        "/api/docs/{doc_id}/messages": {
            "post": operation(
                "Post a message to a discussion as the caller",
                ok=(201, "the message", json_body(Message)),
                body=json_body(MessageCreate),
                errors=WRITE_ERRORS,
                tag="content",
            ),
        },
    }
