"""GET /api/openapi.json: an OpenAPI 3.1 description of the REST API.

Built from the same pydantic models the handlers validate with, so the schemas cannot drift
from the code; each operation is listed once (here, or in the route module serving it: see
DESCRIBED), and a test checks that every route is.
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
from server.api.describe import READ_ERRORS, WRITE_ERRORS, Error
from server.api.describe import REF as _REF
from server.api.describe import json_body as _json
from server.api.describe import operation as _operation
from server.api.describe import query as _query
from server.api.fields import DOC_ID_RULE

# Route modules that describe their own paths and models: each has `openapi_paths()` and the
# lists OPENAPI_INPUTS and OPENAPI_OUTPUTS of its pydantic models.
DESCRIBED: tuple[Any, ...] = (
    live,
    updates,
    text,
    messages,
    tasks,
    versions,
    auth,
    users,
    access,
    share,
    activity,
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
]
_OUTPUTS: list[type[BaseModel]] = [
    docs.Document,
    docs.DocumentList,
    folders.Folder,
    folders.FolderList,
    files.File,
    files.FileList,
    files.VersionList,
    Error,
]


def _paths() -> dict[str, dict[str, Any]]:
    return {
        "/api/docs": {
            "post": _operation(
                "Create a board, document or discussion",
                ok=(201, "created", _json(docs.Document)),
                body=_json(docs.DocCreate),
                errors=(*WRITE_ERRORS, 429),
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
                errors=READ_ERRORS,
                tag="docs",
            ),
            "patch": _operation(
                "Change title, tags, notes, department; move with folder_id",
                ok=(200, "the changed document", _json(docs.Document)),
                body=_json(docs.DocUpdate),
                errors=WRITE_ERRORS,
                tag="docs",
            ),
            "delete": _operation(
                "Delete a document (soft: its history stays stored); its open WebSocket "
                "connections are closed with 4404 and new ones refused",
                ok=(204, "deleted", None),
                errors=READ_ERRORS,
                tag="docs",
            ),
        },
        "/api/folders": {
            "post": _operation(
                "Create a folder",
                ok=(201, "created", _json(folders.Folder)),
                body=_json(folders.FolderCreate),
                errors=(*WRITE_ERRORS, 429),
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
                errors=READ_ERRORS,
                tag="folders",
            ),
            "patch": _operation(
                "Rename, move (parent_id) or re-assign a folder",
                ok=(200, "the changed folder", _json(folders.Folder)),
                body=_json(folders.FolderUpdate),
                errors=WRITE_ERRORS,
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
                errors=WRITE_ERRORS,
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
                errors=READ_ERRORS,
                tag="files",
            ),
        },
        "/api/files/{file_id}/versions": {
            "get": _operation(
                "Every version of a file, newest first",
                ok=(200, "the versions", _json(files.VersionList)),
                errors=READ_ERRORS,
                tag="files",
            ),
        },
        "/api/files/{file_id}/content": {
            "get": _operation(
                "Download a file version (always as an attachment)",
                ok=(200, "the bytes, with the uploaded Content-Type", {"*/*": {}}),
                errors=READ_ERRORS,
                tag="files",
            ),
        },
        "/api/files/{file_id}/attach": {
            "post": _operation(
                "Attach a file version to a document, task or message",
                ok=(200, "the file", _json(files.File)),
                body=_json(files.AttachBody),
                errors=WRITE_ERRORS,
                tag="files",
            ),
        },
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
