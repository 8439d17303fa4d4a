"""/api/files: uploads into folders, versions, downloads and attachments.

Uploads are the raw request body, streamed into the blob store chunk by chunk and hashed on
the way; downloads stream back the same way. Neither holds a file in memory. Uploading a name
that exists in the folder adds the next version and keeps the earlier ones.
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import re
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from server.api import state
from server.api.caller import folder_access, reader, writer
from server.api.errors import ApiError, not_found, parse, parse_body, parse_query
from server.api.fields import (
    DocId,
    FileName,
    Limit,
    Notes,
    Offset,
    Reference,
    TagList,
    Timestamp,
)
from server.api.folders import require_folder
from server.auth import Principal
from server.blobs import BlobMissing, BlobTooLarge
from server.persistence import workspace

log = logging.getLogger("tandem.api")

_VERSION_ATTEMPTS = 5
_MEDIA_TYPE = re.compile(r"[\w.+-]+/[\w.+-]+(\s*;\s*[\w.+-]+=(\"[^\"\r\n]*\"|[\w.+-]+))*")
_OCTET_STREAM = "application/octet-stream"
# What HTTP clients send by default for a raw body: says nothing about the file.
_UNINFORMATIVE = (_OCTET_STREAM, "application/x-www-form-urlencoded", "multipart/form-data")


class UploadQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folder_id: int
    name: FileName
    tags: TagList | None = Field(
        None, description="comma-separated; default: the previous version's"
    )
    notes: Notes | None = Field(None, description="default: the previous version's")


class FileQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folder_id: int | None = None
    department: str | None = Field(None, description="files in folders of this department")
    tag: str | None = None
    q: str | None = Field(None, description="text searched in file names")
    doc_id: str | None = Field(None, description="files attached to this document")
    limit: Limit = 100
    offset: Offset = 0


class AttachBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    doc_id: DocId
    task_id: Reference | None = None
    message_id: Reference | None = None


class File(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    folder_id: int
    name: str
    version: int
    content_type: str
    size: int
    sha256: str
    uploaded_by: str | None
    uploaded_at: Timestamp
    tags: TagList
    notes: str | None
    attached_doc: str | None
    attached_task: str | None
    attached_message: str | None
    content_url: str = Field("", description="where to download this version")

    @model_validator(mode="after")
    def _link(self) -> File:
        self.content_url = f"/api/files/{self.id}/content"
        return self


class FileList(BaseModel):
    files: list[File]


class VersionList(BaseModel):
    versions: list[File]


def file_json(row: Any) -> dict[str, Any]:
    return File.model_validate(row).model_dump(mode="json")


def _content_type(header: str | None, name: str) -> str:
    """The uploader's Content-Type, or one guessed from the name."""
    header = (header or "").strip()
    if header and header.split(";")[0].strip().lower() not in _UNINFORMATIVE:
        if len(header) <= 255 and _MEDIA_TYPE.fullmatch(header):
            return header
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or _OCTET_STREAM


