"""/api/folders: the folder tree documents and files live in."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.api import state
from server.api.caller import count_creation, folder_access, reader, writer
from server.api.errors import ApiError, not_found, parse_body, parse_query
from server.api.fields import Department, Name, Timestamp
from server.persistence import workspace


class FolderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    parent_id: int | None = None
    department: Department | None = None


class FolderUpdate(BaseModel):
    """Only the fields given change; `parent_id: null` moves the folder to the top."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    parent_id: int | None = None
    department: Department | None = None


class FolderQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parent_id: int | None = None
    top: bool = False  # only top-level folders
    department: str | None = None


class Folder(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    parent_id: int | None
    department: str | None
    created_at: Timestamp
    created_by: str | None


class FolderList(BaseModel):
    folders: list[Folder]


def folder_json(row: Any) -> dict[str, Any]:
    return Folder.model_validate(row).model_dump(mode="json")


async def require_folder(conn: AsyncConnection, folder_id: int, *, field: str | None = None) -> Any:
    row = await workspace.get_folder(conn, folder_id)
    if row is None:
        raise not_found("folder", folder_id, field=field)
    return row


async def _check_name_free(
    conn: AsyncConnection, parent_id: int | None, name: str, folder_id: int | None = None
) -> None:
    twin = await workspace.find_folder(conn, parent_id, name)
    if twin is not None and twin.id != folder_id:
        raise ApiError(409, f"a folder named {name!r} exists there already", field="name")


async def create_folder(request: Request) -> Response:
    """Create a folder, at the top or inside `parent_id`."""
    caller = await writer(request)
    user = caller.user
    body = await parse_body(request, FolderCreate)
    if body.parent_id is not None:
        await folder_access(request, caller, body.parent_id, "write", field="parent_id")
    count_creation(request, caller)
    try:
        async with state.engine(request).begin() as conn:
            if body.parent_id is not None:
                await require_folder(conn, body.parent_id, field="parent_id")
            await _check_name_free(conn, body.parent_id, body.name)
            row = await workspace.create_folder(
                conn,
                body.name,
                parent_id=body.parent_id,
                department=body.department,
                created_by=user,
            )
    except IntegrityError:
        raise ApiError(409, "the folder changed meanwhile; try again") from None
    await state.access_changed(request)  # the tree the rules are read on grew
    return JSONResponse(folder_json(row), 201, headers={"Location": f"/api/folders/{row.id}"})


async def list_folders(request: Request) -> Response:
    """Every folder the caller may open (the client builds the tree from parent_id), or one
    level of it."""
    caller = await reader(request)
    query = parse_query(request, FolderQuery)
    async with state.engine(request).connect() as conn:
        rows = await workspace.list_folders(
            conn, parent_id=query.parent_id, top_level=query.top, department=query.department
        )
    rows = await state.access(request).folders(caller.user, rows)
    return JSONResponse({"folders": [folder_json(row) for row in rows]})


async def get_folder(request: Request) -> Response:
    """One folder."""
    caller = await reader(request)
    folder_id: int = request.path_params["folder_id"]
    await folder_access(request, caller, folder_id, "read")
    async with state.engine(request).connect() as conn:
        row = await require_folder(conn, folder_id)
    return JSONResponse(folder_json(row))


async def update_folder(request: Request) -> Response:
    """Rename, move (parent_id) or re-assign a folder to a department."""
    caller = await writer(request)
    folder_id: int = request.path_params["folder_id"]
    await folder_access(request, caller, folder_id, "write")
    body = await parse_body(request, FolderUpdate)
    changes = body.model_dump(include=body.model_fields_set)
    if changes.get("parent_id") is not None:
        await folder_access(request, caller, changes["parent_id"], "write", field="parent_id")
    if "name" in changes and changes["name"] is None:
        raise ApiError(422, "name: may not be null", field="name")
    try:
        async with state.engine(request).begin() as conn:
            current = await require_folder(conn, folder_id)
            parent_id = changes.get("parent_id", current.parent_id)
            if "parent_id" in changes and parent_id is not None:
                await require_folder(conn, parent_id, field="parent_id")
                if folder_id in await workspace.folder_ancestors(conn, parent_id):
                    raise ApiError(
                        422,
                        "parent_id: a folder cannot move into itself or its subfolders",
                        field="parent_id",
                    )
            await _check_name_free(conn, parent_id, changes.get("name", current.name), folder_id)
            row = await workspace.update_folder(conn, folder_id, changes)
    except IntegrityError:
        raise ApiError(409, "the folder changed meanwhile; try again") from None
    if {"parent_id", "department"} & changes.keys():
        await state.access_changed(request)  # what is inherited beneath it changed
    return JSONResponse(folder_json(row))


async def delete_folder(request: Request) -> Response:
    """Delete an empty folder (409 while it holds folders, documents or files)."""
    caller = await writer(request)
    folder_id: int = request.path_params["folder_id"]
    await folder_access(request, caller, folder_id, "write")
    try:
        async with state.engine(request).begin() as conn:
            await require_folder(conn, folder_id)
            contents = await workspace.folder_contents(conn, folder_id)
            if any(contents.values()):
                held = ", ".join(f"{count} {what}" for what, count in contents.items() if count)
                raise ApiError(409, f"folder {folder_id} is not empty: {held}")
            await workspace.delete_folder(conn, folder_id)
    except IntegrityError:
        raise ApiError(409, f"folder {folder_id} is not empty") from None
    await state.access_changed(request)
    return Response(status_code=204)


routes = [
    Route("/folders", create_folder, methods=["POST"]),
    Route("/folders", list_folders, methods=["GET"]),
    Route("/folders/{folder_id:int}", get_folder, methods=["GET"]),
    Route("/folders/{folder_id:int}", update_folder, methods=["PATCH"]),
    Route("/folders/{folder_id:int}", delete_folder, methods=["DELETE"]),
]
