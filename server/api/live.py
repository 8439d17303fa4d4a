"""/api/docs/{id}/content, and the path every REST operation on a document's content shares.

Every change runs in the document's live room, in one transaction (`Room.edit`, or
`Room.apply_update` for raw updates), with origin "rest" and the caller as author. Connected
clients receive it at once, the update log stores it like a client's edit, and the handler
answers once it is committed. The document's row records who changed it last (updated_by).

Each operation checks, before it writes anything, that the document and the task exist and
that the document is of the kind the operation needs. A task operation on a document that is
not a board (or text on something other than a `doc`, or a message outside a discussion) is
409 Conflict: the request is well formed, but does not fit the document as it is.

The operations themselves: server/api/tasks.py (boards), messages.py (discussions), text.py
(docs) and updates.py (raw Yjs updates, any kind).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from pycrdt import Doc
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.api import describe, state, storage
from server.api.caller import reader
from server.api.docs import require_document
from server.api.errors import ApiError, not_found
from server.export import read_model
from server.origin import Origin
from server.persistence import workspace
from server.persistence.availability import unreachable
from server.rooms.registry import LoadFailed
from server.rooms.room import Room
from shared.documents import AnyKind, Kind, call_with_deep_stack, detect_kind, known_kind
from shared.roots import private_copy, recognise_by_content

log = logging.getLogger("tandem.api")

T = TypeVar("T")

# -- response models ---------------------------------------------------------------------------


class ContentProblem(BaseModel):
    path: str
    message: str


class Content(BaseModel):
    """The document's live content as its kind's JSON view (shared/schema), and what in it
    does not fit the schema (skipped in this view)."""

    id: str
    kind: str
    content: dict[str, Any]
    problems: list[ContentProblem]


# -- helpers -----------------------------------------------------------------------------------


async def document(request: Request, doc_id: str) -> Any:
    async with state.engine(request).connect() as conn:
        return await require_document(conn, doc_id)


@contextlib.asynccontextmanager
async def open_room(request: Request, doc_id: str) -> AsyncIterator[Room]:
    registry = state.registry(request)
    try:
        room = await registry.acquire(doc_id)
    except LoadFailed:
        raise ApiError(503, "the document store is unavailable; try again") from None
    try:
        yield room
    finally:
        registry.release(doc_id)


def _kind(row: Any, room: Room) -> AnyKind:
    """The recorded kind, else `meta.kind`, else what the content makes it (read on a
    private copy: looking at roots through several views re-types them)."""
    kind: Kind | None = known_kind(row.kind) or detect_kind(room.doc)
    if kind is not None:
        return kind
    found: AnyKind = call_with_deep_stack(lambda: recognise_by_content(private_copy(room.doc)))
    return found


def require_kind(row: Any, room: Room, expected: Kind) -> None:
    kind = _kind(row, room)
    if kind != expected:
        what = "of no known kind (raw)" if kind == "raw" else f"a {kind}"
        raise ApiError(409, f"document {row.id} is {what}, not a {expected}")


def edit(request: Request, room: Room, user: str, change: Callable[[Doc[Any]], T]) -> T:
    """`change` as one server-side edit by `user`. Changes check what they need before they
    write, so a refusal (ApiError) leaves the document untouched; so does a database that
    cannot store the edit now (503)."""
    storage.require_storage(request)
    try:
        return room.edit(Origin("rest", user), change)
    except KeyError as exc:
        raise not_found("item", exc.args[0] if exc.args else "?") from None
    except ValueError as exc:  # the document holds something the change cannot work on
        raise ApiError(409, str(exc)) from None


async def saved(request: Request, doc_id: str, user: str) -> None:
    """Answer once the edit is committed (503 if it is not in time), and record the author on
    the document's row."""
    await storage.stored(request, doc_id)
    try:
        async with state.engine(request).begin() as conn:
            await workspace.touch_document(conn, doc_id, updated_by=user)
    except Exception as exc:
        if not unreachable(exc):
            raise
        # The edit is stored; only who changed the document last is not recorded.
        log.warning("%s: the edit is stored, its author not recorded: %s", doc_id, exc)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body is at most {limit} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise ApiError(413, f"the body is at most {limit} bytes")
    return bytes(raw)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def json_body(raw: bytes) -> object:
    if not raw.strip():
        raise ApiError(422, "body: a JSON object is required", field="body")
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(422, "body: not valid JSON", field="body") from None


def content_json(doc_id: str, kind: AnyKind, doc: Doc[Any]) -> dict[str, Any]:
    model, problems = read_model(doc, kind)
    return Content.model_validate(
        {
            "id": doc_id,
            "kind": kind,
            "content": model.to_json(),
            "problems": [p.to_json() for p in problems],
        }
    ).model_dump(mode="json")


# -- any document ------------------------------------------------------------------------------


async def get_content(request: Request) -> Response:
    """The live content as JSON: a board, doc or discussion as its kind's read model, any other
    document (`raw`) as the JSON of every root."""
    doc_id: str = request.path_params["doc_id"]
    await reader(request, doc_id, share_ok=True)
    row = await document(request, doc_id)
    async with open_room(request, doc_id) as room:
        content = content_json(doc_id, _kind(row, room), room.doc)
    return JSONResponse(content)


routes = [
    Route("/docs/{doc_id}/content", get_content, methods=["GET"]),
]

OPENAPI_INPUTS: list[type[BaseModel]] = []
OPENAPI_OUTPUTS: list[type[BaseModel]] = [Content]


def openapi_paths() -> dict[str, dict[str, Any]]:
    return {
        "/api/docs/{doc_id}/content": {
            "get": describe.operation(
                "The live content of a board, doc or discussion as JSON",
                ok=(200, "the content, and what in it does not fit", describe.json_body(Content)),
                errors=(401, 403, 404, 409),
                tag="content",
            ),
        },
    }
