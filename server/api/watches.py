"""Watching a document: hear of its edits, new file versions and tasks as its owner would.

`PUT /api/docs/{id}/watch` starts (again: it is idempotent), `DELETE` stops, and
`GET /api/me/watches` lists the caller's watches. Whoever may read a document may watch it;
the sidecar notifies a watcher only while they still may.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from sqlalchemy import delete, select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.api import state
from server.api.caller import SHARE_ONLY, principal, reader
from server.api.describe import json_body, operation
from server.api.errors import ApiError, not_found
from server.api.fields import Timestamp
from server.api.preferences import upsert
from server.persistence import workspace
from server.persistence.tables import documents, watches
from server.persistence.workspace import now


class Watch(BaseModel):
    doc_id: str
    created_at: Timestamp


class WatchList(BaseModel):
    watches: list[Watch]


async def watch(request: Request) -> Response:
    doc_id: str = request.path_params["doc_id"]
    caller = await reader(request, doc_id)
    async with state.engine(request).begin() as conn:
        if await workspace.get_document(conn, doc_id) is None:
            raise not_found("document", doc_id)
        stmt = upsert(conn, watches).values(user_name=caller.user, doc_id=doc_id, created_at=now())
        await conn.execute(stmt.on_conflict_do_nothing())
    return Response(status_code=204)


async def unwatch(request: Request) -> Response:
    """Stop watching; 204 whether or not the caller was watching. Only the token's scope is
    checked, so someone who lost access to a document can still stop watching it."""
    doc_id: str = request.path_params["doc_id"]
    caller = await principal(request)
    if caller.share:
        raise ApiError(403, SHARE_ONLY)
    if caller.doc is not None and caller.doc != doc_id:
        raise ApiError(403, "this token is limited to one document")
    async with state.engine(request).begin() as conn:
        await conn.execute(
            delete(watches).where(watches.c.user_name == caller.user, watches.c.doc_id == doc_id)
        )
    return Response(status_code=204)


async def list_watches(request: Request) -> Response:
    """The caller's watches on documents they may (still) read, oldest first."""
    caller = await principal(request)
    if caller.share:
        raise ApiError(403, SHARE_ONLY)
    stmt = (
        select(
            documents.c.id,
            documents.c.folder_id,
            documents.c.department,
            watches.c.created_at,
        )
        .join(documents, documents.c.id == watches.c.doc_id)
        .where(watches.c.user_name == caller.user, documents.c.deleted_at.is_(None))
        .order_by(watches.c.created_at, watches.c.doc_id)
    )
    if caller.doc is not None:  # a token limited to one document sees that one only
        stmt = stmt.where(watches.c.doc_id == caller.doc)
    async with state.engine(request).connect() as conn:
        rows = (await conn.execute(stmt)).all()
    readable = await state.access(request).documents(caller.user, rows)
    return JSONResponse(
        WatchList(
            watches=[Watch(doc_id=row.id, created_at=row.created_at) for row in readable]
        ).model_dump(mode="json")
    )


OPENAPI_INPUTS: list[type[BaseModel]] = []
OPENAPI_OUTPUTS: list[type[BaseModel]] = [WatchList]


def openapi_paths() -> dict[str, dict[str, Any]]:
    return {
        "/api/docs/{doc_id}/watch": {
            "put": operation(
                "Watch a document: hear of its changes as its owner does (idempotent)",
                ok=(204, "watching", None),
                errors=(401, 403, 404),
                tag="notifications",
            ),
            "delete": operation(
                "Stop watching a document (204 also when not watching)",
                ok=(204, "not watching", None),
                tag="notifications",
            ),
        },
        "/api/me/watches": {
            "get": operation(
                "The documents you watch",
                ok=(200, "your watches, oldest first", json_body(WatchList)),
                tag="notifications",
            ),
        },
    }


routes = [
    Route("/docs/{doc_id}/watch", watch, methods=["PUT"]),
    Route("/docs/{doc_id}/watch", unwatch, methods=["DELETE"]),
    Route("/me/watches", list_watches, methods=["GET"]),
]
