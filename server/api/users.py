"""/api/users and /api/departments: who works here, in which department, with which role.

Any caller with access to the workspace may read them (to pick an assignee, say); only an
admin may change them: a user whose row has the role admin and is active, or the local user
when there is no sign-in. A change that would leave no active admin is refused (409), so
the API cannot lock everyone out of it (`tandem user` on the server still could fix that).
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import quote

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server import passwords
from server.api import state
from server.api.auth import User, current_caller, sign_in_off
from server.api.describe import READ_ERRORS, WRITE_ERRORS, json_body, operation
from server.api.describe import query as query_parameters
from server.api.errors import ApiError, not_found, parse_body, parse_query
from server.api.fields import Department
from server.auth import LOCAL_USER, Principal
from server.persistence import users as accounts
from server.persistence.users import Role

ADMIN_ONLY = "only an admin may change users and departments"
LAST_ADMIN = "this would leave no active admin"

# Letters, digits and punctuation; not '/', '@' (an e-mail address is the other way to name a
# user at sign-in) or whitespace at either end.
_USER_ID = re.compile(r"[^\s/@\\\x00-\x1f\x7f]([^/@\\\x00-\x1f\x7f]*[^\s/@\\\x00-\x1f\x7f])?")
USER_ID_RULE = (
    "a user id is 1 to 128 characters without '/', '\\', '@' or control characters, not "
    "starting or ending with a space"
)
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def check_user_id(value: str) -> str:
    """`value` if it may be a new user's id, else ValueError saying why."""
    if len(value) > 128 or not _USER_ID.fullmatch(value):
        raise ValueError(USER_ID_RULE)
    if value == LOCAL_USER:
        raise ValueError(f"{LOCAL_USER!r} is the user of a server without sign-in")
    return value


def check_email(value: str) -> str:
    """`value` in lower case if it looks like an e-mail address, else ValueError."""
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise ValueError("not an e-mail address")
    return value.lower()


def _password(value: str) -> str:
    problem = passwords.check_password_rules(value)
    if problem is not None:
        raise ValueError(problem)
    return value


UserId = Annotated[
    str, StringConstraints(min_length=1, max_length=128), AfterValidator(check_user_id)
]
Email = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=254), AfterValidator(check_email)
]
DisplayName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Password = Annotated[str, AfterValidator(_password)]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: UserId
    name: DisplayName | None = None  # the display name; default: the id
    email: Email | None = None
    department: Department | None = None
    role: Role = "member"
    active: bool = True
    password: Password | None = None  # None: no password sign-in (yet)


class UserUpdate(BaseModel):
    """Only the fields given change; null clears name, email, department or password."""

    model_config = ConfigDict(extra="forbid")

    name: DisplayName | None = None
    email: Email | None = None
    department: Department | None = None
    role: Role | None = None
    active: bool | None = None
    password: Password | None = None


class UserQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    department: str | None = None


class UserList(BaseModel):
    users: list[User]


class DepartmentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Department


class DepartmentOut(BaseModel):
    id: int
    name: str
    users: int  # how many users belong to it


class DepartmentList(BaseModel):
    departments: list[DepartmentOut]


# -- who may ------------------------------------------------------------------------------------


async def _reader(request: Request) -> Principal:
    """A caller with access to the workspace as a whole."""
    caller = await current_caller(request)
    if caller.doc is not None:
        raise ApiError(403, "this token is limited to one document")
    return caller


async def _admin(request: Request) -> Principal:
    caller = await _reader(request)
    if sign_in_off(request):
        return caller
    if caller.read_only:
        raise ApiError(403, "this token is read-only")
    async with state.engine(request).connect() as conn:
        if not await accounts.is_admin(conn, caller.user):
            raise ApiError(403, ADMIN_ONLY)
    return caller


# -- users ----------------------------------------------------------------------------------------


async def _department_id(conn: AsyncConnection, name: str | None) -> int | None:
    """The id of the department `name` (None: none); 422 naming the ones there are."""
    if name is None:
        return None
    row = await accounts.get_department_by_name(conn, name)
    if row is None:
        known = [d.name for d in await accounts.list_departments(conn)]
        there = ", ".join(known) if known else "none yet"
        raise ApiError(
            422, f"department: no department {name!r} (there are: {there})", field="department"
        )
    return int(row.id)


async def _require_user(conn: AsyncConnection, user_id: str) -> Any:
    row = await accounts.get_user(conn, user_id)
    if row is None:
        raise not_found("user", repr(user_id))
    return row


