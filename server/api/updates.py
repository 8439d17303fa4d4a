"""POST /api/docs/{id}/updates: applying a raw Yjs update to a document of any kind.

The update is first applied to a private copy (`check_update`), off the loop; only one that
applies cleanly reaches the live room (server/api/live.py), where it is stored like a
client's edit.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
from typing import Any

from pycrdt import Doc, get_update
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.api import live, state, storage
from server.api.caller import writer
from server.api.describe import WRITE_ERRORS, json_body, operation
from server.api.errors import ApiError, parse
from server.origin import Origin
from server.rooms.room import RejectedFrame
from shared.documents import call_with_deep_stack, is_panic
from shared.protocol import read_varuint

# -- request and response models ---------------------------------------------------------------


class UpdateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    update: str = Field(description="a Yjs update (v1 encoding), base64")


class UpdateResult(BaseModel):
    changed: bool = Field(description="false when the document had everything already")
    state_vector: str = Field(description="the document's state vector afterwards, base64")


# -- raw updates -------------------------------------------------------------------------------


_NOT_CRDT_ERRORS = (KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def check_update(current: bytes, update: bytes) -> str | None:
    """Why `update` cannot be applied to a document whose state is `current` (None: it can).

    It is applied to a private copy: pycrdt cannot roll back a failed update, and an update
    that waits for changes the document lacks would sit in memory without being stored.
    """
    scratch: Doc[Any] = Doc()
    try:
        if current:
            scratch.apply_update(current)
        scratch.apply_update(update)
        # What the copy still lacks of the update: structs it could not integrate.
        missing = get_update(update, scratch.get_state())
        waiting, _ = read_varuint(missing, 0)
    except BaseException as exc:
        if isinstance(exc, _NOT_CRDT_ERRORS) or not (isinstance(exc, Exception) or is_panic(exc)):
            raise
        return f"not a Yjs update that applies here: {_short(exc)}"
    if waiting:
        return "the update depends on changes this document does not have"
    return None


async def apply_update(request: Request) -> Response:
    """Apply a raw Yjs update (application/octet-stream, or JSON {"update": base64})."""
    doc_id: str = request.path_params["doc_id"]
    user = (await writer(request, doc_id)).user
    limit = state.settings(request).max_message_bytes
    media = live.media_type(request)
    if media == "application/json":
        raw = await live.read_body(request, limit * 4 // 3 + 1024)
        body = parse(UpdateBody, live.json_body(raw))
        try:
            update = base64.b64decode(body.update, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "update: not base64", field="update") from None
    else:
        update = await live.read_body(request, limit)
    if not update:
        raise ApiError(422, "body: an update is required", field="body")
    await live.document(request, doc_id)
    async with live.open_room(request, doc_id) as room:
        # On a big-stack thread (pycrdt decodes nested values recursively), off the loop.
        check = functools.partial(check_update, room.encode_state(), update)
        reason = await asyncio.to_thread(call_with_deep_stack, check)
        if reason is not None:
            raise ApiError(422, f"body: {reason}", field="body")
        storage.require_storage(request)
        try:
            effective = room.apply_update(update, Origin("rest", user))
        except RejectedFrame as exc:
            raise ApiError(422, f"body: {exc.reason}", field="body") from None
        vector = room.doc.get_state()
    if effective is not None:
        await live.saved(request, doc_id, user)
    result = {"changed": effective is not None, "state_vector": base64.b64encode(vector).decode()}
    return JSONResponse(result)


routes = [
    Route("/docs/{doc_id}/updates", apply_update, methods=["POST"]),
]

OPENAPI_INPUTS: list[type[BaseModel]] = [UpdateBody]
OPENAPI_OUTPUTS: list[type[BaseModel]] = [UpdateResult]


def openapi_paths() -> dict[str, dict[str, Any]]:
    return {
        "/api/docs/{doc_id}/updates": {
            "post": operation(
                "Apply a raw Yjs update (octet-stream, or JSON with base64); a bad one is 422 "
                "and nothing is stored",
                ok=(200, "applied", json_body(UpdateResult)),
                body={"application/octet-stream": {}, **json_body(UpdateBody)},
                errors=WRITE_ERRORS,
                tag="content",
            ),
        },
    }