def content_disposition(name: str) -> str:
    """`attachment` with the name in RFC 5987 form, plus an ASCII fallback for old clients."""
    fallback = (
        "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\;' else "_" for ch in name).strip()
        or "download"
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _upload_query(request: Request) -> UploadQuery:
    data: dict[str, Any] = {
        key: value for key, value in request.query_params.items() if key not in ("tags", "token")
    }
    if "tags" in request.query_params:  # ?tags=a,b and ?tags=a&tags=b both work
        data["tags"] = [t for v in request.query_params.getlist("tags") for t in v.split(",")]
    return parse(UploadQuery, data)


async def upload_file(request: Request) -> Response:
    """Upload the raw body as a new file, or the next version of a file of that name."""
    caller = await writer(request)
    user = caller.user
    query = _upload_query(request)
    limit = state.settings(request).max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the file is larger than the limit of {limit} bytes")
    engine = state.engine(request)
    async with engine.connect() as conn:
        await require_folder(conn, query.folder_id, field="folder_id")
    await folder_access(request, caller, query.folder_id, "write", field="folder_id")
    content_type = _content_type(request.headers.get("content-type"), query.name)
    blobs = state.blobs(request)
    try:
        blob = await blobs.put(request.stream(), limit)
    except BlobTooLarge:
        raise ApiError(413, f"the file is larger than the limit of {limit} bytes") from None
    try:
        for attempt in range(_VERSION_ATTEMPTS):
            try:
                async with engine.begin() as conn:
                    row = await workspace.create_file_version(
                        conn,
                        folder_id=query.folder_id,
                        name=query.name,
                        content_type=content_type,
                        size=blob.size,
                        sha256=blob.sha256,
                        blob_key=blob.key,
                        uploaded_by=user,
                        tags=query.tags,
                        notes=query.notes,
                    )
                break
            except IntegrityError:
                # Another upload took this version number, or the folder was deleted.
                async with engine.connect() as conn:
                    await require_folder(conn, query.folder_id, field="folder_id")
                if attempt == _VERSION_ATTEMPTS - 1:
                    raise ApiError(
                        409, "too many uploads of this name at once; try again"
                    ) from None
    except BaseException:
        await _drop_unused_blob(request, blob.key)
        raise
    sidecar = getattr(request.state, "sidecar", None)
    if sidecar is not None:
        sidecar.changed()  # a new version may be news to its earlier uploaders
    return JSONResponse(file_json(row), 201, headers={"Location": f"/api/files/{row.id}"})


async def _drop_unused_blob(request: Request, key: str) -> None:
    """After a failed upload: remove its blob unless another version has the same content."""
    with contextlib.suppress(Exception):
        async with state.engine(request).connect() as conn:
            if await workspace.blob_in_use(conn, key):
                return
        await state.blobs(request).delete(key)


async def list_files(request: Request) -> Response:
    """The newest version of each file, filtered by folder, department, tag, name, document;
    only files in folders the caller may open."""
    caller = await reader(request)
    query = parse_query(request, FileQuery)
    async with state.engine(request).connect() as conn:
        rows = await workspace.list_files(
            conn,
            folder_id=query.folder_id,
            department=query.department,
            tag=query.tag,
            text=query.q,
            attached_doc=query.doc_id,
            limit=query.limit,
            offset=query.offset,
        )
    rows = await state.access(request).folders(caller.user, rows, "folder_id")
    return JSONResponse({"files": [file_json(row) for row in rows]})


async def _require_file(request: Request, caller: Principal | None = None) -> Any:
    """The file of the path; with `caller`, 403 unless they may open its folder."""
    file_id: int = request.path_params["file_id"]
    async with state.engine(request).connect() as conn:
        row = await workspace.get_file(conn, file_id)
    if row is None:
        raise not_found("file", file_id)
    if caller is not None:
        await folder_access(request, caller, row.folder_id, "read")
    return row


async def get_file(request: Request) -> Response:
    """One file version's metadata."""
    caller = await reader(request)
    return JSONResponse(file_json(await _require_file(request, caller)))


async def list_versions(request: Request) -> Response:
    """Every version of the same name in the same folder, newest first."""
    caller = await reader(request)
    row = await _require_file(request, caller)
    async with state.engine(request).connect() as conn:
        rows = await workspace.list_file_versions(conn, row.id)
    return JSONResponse({"versions": [file_json(version) for version in rows]})


async def download_file(request: Request) -> Response:
    """The file's bytes, always as an attachment: a browser saves it, never renders it."""
    caller = await reader(request)
    row = await _require_file(request, caller)
    headers = {
        "Content-Type": row.content_type,
        "Content-Length": str(row.size),
        "Content-Disposition": content_disposition(row.name),
        "X-Content-Type-Options": "nosniff",
        # Should a browser render it anyway: no scripts, no same-origin access, no loads.
        "Content-Security-Policy": "sandbox; default-src 'none'",
        "ETag": f'"{row.sha256}"',
        "Cache-Control": "private, no-cache",
    }
    if request.method == "HEAD":
        return Response(headers=headers)
    try:
        chunks = await state.blobs(request).open(row.blob_key)
    except BlobMissing:
        log.error("file %s: blob %s is missing", row.id, row.blob_key)
        raise ApiError(500, f"the content of file {row.id} is missing from storage") from None
    return StreamingResponse(chunks, headers=headers)


async def attach_file(request: Request) -> Response:
    """Attach a file version to a document, optionally to a task or message in it."""
    caller = await writer(request)
    body = await parse_body(request, AttachBody)
    row = await _require_file(request, caller)
    await writer(request, body.doc_id)
    async with state.engine(request).begin() as conn:
        if await workspace.get_document(conn, body.doc_id) is None:
            raise not_found("document", body.doc_id, field="doc_id")
        row = await workspace.attach_file(
            conn,
            row.id,
            doc_id=body.doc_id,
            task_id=body.task_id,
            message_id=body.message_id,
        )
    if row is None:
        raise not_found("file", request.path_params["file_id"])
    return JSONResponse(file_json(row))


routes = [
    Route("/files", upload_file, methods=["POST"]),
    Route("/files", list_files, methods=["GET"]),
    Route("/files/{file_id:int}", get_file, methods=["GET"]),
    Route("/files/{file_id:int}/versions", list_versions, methods=["GET"]),
    Route("/files/{file_id:int}/content", download_file, methods=["GET"]),
    Route("/files/{file_id:int}/attach", attach_file, methods=["POST"]),
]