async def _check_email_free(conn: AsyncConnection, email: str | None, user_id: str) -> None:
    if email is None:
        return
    twin = await accounts.get_user_by_email(conn, email)
    if twin is not None and twin.name != user_id:
        raise ApiError(409, f"{email} is the e-mail address of another user", field="email")


async def create_user(request: Request) -> Response:
    """Add a user (admin only)."""
    await _admin(request)
    body = await parse_body(request, UserCreate)
    password_hash = (
        await passwords.hash_password_async(body.password) if body.password is not None else None
    )
    try:
        async with state.engine(request).begin() as conn:
            if await accounts.get_user(conn, body.id) is not None:
                raise ApiError(409, f"a user {body.id!r} exists already", field="id")
            await _check_email_free(conn, body.email, body.id)
            row = await accounts.create_user(
                conn,
                body.id,
                display_name=body.name,
                email=body.email,
                department_id=await _department_id(conn, body.department),
                role=body.role,
                active=body.active,
                password_hash=password_hash,
            )
    except IntegrityError:
        raise ApiError(409, "the user or e-mail address was taken meanwhile") from None
    await state.access_changed(request)  # a name seen before without a row has one now
    return JSONResponse(
        accounts.user_json(row), 201, headers={"Location": f"/api/users/{quote(row.name)}"}
    )


async def list_users(request: Request) -> Response:
    """Every user, by id; `department` filters by the department's name."""
    await _reader(request)
    query = parse_query(request, UserQuery)
    async with state.engine(request).connect() as conn:
        department_id = None
        if query.department is not None:
            department = await accounts.get_department_by_name(conn, query.department)
            if department is None:
                return JSONResponse({"users": []})
            department_id = int(department.id)
        rows = await accounts.list_users(conn, department_id=department_id)
    return JSONResponse({"users": [accounts.user_json(row) for row in rows]})


async def get_user(request: Request) -> Response:
    """One user."""
    await _reader(request)
    async with state.engine(request).connect() as conn:
        row = await _require_user(conn, request.path_params["user_id"])
    return JSONResponse(accounts.user_json(row))


async def update_user(request: Request) -> Response:
    """Change a user's display name, e-mail, department, role, active flag or password
    (admin only)."""
    await _admin(request)
    user_id: str = request.path_params["user_id"]
    body = await parse_body(request, UserUpdate)
    given = body.model_fields_set
    for field in ("role", "active"):
        if field in given and getattr(body, field) is None:
            raise ApiError(422, f"{field}: may not be null", field=field)
    changes: dict[str, Any] = {}
    if "name" in given:
        changes["display_name"] = body.name
    if "email" in given:
        changes["email"] = body.email
    if "role" in given:
        changes["role"] = body.role
    if "active" in given:
        changes["active"] = body.active
    if "password" in given:
        changes["password_hash"] = (
            await passwords.hash_password_async(body.password)
            if body.password is not None
            else None
        )
    try:
        async with state.engine(request).begin() as conn:
            row = await _require_user(conn, user_id)
            if "department" in given:
                changes["department_id"] = await _department_id(conn, body.department)
            if "email" in given:
                await _check_email_free(conn, body.email, user_id)
            stays_admin = changes.get("role", row.role) == "admin" and changes.get(
                "active", row.active
            )
            if row.role == "admin" and row.active and not stays_admin:
                if await accounts.count_active_admins(conn) <= 1:
                    raise ApiError(409, LAST_ADMIN, field="role" if "role" in given else "active")
            row = await accounts.update_user(conn, user_id, changes)
    except IntegrityError:
        raise ApiError(409, "the e-mail address was taken meanwhile", field="email") from None
    if {"role", "active", "department_id"} & changes.keys():
        await state.access_changed(request)  # open connections of this user are re-checked
    return JSONResponse(accounts.user_json(row))


# -- departments ----------------------------------------------------------------------------------


async def _require_department(conn: AsyncConnection, department_id: int) -> Any:
    row = await accounts.get_department(conn, department_id)
    if row is None:
        raise not_found("department", department_id)
    return row


async def _check_department_free(conn: AsyncConnection, name: str, department_id: int) -> None:
    twin = await accounts.get_department_by_name(conn, name)
    if twin is not None and twin.id != department_id:
        raise ApiError(409, f"a department {name!r} exists already", field="name")


