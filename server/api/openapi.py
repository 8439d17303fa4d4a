"""GET /api/openapi.json: an OpenAPI 3.1 description of the REST API.

Built from the same pydantic models the handlers validate with, so the schemas cannot drift
from the code; each operation is listed here once, and a test checks that every route is.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server import __version__
from server.api import (
    access,
    activity,
    auth,
    calendar,
    docs,
    files,
    folders,
    live,
    messages,
    notifications,
    preferences,
    progress,
    share,
    task_list,
    tasks,
    text,
    updates,
    users,
    versions,
    watches,
    webhooks,
)
from server.api.describe import ERRORS as _ERRORS
from server.api.describe import REF as _REF
from server.api.describe import Error
from server.api.describe import json_body as _json
from server.api.describe import operation as _operation
from server.api.describe import query as _query
from server.api.fields import DOC_ID_RULE

# Route modules that describe their own paths and models: each has `openapi_paths()` and the
# lists OPENAPI_INPUTS and OPENAPI_OUTPUTS of its pydantic models.
DESCRIBED: tuple[Any, ...] = (
    notifications,
    preferences,
    watches,
    webhooks,
    task_list,
    calendar,
    progress,
)



_INPUTS: list[type[BaseModel]] = [
    docs.DocCreate,
    docs.DocUpdate,
    folders.FolderCreate,
    folders.FolderUpdate,
    files.AttachBody,
    tasks.TaskCreate,
    tasks.TaskUpdate,
    tasks.SubtaskCreate,
    tasks.SubtaskUpdate,
    messages.MessageCreate,
    text.TextBody,
    updates.UpdateBody,
    versions.VersionCreate,
    auth.LoginBody,
    access.Grants,
    share.ShareCreate,
    users.UserCreate,
    users.UserUpdate,
    users.DepartmentBody,
]
_OUTPUTS: list[type[BaseModel]] = [
    docs.Document,
    docs.DocumentList,
    folders.Folder,
    folders.FolderList,
    files.File,
    files.FileList,
    files.VersionList,
    tasks.Task,
    messages.Message,
    live.Content,
    updates.UpdateResult,
    versions.DocVersion,
    versions.DocVersionList,
    versions.DocVersionDetail,
    versions.RestoreResult,
    versions.VersionDiff,
    auth.User,
    auth.LoginResult,
    share.ShareCreated,
    share.ShareLinkList,
    activity.Activity,
    users.UserList,
    users.DepartmentOut,
    users.DepartmentList,
    Error,
]

def _paths() -> dict[str, dict[str, Any]]:
    read, write = (401, 403, 404), (401, 403, 404, 409, 413, 422)
    return {
        "/api/docs": {
            "post": _operation(
                "Create a board, document or discussion",
                ok=(201, "created", _json(docs.Document)),
                body=_json(docs.DocCreate),
                errors=(*write, 429),
                tag="docs",
            ),
            "get": _operation(
                "List documents (and with include_files=1 files) by kind, folder, "
                "department, tag, title text",
                ok=(200, "the matching documents", _json(docs.DocumentList)),
                query=_query(docs.DocQuery),
                errors=(401, 403, 422),
                tag="docs",
            ),
        },
        "/api/docs/{doc_id}": {
            "get": _operation(
                "A document's metadata",
                ok=(200, "the document", _json(docs.Document)),
                errors=read,
                tag="docs",
            ),
            "patch": _operation(
                "Change title, tags, notes, department; move with folder_id",
                ok=(200, "the changed document", _json(docs.Document)),
                body=_json(docs.DocUpdate),
                errors=write,
                tag="docs",
            ),
            "delete": _operation(
                "Delete a document (soft: its history stays stored); its open WebSocket "
                "connections are closed with 4404 and new ones refused",
                ok=(204, "deleted", None),
                errors=read,
                tag="docs",
            ),
        },
        "/api/folders": {
            "post": _operation(
                "Create a folder",
                ok=(201, "created", _json(folders.Folder)),
                body=_json(folders.FolderCreate),
                errors=(*write, 429),
                tag="folders",
            ),
            "get": _operation(
                "List folders",
                ok=(200, "the folders", _json(folders.FolderList)),
                query=_query(folders.FolderQuery),
                errors=(401, 403, 422),
                tag="folders",
            ),
        },
        "/api/folders/{folder_id}": {
            "get": _operation(
                "A folder",
                ok=(200, "the folder", _json(folders.Folder)),
                errors=read,
                tag="folders",
            ),
            "patch": _operation(
                "Rename, move (parent_id) or re-assign a folder",
                ok=(200, "the changed folder", _json(folders.Folder)),
                body=_json(folders.FolderUpdate),
                errors=write,
                tag="folders",
            ),
            "delete": _operation(
                "Delete an empty folder",
                ok=(204, "deleted", None),
                errors=(401, 403, 404, 409),
                tag="folders",
            ),
        },
        "/api/files": {
            "post": _operation(
                "Upload a file (the raw body) into a folder; the same name again adds a version",
                ok=(201, "the stored version", _json(files.File)),
                body={"application/octet-stream": {}, "*/*": {}},
                query=_query(files.UploadQuery),
                errors=write,
                tag="files",
            ),
            "get": _operation(
                "List files (newest version of each)",
                ok=(200, "the matching files", _json(files.FileList)),
                query=_query(files.FileQuery),
                errors=(401, 403, 422),
                tag="files",
            ),
        },
        "/api/files/{file_id}": {
            "get": _operation(
                "A file version's metadata",
                ok=(200, "the file", _json(files.File)),
                errors=read,
                tag="files",
            ),
        },
        "/api/files/{file_id}/versions": {
            "get": _operation(
                "Every version of a file, newest first",
                ok=(200, "the versions", _json(files.VersionList)),
                errors=read,
                tag="files",
            ),
        },
        "/api/files/{file_id}/content": {
            "get": _operation(
                "Download a file version (always as an attachment)",
                ok=(200, "the bytes, with the uploaded Content-Type", {"*/*": {}}),
                errors=read,
                tag="files",
            ),
        },
        "/api/files/{file_id}/attach": {
            "post": _operation(
                "Attach a file version to a document, task or message",
                ok=(200, "the file", _json(files.File)),
                body=_json(files.AttachBody),
                errors=write,
                tag="files",
            ),
        },
        **_content_paths(read, write),
        **_version_paths(read, write),
        **_user_paths(read, write),
        **_access_paths(read, write),
        **{path: item for module in DESCRIBED for path, item in module.openapi_paths().items()},
        "/api/openapi.json": {
            "get": {
                "summary": "This description",
                "tags": ["meta"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }


def _content_paths(read: tuple[int, ...], write: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Reading and changing a document's content (server/api/live.py, tasks.py, messages.py,
    text.py, updates.py). A task operation on a document that is not a board (text outside a
    `doc`, a message outside a discussion) is 409."""
    task = _json(tasks.Task)
    return {
        "/api/docs/{doc_id}/content": {
            "get": _operation(
                "The live content of a board, doc or discussion as JSON",
                ok=(200, "the content, and what in it does not fit", _json(live.Content)),
                errors=(401, 403, 404, 409),
                tag="content",
            ),
        },
        "/api/docs/{doc_id}/updates": {
            "post": _operation(
                "Apply a raw Yjs update (octet-stream, or JSON with base64); a bad one is 422 "
                "and nothing is stored",
                ok=(200, "applied", _json(updates.UpdateResult)),
                body={"application/octet-stream": {}, **_json(updates.UpdateBody)},
                errors=write,
                tag="content",
            ),
        },
        "/api/docs/{doc_id}/text": {
            "put": _operation(
                "Replace a doc's rich text with Markdown or plain text",
                ok=(200, "the new content", _json(live.Content)),
                body={
                    "text/markdown": {"schema": {"type": "string"}},
                    "text/plain": {"schema": {"type": "string"}},
                    **_json(text.TextBody),
                },
                errors=write,
                tag="content",
            ),
        },
        "/api/docs/{doc_id}/messages": {
            "post": _operation(
                "Post a message to a discussion as the caller",
                ok=(201, "the message", _json(messages.Message)),
                body=_json(messages.MessageCreate),
                errors=write,
                tag="content",
            ),
        },
        "/api/docs/{doc_id}/tasks": {
            "post": _operation(
                "Add a task to a board",
                ok=(201, "the task", task),
                body=_json(tasks.TaskCreate),
                errors=write,
                tag="tasks",
            ),
        },
        "/api/docs/{doc_id}/tasks/{task_id}": {
            "get": _operation(
                "A task", ok=(200, "the task", task), errors=(401, 403, 404, 409), tag="tasks"
            ),
            "patch": _operation(
                "Change a task: fields, status (a move), order, assignee, due, priority",
                ok=(200, "the changed task", task),
                body=_json(tasks.TaskUpdate),
                errors=write,
                tag="tasks",
            ),
            "delete": _operation(
                "Delete a task", ok=(204, "deleted", None), errors=write, tag="tasks"
            ),
        },
        "/api/docs/{doc_id}/tasks/{task_id}/complete": {
            "post": _operation(
                "Mark a task done",
                ok=(200, "the task", task),
                errors=(401, 403, 404, 409),
                tag="tasks",
            ),
        },
        "/api/docs/{doc_id}/tasks/{task_id}/subtasks": {
            "post": _operation(
                "Add a subtask",
                ok=(201, "the task with its new subtask last", task),
                body=_json(tasks.SubtaskCreate),
                errors=write,
                tag="tasks",
            ),
        },
        "/api/docs/{doc_id}/tasks/{task_id}/subtasks/{subtask_id}": {
            "patch": _operation(
                "Tick or untick a subtask",
                ok=(200, "the task", task),
                body=_json(tasks.SubtaskUpdate),
                errors=write,
                tag="tasks",
            ),
        },
    }


