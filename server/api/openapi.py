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
from server.api import docs, files, folders

_REF = "#/components/schemas/{model}"


class ErrorBody(BaseModel):
    status: int
    message: str
    field: str | None = None
    details: list[dict[str, str]] | None = None


class Error(BaseModel):
    """Every error response: `{"error": {...}}`."""

    error: ErrorBody


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

_ERRORS = {
    401: "missing or invalid token",
    403: "the token does not allow this",
    404: "no such document, folder or file",
    409: "conflicts with the current state",
    413: "the body is too large",
    422: "invalid input; `field` names the first problem",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model)}}


def _parameter_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: an absent parameter is its null, so drop the null branch."""
    schema = {k: v for k, v in prop.items() if k not in ("title", "description")}
    options = [o for o in schema.pop("anyOf", []) if o != {"type": "null"}]
    if len(options) == 1:
        schema.update(options[0])
    elif options:
        schema["anyOf"] = options
    if schema.get("default", 0) is None:
        del schema["default"]
    return schema


def _query(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=_REF)
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": _parameter_schema(prop),
            **({"description": prop["description"]} if "description" in prop else {}),
        }
        for name, prop in schema["properties"].items()
    ]


def _operation(
    summary: str,
    *,
    ok: tuple[int, str, dict[str, Any] | None],
    body: dict[str, Any] | None = None,
    query: list[dict[str, Any]] | None = None,
    errors: tuple[int, ...] = (401, 403),
    tag: str,
) -> dict[str, Any]:
    status, description, content = ok
    responses: dict[str, Any] = {str(status): {"description": description}}
    if content is not None:
        responses[str(status)]["content"] = content
    for code in errors:
        responses[str(code)] = {"description": _ERRORS[code], "content": _json(Error)}
    operation: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if query:
        operation["parameters"] = query
    if body is not None:
        operation["requestBody"] = {"required": True, "content": body}
    return operation


def _paths() -> dict[str, dict[str, Any]]:
    read, write = (401, 403, 404), (401, 403, 404, 409, 413, 422)
    return {
        "/api/docs": {
            "post": _operation(
                "Create a board, document or discussion",
                ok=(201, "created", _json(docs.Document)),
                body=_json(docs.DocCreate),
                errors=write,
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
                "Delete a document (soft: its history stays stored)",
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
                errors=write,
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


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string"} if name == "doc_id" else {"type": "integer"},
        }
        for name in re.findall(r"\{(\w+)\}", path)
    ]


@functools.cache
def document() -> dict[str, Any]:
    _, definitions = models_json_schema(
        [(model, "validation") for model in _INPUTS]
        + [(model, "serialization") for model in _OUTPUTS],
        ref_template=_REF,
    )
    paths = _paths()
    for path, item in paths.items():
        parameters = _path_parameters(path)
        if parameters:
            item["parameters"] = parameters
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
