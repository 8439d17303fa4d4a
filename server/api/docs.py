"""/api/docs: boards, documents and discussions: their metadata, and their creation.

A document's content lives in its room (the CRDT); its row holds what the workspace lists
and filters by. Creating one writes both: the row, then the kind's initial shape as a
server-side edit, logged with origin "rest" and the caller as author.
"""

from __future__ import annotations

import logging
import secrets
import string
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from pycrdt import Array, Doc, Map
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.access_events import AccessChange
from server.api import state, storage
from server.api.caller import count_creation, folder_access, reader, writer
from server.api.errors import ApiError, not_found, parse_body, parse_query
from server.api.fields import (
    Department,
    DocId,
    Limit,
    Notes,
    Offset,
    TagList,
    Timestamp,
    Title,
)
from server.api.files import File, file_json
from server.api.folders import require_folder
from server.origin import Origin
from server.persistence import workspace
from server.rooms.registry import LoadFailed
from shared.documents import AnyKind, Kind, call_with_deep_stack, initialize
from shared.roots import private_copy, root_shape

log = logging.getLogger("tandem.api")

_ID_ALPHABET = string.ascii_lowercase + string.digits


class DocCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Kind
    title: Title
    id: DocId | None = Field(None, description="optional; a short unique id is generated")
    folder_id: int | None = None
    department: Department | None = None
    tags: TagList = Field(default_factory=list)
    notes: Notes | None = None
    project: Title | None = Field(None, description="boards: the project they belong to")


class DocUpdate(BaseModel):
    """Only the fields given change; `folder_id` moves the document (null: to the top)."""

    model_config = ConfigDict(extra="forbid")

    title: Title | None = None
    folder_id: int | None = None
    department: Department | None = None
    tags: TagList | None = None
    notes: Notes | None = None


class DocQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: AnyKind | None = None
    folder: int | None = Field(None, description="folder id")
    department: str | None = None
    tag: str | None = None
    q: str | None = Field(None, description="text searched in titles (and file names)")
    include_files: bool = Field(False, description="also list the files that match")
    limit: Limit = 100
    offset: Offset = 0


