"""/api/docs/{id}/activity: who connected to, edited, exported, shared or restored a document.

Readable by admins and by the leads of the department that owns the document (the same
people who manage its access). Edits are counted per author and hour; the other events are
listed newest first (server/audit.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.api import state
from server.api.caller import principal
from server.api.describe import READ_ERRORS, json_body, operation
from server.api.errors import ApiError, not_found
from server.audit import activity
from server.persistence import workspace


class EditCount(BaseModel):
    user: str | None
    hour: str
    updates: int


class Event(BaseModel):
    at: str
    user: str | None
    action: str
    detail: str | None


class Activity(BaseModel):
    edits: list[EditCount]
    events: list[Event]


async def get_activity(request: Request) -> Response:
    doc_id: str = request.path_params["doc_id"]
    caller = await principal(request)
    if caller.doc is not None:
        raise ApiError(403, "this token is limited to reading one document")
    async with state.engine(request).connect() as conn:
        row = await workspace.get_document(conn, doc_id)
    if row is None:
        raise not_found("document", doc_id)
    if not await state.access(request).may_manage(
        caller.user, folder_id=row.folder_id, department=row.department
    ):
        raise ApiError(403, "only admins and the owning department's leads read the activity")
    await state.audit(request).flush()  # what happened up to this request
    return JSONResponse(await activity(state.engine(request), doc_id))


routes = [Route("/docs/{doc_id}/activity", get_activity, methods=["GET"])]

OPENAPI_INPUTS: list[type[BaseModel]] = []
OPENAPI_OUTPUTS: list[type[BaseModel]] = [Activity]


def openapi_paths() -> dict[str, dict[str, Any]]:
    return {
        "/api/docs/{doc_id}/activity": {
            "get": operation(
                "Who connected, edited (per user and hour), exported, shared or restored "
                "(admins, and leads of the owning department)",
                ok=(200, "the activity", json_body(Activity)),
                errors=READ_ERRORS,
                tag="access",
            ),
        },
    }