def _version_paths(read: tuple[int, ...], write: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Version history, restore, change summaries and read-only exports
    (server/api/versions.py). A version number is unique across documents."""
    exports: dict[str, Any] = {
        media: {} for media in ("text/markdown", "text/html", "application/json")
    }
    return {
        "/api/docs/{doc_id}/versions": {
            "get": _operation(
                "A document's versions, newest first: named ones and the newest automatic ones",
                ok=(200, "the versions", _json(versions.DocVersionList)),
                errors=read,
                tag="versions",
            ),
            "post": _operation(
                "Save the document as it is now (every acknowledged edit) as a named version",
                ok=(201, "the version", _json(versions.DocVersion)),
                body=_json(versions.VersionCreate),
                errors=(401, 403, 404, 413, 422),
                tag="versions",
            ),
        },
        "/api/docs/{doc_id}/versions/{number}": {
            "get": _operation(
                "A version's metadata and content (the JSON read model)",
                ok=(200, "the version", _json(versions.DocVersionDetail)),
                errors=read,
                tag="versions",
            ),
        },
        "/api/docs/{doc_id}/versions/{number}/restore": {
            "post": _operation(
                'First save the current state as the named version "before restoring '
                'version N" (restoring that one undoes this), then make the document read '
                "as this version again, as a new change every connected client receives; "
                'saved as the named version "restored from version N"',
                ok=(200, "restored", _json(versions.RestoreResult)),
                errors=(401, 403, 404, 422),
                tag="versions",
            ),
        },
        "/api/docs/{doc_id}/diff": {
            "get": _operation(
                "What changed between two versions (to: default the document now)",
                ok=(200, "the changes", _json(versions.VersionDiff)),
                query=_query(versions.DiffQuery),
                errors=(401, 403, 404, 422),
                tag="versions",
            ),
        },
        "/api/docs/{doc_id}/export": {
            "get": _operation(
                "Export read-only as Markdown, HTML or JSON: now, at a version, or as it was "
                "at a time (the newest version made at or before it)",
                ok=(200, "the export, shown inline", exports),
                query=_query(versions.ExportQuery),
                errors=(401, 403, 404, 422),
                tag="versions",
            ),
        },
    }


def _user_paths(read: tuple[int, ...], write: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Sign-in, users and departments (server/api/auth.py, users.py). Changing users and
    departments is for admins (403 otherwise)."""
    login = _operation(
        "Sign in with a user id (or e-mail address) and password; every failure is the same "
        '401 "wrong user or password"; 503 without TANDEM_SECRET',
        ok=(200, "a token for the user", _json(auth.LoginResult)),
        body=_json(auth.LoginBody),
        errors=(401, 422, 429),
        tag="users",
    )
    login["security"] = []
    user = _json(auth.User)
    return {
        "/api/auth/login": {"post": login},
        "/api/auth/logout": {
            "post": _operation(
                "Revoke the token this request carries",
                ok=(204, "signed out", None),
                errors=(401, 422),
                tag="users",
            ),
        },
        "/api/me": {
            "get": _operation(
                "The caller (the local user, an admin, when there is no sign-in)",
                ok=(200, "the caller", user),
                errors=(401,),
                tag="users",
            ),
        },
        "/api/users": {
            "get": _operation(
                "List users, optionally of one department",
                ok=(200, "the users", _json(users.UserList)),
                query=_query(users.UserQuery),
                errors=(401, 403, 422),
                tag="users",
            ),
            "post": _operation(
                "Add a user (admin)",
                ok=(201, "created", user),
                body=_json(users.UserCreate),
                errors=write,
                tag="users",
            ),
        },
        "/api/users/{user_id}": {
            "get": _operation("A user", ok=(200, "the user", user), errors=read, tag="users"),
            "patch": _operation(
                "Change a user's display name, e-mail, department, role, active flag or "
                "password (admin); leaving no active admin is 409",
                ok=(200, "the changed user", user),
                body=_json(users.UserUpdate),
                errors=write,
                tag="users",
            ),
        },
        "/api/departments": {
            "get": _operation(
                "List departments with their number of users",
                ok=(200, "the departments", _json(users.DepartmentList)),
                errors=(401, 403),
                tag="users",
            ),
            "post": _operation(
                "Add a department (admin)",
                ok=(201, "created", _json(users.DepartmentOut)),
                body=_json(users.DepartmentBody),
                errors=write,
                tag="users",
            ),
        },
        "/api/departments/{department_id}": {
            "patch": _operation(
                "Rename a department; its folders and documents follow (admin)",
                ok=(200, "the department", _json(users.DepartmentOut)),
                body=_json(users.DepartmentBody),
                errors=write,
                tag="users",
            ),
            "delete": _operation(
                "Delete a department nothing belongs to any more (admin)",
                ok=(204, "deleted", None),
                errors=(401, 403, 404, 409),
                tag="users",
            ),
        },
    }


def _access_paths(read: tuple[int, ...], write: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Access rules, share links and the activity log (server/api/access.py, share.py,
    activity.py)."""
    grants = _json(access.Grants)

    def rules(what: str) -> dict[str, Any]:
        return {
            "get": _operation(
                f"The grants of a {what} (admins, and leads of the owning department)",
                ok=(200, "its grants", grants),
                errors=read,
                tag="access",
            ),
            "put": _operation(
                f"Replace the grants of a {what}; open connections that lose access are "
                "closed (4403) or made read-only at once",
                ok=(200, "the grants now", grants),
                body=grants,
                errors=write,
                tag="access",
            ),
        }

    return {
        "/api/folders/{folder_id}/access": rules("folder (inherited beneath it)"),
        "/api/docs/{doc_id}/access": rules("document"),
        "/api/docs/{doc_id}/share": {
            "post": _operation(
                "Create a read-only, expiring, revocable link to the document (writers)",
                ok=(201, "the link and its token (shown once)", _json(share.ShareCreated)),
                body=_json(share.ShareCreate),
                errors=write,
                tag="access",
            ),
            "get": _operation(
                "The document's share links (writers)",
                ok=(200, "its links", _json(share.ShareLinkList)),
                errors=read,
                tag="access",
            ),
        },
        "/api/docs/{doc_id}/share/{share_id}": {
            "delete": _operation(
                "Revoke a share link: its token is refused and its connections close at once",
                ok=(204, "revoked", None),
                errors=read,
                tag="access",
            ),
        },
        "/api/docs/{doc_id}/activity": {
            "get": _operation(
                "Who connected, edited (per user and hour), exported, shared or restored "
                "(admins, and leads of the owning department)",
                ok=(200, "the activity", _json(activity.Activity)),
                errors=read,
                tag="access",
            ),
        },
    }


_STRING_PARAMETERS = frozenset({"doc_id", "task_id", "subtask_id", "user_id", "share_id"})


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string"} if name in _STRING_PARAMETERS else {"type": "integer"},
            **({"description": DOC_ID_RULE} if name == "doc_id" else {}),
        }
        for name in re.findall(r"\{(\w+)\}", path)
    ]


@functools.cache
def document() -> dict[str, Any]:
    _, definitions = models_json_schema(
        [(model, "validation") for model in _INPUTS]
        + [(model, "validation") for module in DESCRIBED for model in module.OPENAPI_INPUTS]
        + [(model, "serialization") for model in _OUTPUTS]
        + [(model, "serialization") for module in DESCRIBED for model in module.OPENAPI_OUTPUTS],
        ref_template=_REF,
    )
    paths = _paths()
    for path, item in paths.items():
        parameters = _path_parameters(path)
        if parameters:
            item["parameters"] = parameters
        if "{doc_id}" in path:
            # Every such route refuses a malformed id with 422 (server/api/doc_ids.py).
            for method, operation in item.items():
                if method == "parameters":
                    continue
                operation["responses"].setdefault(
                    "422", {"description": _ERRORS[422], "content": _json(Error)}
                )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tandem",
            "version": __version__,
            "description": "Boards, documents, discussions, folders and files of a Tandem "
            "workspace. Document content itself is edited over the WebSocket "
            "(`/ws/{doc_id}`, y-protocols).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a token from `tandem token`; "
                    "not needed when the server has no TANDEM_SECRET",
                }
            },
        },
    }


async def openapi(request: Request) -> Response:
    """This API's OpenAPI description."""
    return JSONResponse(document())


routes = [Route("/openapi.json", openapi, methods=["GET"])]