class Document(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str | None = Field(
        description="board, doc, discussion, or raw (another application's shape); null "
        "for a moment after a client creates a document, until its content is recognised"
    )
    title: str | None
    folder_id: int | None
    department: str | None
    tags: TagList
    notes: str | None
    created_by: str | None
    updated_by: str | None
    created_at: Timestamp
    updated_at: Timestamp


class DocumentList(BaseModel):
    documents: list[Document]
    files: list[File] | None = Field(None, description="only with include_files=1")


def document_json(row: Any) -> dict[str, Any]:
    return Document.model_validate(row).model_dump(mode="json")


async def require_document(conn: AsyncConnection, doc_id: str, *, field: str | None = None) -> Any:
    row = await workspace.get_document(conn, doc_id)
    if row is None:
        raise not_found("document", doc_id, field=field)
    return row


async def _fresh_id(conn: AsyncConnection) -> str:
    while True:
        doc_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
        if not await workspace.document_exists(conn, doc_id):
            return doc_id


async def _flush(request: Request, doc_id: str) -> None:
    """Answer once the edit is committed, so an acknowledged change is a stored one (503 if
    it is not in time)."""
    await storage.stored(request, doc_id)


async def create_doc(request: Request) -> Response:
    """Create a board, document or discussion: its metadata row and its initial content."""
    caller = await writer(request)
    user = caller.user
    body = await parse_body(request, DocCreate)
    if body.folder_id is not None:
        await folder_access(request, caller, body.folder_id, "write", field="folder_id")
    count_creation(request, caller)
    storage.require_storage(request)  # its initial content is an edit
    engine = state.engine(request)
    try:
        async with engine.begin() as conn:
            if body.folder_id is not None:
                await require_folder(conn, body.folder_id, field="folder_id")
            if body.id is None:
                doc_id = await _fresh_id(conn)
            elif await workspace.document_exists(conn, body.id):
                raise ApiError(409, f"document {body.id} exists", field="id")
            else:
                doc_id = body.id
            row = await workspace.create_document(
                conn,
                doc_id,
                kind=body.kind,
                title=body.title,
                folder_id=body.folder_id,
                department=body.department,
                tags=body.tags,
                notes=body.notes,
                created_by=user,
            )
    except IntegrityError:  # created meanwhile by another request
        raise ApiError(409, "a document with this id exists", field="id") from None

    def shape(doc: Doc[Any]) -> None:
        initialize(
            doc,
            body.kind,
            title=body.title,
            department=body.department,
            project=body.project,
            tags=body.tags,
        )

    try:
        async with state.registry(request).use(doc_id) as room:
            room.edit(Origin("rest", user), shape)
    except LoadFailed:
        async with engine.begin() as conn:
            await workspace.discard_document(conn, doc_id)
        raise ApiError(503, "the document store is unavailable; try again") from None
    await _flush(request, doc_id)
    location = f"/api/docs/{quote(doc_id, safe='')}"
    return JSONResponse(document_json(row), 201, headers={"Location": location})


async def list_docs(request: Request) -> Response:
    """Live documents, newest change first, filtered; with include_files=1 also files. Only
    what the caller may read is listed."""
    caller = await reader(request)
    access = state.access(request)
    query = parse_query(request, DocQuery)
    async with state.engine(request).connect() as conn:
        rows = await workspace.list_documents(
            conn,
            kind=query.kind,
            folder_id=query.folder,
            department=query.department,
            tag=query.tag,
            text=query.q,
            limit=query.limit,
            offset=query.offset,
        )
        rows = await access.documents(caller.user, rows)
        result: dict[str, Any] = {"documents": [document_json(row) for row in rows]}
        if query.include_files:
            # Files have no kind: a kind filter leaves none of them.
            files: Sequence[Any] = []
            if query.kind is None:
                files = await workspace.list_files(
                    conn,
                    folder_id=query.folder,
                    department=query.department,
                    tag=query.tag,
                    text=query.q,
                    limit=query.limit,
                    offset=query.offset,
                )
            files = await access.folders(caller.user, files, "folder_id")
            result["files"] = [file_json(row) for row in files]
    return JSONResponse(result)


async def get_doc(request: Request) -> Response:
    """One live document's metadata."""
    doc_id: str = request.path_params["doc_id"]
    await reader(request, doc_id)
    async with state.engine(request).connect() as conn:
        row = await require_document(conn, doc_id)
    return JSONResponse(document_json(row))


def _sync_meta(changes: dict[str, Any]) -> Any:
    """The edit that writes changed title, department and tags into the content's `meta`,
    where clients read them (and whence the catalog copies client edits back)."""

    def sync(doc: Doc[Any]) -> None:
        meta = doc.get("meta", type=Map)
        if "title" in changes and meta.get("title") != changes["title"]:
            meta["title"] = changes["title"]
        if "tags" in changes:
            tags = list(changes["tags"] or ())
            current = meta.get("tags")
            if not isinstance(current, Array) or current.to_py() != tags:
                meta["tags"] = Array(tags)
        if "department" in changes:
            department = changes["department"]
            if department is None:
                if "department" in meta:
                    del meta["department"]
            elif meta.get("department") != department:
                meta["department"] = department

    return sync


def _meta_writable(doc: Doc[Any]) -> bool:
    """Whether `meta` is a map or absent. Looked at on a copy: in a document some other
    application wrote, `meta` may be another type, which viewing as a map would re-type."""
    if "meta" not in doc.keys():
        return True
    shape = call_with_deep_stack(lambda: root_shape(private_copy(doc), "meta"))
    return shape is None or (shape[0] and shape[1] is None)


async def update_doc(request: Request) -> Response:
    """Change title, tags, notes, department, or move (folder_id); meta.title follows."""
    doc_id: str = request.path_params["doc_id"]
    caller = await writer(request, doc_id)
    user = caller.user
    body = await parse_body(request, DocUpdate)
    changes = body.model_dump(include=body.model_fields_set)
    if changes.get("folder_id") is not None:
        await folder_access(request, caller, changes["folder_id"], "write", field="folder_id")
    if "title" in changes and changes["title"] is None:
        raise ApiError(422, "title: may not be null", field="title")
    async with state.engine(request).begin() as conn:
        await require_document(conn, doc_id)
        if changes.get("folder_id") is not None:
            await require_folder(conn, changes["folder_id"], field="folder_id")
        row = await workspace.update_document(conn, doc_id, changes, updated_by=user)
    if row is None:
        raise not_found("document", doc_id)
    if {"folder_id", "department"} & changes.keys():
        await state.access_changed(request)  # who may open it may have changed
    if {"title", "department", "tags"} & changes.keys():
        try:
            async with state.registry(request).use(doc_id) as room:
                if _meta_writable(room.doc):
                    room.edit(Origin("rest", user), _sync_meta(changes))
        except LoadFailed:
            raise ApiError(503, "saved, but the document could not be loaded to show it") from None
        except Exception as exc:  # a client made `meta` something other than a map
            log.warning("%s: meta not updated: %s", doc_id, exc)
        await _flush(request, doc_id)
    return JSONResponse(document_json(row))


async def delete_doc(request: Request) -> Response:
    """Soft delete: the document disappears from the workspace, its history stays stored."""
    doc_id: str = request.path_params["doc_id"]
    user = (await writer(request, doc_id)).user
    async with state.engine(request).begin() as conn:
        if not await workspace.soft_delete_document(conn, doc_id, deleted_by=user):
            raise not_found("document", doc_id)
    # Closes its connections here and in every other process.
    await state.access_events(request).publish(
        AccessChange(rules=False, deleted=frozenset({doc_id}))
    )
    return Response(status_code=204)


routes = [
    Route("/docs", create_doc, methods=["POST"]),
    Route("/docs", list_docs, methods=["GET"]),
    Route("/docs/{doc_id}", get_doc, methods=["GET"]),
    Route("/docs/{doc_id}", update_doc, methods=["PATCH"]),
    Route("/docs/{doc_id}", delete_doc, methods=["DELETE"]),
]