async def create_department(request: Request) -> Response:
    """Add a department (admin only)."""
    await _admin(request)
    body = await parse_body(request, DepartmentBody)
    try:
        async with state.engine(request).begin() as conn:
            await _check_department_free(conn, body.name, -1)
            row = await accounts.create_department(conn, body.name)
    except IntegrityError:
        raise ApiError(409, f"a department {body.name!r} exists already", field="name") from None
    return JSONResponse(
        accounts.department_json(row), 201, headers={"Location": f"/api/departments/{row.id}"}
    )


async def list_departments(request: Request) -> Response:
    await _reader(request)
    async with state.engine(request).connect() as conn:
        rows = await accounts.list_departments(conn)
    return JSONResponse({"departments": [accounts.department_json(row) for row in rows]})


async def rename_department(request: Request) -> Response:
    """Rename a department; folders and documents labelled with it follow (admin only)."""
    await _admin(request)
    department_id: int = request.path_params["department_id"]
    body = await parse_body(request, DepartmentBody)
    try:
        async with state.engine(request).begin() as conn:
            await _require_department(conn, department_id)
            await _check_department_free(conn, body.name, department_id)
            row = await accounts.rename_department(conn, department_id, body.name)
    except IntegrityError:
        raise ApiError(409, f"a department {body.name!r} exists already", field="name") from None
    await state.access_changed(request)
    return JSONResponse(accounts.department_json(row))


async def delete_department(request: Request) -> Response:
    """Delete a department nothing belongs to any more (admin only)."""
    await _admin(request)
    department_id: int = request.path_params["department_id"]
    async with state.engine(request).begin() as conn:
        row = await _require_department(conn, department_id)
        usage = await accounts.department_usage(conn, row.name)
        if any(usage.values()):
            held = ", ".join(f"{count} {what}" for what, count in usage.items() if count)
            raise ApiError(409, f"department {row.name!r} still has {held}")
        await accounts.delete_department(conn, department_id)
    return Response(status_code=204)


routes = [
    Route("/users", list_users, methods=["GET"]),
    Route("/users", create_user, methods=["POST"]),
    Route("/users/{user_id}", get_user, methods=["GET"]),
    Route("/users/{user_id}", update_user, methods=["PATCH"]),
    Route("/departments", list_departments, methods=["GET"]),
    Route("/departments", create_department, methods=["POST"]),
    Route("/departments/{department_id:int}", rename_department, methods=["PATCH"]),
    Route("/departments/{department_id:int}", delete_department, methods=["DELETE"]),
]

OPENAPI_INPUTS: list[type[BaseModel]] = [UserCreate, UserUpdate, DepartmentBody]
OPENAPI_OUTPUTS: list[type[BaseModel]] = [UserList, DepartmentOut, DepartmentList]


def openapi_paths() -> dict[str, dict[str, Any]]:
    """Users and departments (sign-in is in server/api/auth.py). Changing them is for admins
    (403 otherwise)."""
    user = json_body(User)
    return {
        "/api/users": {
            "get": operation(
                "List users, optionally of one department",
                ok=(200, "the users", json_body(UserList)),
                query=query_parameters(UserQuery),
                errors=(401, 403, 422),
                tag="users",
            ),
            "post": operation(
                "Add a user (admin)",
                ok=(201, "created", user),
                body=json_body(UserCreate),
                errors=WRITE_ERRORS,
                tag="users",
            ),
        },
        "/api/users/{user_id}": {
            "get": operation("A user", ok=(200, "the user", user), errors=READ_ERRORS, tag="users"),
            "patch": operation(
                "Change a user's display name, e-mail, department, role, active flag or "
                "password (admin); leaving no active admin is 409",
                ok=(200, "the changed user", user),
                body=json_body(UserUpdate),
                errors=WRITE_ERRORS,
                tag="users",
            ),
        },
        "/api/departments": {
            "get": operation(
                "List departments with their number of users",
                ok=(200, "the departments", json_body(DepartmentList)),
                errors=(401, 403),
                tag="users",
            ),
            "post": operation(
                "Add a department (admin)",
                ok=(201, "created", json_body(DepartmentOut)),
                body=json_body(DepartmentBody),
                errors=WRITE_ERRORS,
                tag="users",
            ),
        },
        "/api/departments/{department_id}": {
            "patch": operation(
                "Rename a department; its folders and documents follow (admin)",
                ok=(200, "the department", json_body(DepartmentOut)),
                body=json_body(DepartmentBody),
                errors=WRITE_ERRORS,
                tag="users",
            ),
            "delete": operation(
                "Delete a department nothing belongs to any more (admin)",
                ok=(204, "deleted", None),
                errors=(401, 403, 404, 409),
                tag="users",
            ),
        },
    }
