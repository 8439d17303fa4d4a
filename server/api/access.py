"""/api/folders/{id}/access and /api/docs/{id}/access: the grants of a folder or a document.

`PUT` replaces every grant of its target with the body's list. Admins manage every grant; a
department's lead those of the folders and documents the department owns. A change takes
effect at once, on connections already open too (server/rooms/revocation.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.access import Grant, grants_from_json, replace_grants
from server.api import state
from server.api.caller import principal
from server.api.describe import READ_ERRORS, WRITE_ERRORS, json_body, operation
from server.api.errors import ApiError, not_found, parse_body
from server.api.fields import Department, UserName
from server.persistence import workspace
from server.persistence.tables import grants as grants_table


class GrantItem(BaseModel):
    """Exactly one of `department`, `user`, `everyone: true`, and the access it gets."""

    model_config = ConfigDict(extra="forbid")

    department: Department | None = None
    user: UserName | None = None
    everyone: Literal[True] | None = None
    access: Literal["read", "write"]

    @model_validator(mode="after")
    def _one_grantee(self) -> GrantItem:
        named = [self.department is not None, self.user is not None, self.everyone is not None]
        if sum(named) != 1:
            raise ValueError("name exactly one of department, user or everyone")
        return self


class Grants(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grants: Annotated[list[GrantItem], Field(max_length=200)]


async def _read_grants(request: Request, *, folder_id: int | None, doc_id: str | None) -> Any:
    from sqlalchemy import select

    column = grants_table.c.folder_id if folder_id is not None else grants_table.c.doc_id
    target = folder_id if folder_id is not None else doc_id
    async with state.engine(request).connect() as conn:
        rows = (
            await conn.execute(select(grants_table).where(column == target).order_by("id"))
        ).all()
    return [
        Grant(row.access, row.department, row.user_name, bool(row.everyone)).to_json()
        for row in rows
    ]


async def _target(request: Request) -> tuple[int | None, str | None, str | None]:
    """(folder id, document id, the department the target itself names); 404 if missing."""
    params = request.path_params
    async with state.engine(request).connect() as conn:
        if "folder_id" in params:
            folder = await workspace.get_folder(conn, params["folder_id"])
            if folder is None:
                raise not_found("folder", params["folder_id"])
            return int(folder.id), None, None
        row = await workspace.get_document(conn, params["doc_id"])
        if row is None:
            raise not_found("document", params["doc_id"])
        return row.folder_id, row.id, row.department


async def _manager(request: Request) -> str:
    caller = await principal(request)
    if caller.doc is not None or caller.read_only:
        raise ApiError(403, "this token cannot change access rules")
    folder_id, _doc_id, department = await _target(request)
    if not await state.access(request).may_manage(
        caller.user, folder_id=folder_id, department=department
    ):
        raise ApiError(403, "only admins and the owning department's leads manage access")
    return caller.user


async def get_access(request: Request) -> Response:
    """The grants of a folder or document (for those who may manage them)."""
    await _manager(request)
    folder_id, doc_id = _ids(request)
    return JSONResponse({"grants": await _read_grants(request, folder_id=folder_id, doc_id=doc_id)})


async def put_access(request: Request) -> Response:
    """Replace the grants of a folder or document."""
    user = await _manager(request)
    body = await parse_body(request, Grants)
    folder_id, doc_id = _ids(request)
    new = grants_from_json([item.model_dump(exclude_none=True) for item in body.grants])
    async with state.engine(request).begin() as conn:
        await replace_grants(conn, folder_id=folder_id, doc_id=doc_id, new=new, by=user)
    await state.access_changed(request)
    return JSONResponse({"grants": [g.to_json() for g in new]})


def _ids(request: Request) -> tuple[int | None, str | None]:
    params = request.path_params
    if "folder_id" in params:
        return int(params["folder_id"]), None
    return None, str(params["doc_id"])


routes = [
    Route("/folders/{folder_id:int}/access", get_access, methods=["GET"]),
    Route("/folders/{folder_id:int}/access", put_access, methods=["PUT"]),
    Route("/docs/{doc_id}/access", get_access, methods=["GET"]),
    Route("/docs/{doc_id}/access", put_access, methods=["PUT"]),
]

OPENAPI_INPUTS: list[type[BaseModel]] = [Grants]
OPENAPI_OUTPUTS: list[type[BaseModel]] = []


def _openapi_rules(what: str) -> dict[str, Any]:
    grants = json_body(Grants)
    return {
        "get": operation(
            f"The grants of a {what} (admins, and leads of the owning department)",
            ok=(200, "its grants", grants),
            errors=READ_ERRORS,
            tag="access",
        ),
        "put": operation(
            f"Replace the grants of a {what}; open connections that lose access are "
            "closed (4403) or made read-only at once",
            ok=(200, "the grants now", grants),
            body=grants,
            errors=WRITE_ERRORS,
            tag="access",
        ),
    }


def openapi_paths() -> dict[str, dict[str, Any]]:
    """Access rules of folders and documents (share links: share.py; activity: activity.py)."""
    return {
        "/api/folders/{folder_id}/access": _openapi_rules("folder (inherited beneath it)"),
        "/api/docs/{doc_id}/access": _openapi_rules("document"),
    }
