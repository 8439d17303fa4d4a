"""/api/docs/{id}/versions, /diff and /export: version history, restore, read-only exports.

A version's number counts the document's versions, 1, 2, 3…, and never changes (see
server/persistence/versions.py).
"Latest" always means the document as it is now: the live room when it is loaded, else what is
stored. Reading and rendering run in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.api import state, storage
from server.api.caller import reader, writer
from server.api.describe import READ_ERRORS, json_body, operation
from server.api.describe import query as query_parameters
from server.api.docs import require_document
from server.api.errors import RETRY_AFTER, ApiError, parse, parse_body
from server.api.fields import Timestamp
from server.export import CONTENT_TYPES, EXTENSIONS, export_document
from server.export import html as html_export
from server.export.common import Attachment, attachment_from_row
from server.persistence import versions, workspace
from server.persistence.availability import unreachable
from server.persistence.versions import RestoreFailed, VersionNotFound
from server.rooms.registry import LoadFailed
from shared.documents import AnyKind, JsonValue
from shared.mirror import TooDeep

_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f]")
# Query strings turn an unescaped "+" into a space: "…T10:00:00 08:00" was "+08:00".
_SPACED_OFFSET = re.compile(r"^(.*\d) (\d{2}(?::?\d{2})?)$")


def _version_name(value: str) -> str:
    if _UNSAFE_NAME.search(value):
        raise ValueError("a version name may not contain control characters")
    return value


VersionName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_version_name),
]


class VersionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: VersionName


class DocVersion(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int = Field(
        description="the version number within the document (1, 2, 3…; never reused)"
    )
    kind: Literal["auto", "named"] = Field(
        description="auto: a compaction snapshot (the newest 10 are kept); named: saved by "
        "someone or by a restore (before and after it), kept for good"
    )
    name: str | None
    created_by: str | None
    created_at: Timestamp
    upto_seq: int = Field(description="the last update-log entry the version includes")


class DocVersionList(BaseModel):
    versions: list[DocVersion] = Field(description="newest first")


class DocVersionDetail(BaseModel):
    version: DocVersion
    document: dict[str, Any] = Field(
        description="the JSON export of the version: kind, schema, the kind's roots, problems"
    )


class RestoreResult(BaseModel):
    restored_from: int
    saved_before: DocVersion = Field(
        description='the named version "before restoring version N": what the restore '
        "replaced; restore it to undo the restore"
    )
    version: DocVersion = Field(description='the named version "restored from version N"')


class DiffQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False)

    from_: int = Field(alias="from", description="the older version number")
    to: int | None = Field(None, description="the newer version number; default: the document now")


class VersionDiff(BaseModel):
    kind: str
    from_: DocVersion = Field(alias="from")
    to: DocVersion | None = Field(description="null: the document as it is now")
    changed: bool
    summary: str
    changes: dict[str, Any] = Field(
        description="board: tasks_added, tasks_removed, tasks_changed ({task_id, title, field, "
        "before, after}); doc: text_changed, lines_added, lines_removed, unified_diff, "
        "text_before, text_after; discussion: messages_added, messages_edited, "
        "messages_deleted, messages_removed, messages_undeleted; all: meta_changed"
    )


class ExportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["md", "markdown", "html", "json"] = "md"
    version: int | None = Field(None, description="a version number; default: the latest")
    at: Timestamp | None = Field(
        None,
        description="ISO 8601 time: the newest version made at or before it (versions are "
        "the resolution: edits between two versions are not kept one by one)",
    )


def version_json(version: versions.Version) -> dict[str, Any]:
    return DocVersion.model_validate(version).model_dump(mode="json")


def _doc_id(request: Request) -> str:
    doc_id: str = request.path_params["doc_id"]
    return doc_id


_RESTORE_UNKNOWN = (
    "the database is unavailable; the restore may be applied to the live document without "
    "being saved as a version; check the document before trying again"
)


def _not_found(doc_id: str, number: int, field: str | None = None) -> ApiError:
    return ApiError(404, f"document {doc_id} has no version {number}", field=field)


async def _recorded_kind(request: Request, doc_id: str) -> tuple[str | None, str | None]:
    """(kind, title) of a live document; 404 when there is none."""
    async with state.engine(request).connect() as conn:
        row = await require_document(conn, doc_id)
    return row.kind, row.title


async def _current(request: Request, doc_id: str) -> bytes:
    registry = state.registry(request)
    try:
        return await versions.current_state(registry.store, registry, doc_id)
    except Exception as exc:
        raise ApiError(503, f"the document store is unavailable: {str(exc)[:100]}") from None


# --- history ------------------------------------------------------------------------------


async def list_versions(request: Request) -> Response:
    """Every stored version of a document, newest first."""
    doc_id = _doc_id(request)
    await reader(request, doc_id)
    await _recorded_kind(request, doc_id)
    found = await versions.list_versions(state.engine(request), doc_id)
    return JSONResponse({"versions": [version_json(v) for v in found]})


async def create_version(request: Request) -> Response:
    """Save the document as it is now (every acknowledged edit) as a named version."""
    doc_id = _doc_id(request)
    user = (await writer(request, doc_id)).user
    body = await parse_body(request, VersionCreate)
    await _recorded_kind(request, doc_id)
    registry = state.registry(request)
    try:
        saved = await versions.create_version(
            state.engine(request),
            registry.store,
            registry.writer,
            doc_id,
            body.name,
            created_by=user,
        )
    except TimeoutError:
        raise ApiError(503, "recent edits are not stored yet; try again") from None
    location = f"/api/docs/{quote(doc_id, safe='')}/versions/{saved.number}"
    state.audit(request).record(doc_id, user, "version", f"{saved.number}: {body.name}")
    return JSONResponse(version_json(saved), 201, headers={"Location": location})


def _json_export(state_bytes: bytes, recorded: str | None) -> tuple[dict[str, Any], AnyKind]:
    doc = versions.doc_from_state(state_bytes)
    kind = versions.kind_of(recorded, doc)
    body, _ = export_document(doc, kind, "json")
    data: dict[str, Any] = json.loads(body)
    return data, kind


async def get_version(request: Request) -> Response:
    """A version's metadata and its content as the JSON read model."""
    doc_id = _doc_id(request)
    await reader(request, doc_id)
    number: int = request.path_params["number"]
    recorded, _ = await _recorded_kind(request, doc_id)
    try:
        found, content = await versions.version_state(state.engine(request), doc_id, number)
    except VersionNotFound:
        raise _not_found(doc_id, number) from None
    document, _ = await asyncio.to_thread(_json_export, content, recorded)
    return JSONResponse({"version": version_json(found), "document": document})


async def restore_version(request: Request) -> Response:
    """Make the document read as version N again, as a new change that every connected
    client receives. What it replaced is saved as the named version "before restoring version
    N" (restoring that one undoes the restore), the result as "restored from version N"."""
    doc_id = _doc_id(request)
    user = (await writer(request, doc_id)).user
    number: int = request.path_params["number"]
    await _recorded_kind(request, doc_id)
    storage.require_storage(request)  # a restore is an edit
    registry = state.registry(request)
    try:
        saved = await versions.restore_version(
            state.engine(request), registry.store, registry, doc_id, number, user=user
        )
    except VersionNotFound:
        raise _not_found(doc_id, number) from None
    except TooDeep as exc:
        raise ApiError(422, f"version {number} cannot be restored: {exc}") from None
    except LoadFailed:
        raise ApiError(503, "the document store is unavailable; try again") from None
    except TimeoutError:
        raise ApiError(503, storage.NOT_STORED, headers=RETRY_AFTER) from None
    except RestoreFailed as exc:
        raise ApiError(500, str(exc)) from None
    except Exception as exc:
        if not unreachable(exc):
            raise
        # It may have failed before the restore or after it (saving the named version).
        raise ApiError(503, _RESTORE_UNKNOWN, headers=RETRY_AFTER) from None
    state.audit(request).record(doc_id, user, "restore", f"version {number}")
    return JSONResponse(
        {
            "restored_from": number,
            "saved_before": version_json(saved.before),
            "version": version_json(saved.restored),
        }
    )


def _summarize(
    before: bytes, after: bytes, recorded: str | None
) -> tuple[AnyKind, dict[str, JsonValue]]:
    old = versions.doc_from_state(before)
    new = versions.doc_from_state(after)
    kind = versions.kind_of(recorded, new)
    return kind, versions.summarize_changes(kind, old, new)


async def diff_versions(request: Request) -> Response:
    """What changed from version `from` to version `to` (default: the document now)."""
    doc_id = _doc_id(request)
    await reader(request, doc_id)
    query = parse(DiffQuery, _query_data(request), prefix="")
    recorded, _ = await _recorded_kind(request, doc_id)
    engine = state.engine(request)
    try:
        older, before = await versions.version_state(engine, doc_id, query.from_)
    except VersionNotFound:
        raise _not_found(doc_id, query.from_, "from") from None
    newer: versions.Version | None = None
    if query.to is not None:
        try:
            newer, after = await versions.version_state(engine, doc_id, query.to)
        except VersionNotFound:
            raise _not_found(doc_id, query.to, "to") from None
    else:
        after = await _current(request, doc_id)
    kind, summary = await asyncio.to_thread(_summarize, before, after, recorded)
    changes = {k: v for k, v in summary.items() if k not in ("kind", "changed", "summary")}
    return JSONResponse(
        {
            "kind": kind,
            "from": version_json(older),
            "to": version_json(newer) if newer is not None else None,
            "changed": summary["changed"],
            "summary": summary["summary"],
            "changes": changes,
        }
    )


# --- exports ------------------------------------------------------------------------------


def _query_data(request: Request) -> dict[str, str]:
    data = {k: v for k, v in request.query_params.items() if v != "" and k != "token"}
    at = data.get("at")
    if at is not None:
        match = _SPACED_OFFSET.match(at)
        if match is not None and "T" in at:
            data["at"] = f"{match.group(1)}+{match.group(2)}"
    return data


def _filename(title: str | None, doc_id: str, number: int | None, extension: str) -> str:
    base = " ".join((title or "").split()) or doc_id
    base = "".join("_" if ch in '/\\:*?"<>|' or ord(ch) < 32 else ch for ch in base)[:100]
    return f"{base}{f' (version {number})' if number is not None else ''}{extension}"


def _inline(name: str) -> str:
    """`inline` with the name in RFC 5987 form, plus an ASCII fallback for old clients."""
    fallback = (
        "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\;' else "_" for ch in name).strip()
        or "export"
    )
    return f"inline; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _render(
    state_bytes: bytes,
    recorded: str | None,
    fmt: str,
    attachments: Sequence[Attachment] = (),
) -> bytes:
    doc = versions.doc_from_state(state_bytes)
    kind = versions.kind_of(recorded, doc)
    body, _ = export_document(doc, kind, fmt, attachments=attachments)
    return body


async def export(request: Request) -> Response:
    """The document, read-only, as Markdown, HTML or JSON: now, at version N, or as it was at
    a time (the newest version made at or before it)."""
    doc_id = _doc_id(request)
    caller = await reader(request, doc_id, share_ok=True)
    if caller.share and not caller.export:
        raise ApiError(403, "this share link does not open exports")
    query = parse(ExportQuery, _query_data(request))
    if query.version is not None and query.at is not None:
        raise ApiError(422, "version: give either version or at, not both", field="version")
    recorded, title = await _recorded_kind(request, doc_id)
    engine = state.engine(request)
    number: int | None = None
    if query.version is not None:
        try:
            _, content = await versions.version_state(engine, doc_id, query.version)
        except VersionNotFound:
            raise _not_found(doc_id, query.version, "version") from None
        number = query.version
    elif query.at is not None:
        try:
            chosen, content = await versions.state_at(engine, doc_id, query.at)
        except VersionNotFound:
            raise ApiError(
                404, f"document {doc_id} has no version at or before {query.at}", field="at"
            ) from None
        number = chosen.number
    else:
        content = await _current(request, doc_id)
    fmt: Literal["md", "html", "json"] = (
        "html" if query.format == "html" else "json" if query.format == "json" else "md"
    )
    # The files attached now, for a version as well: attachments have no history.
    async with engine.connect() as conn:
        attached = [attachment_from_row(r) for r in await workspace.list_attachments(conn, doc_id)]
    body = await asyncio.to_thread(_render, content, recorded, fmt, attached)
    headers = {
        "Content-Disposition": _inline(_filename(title, doc_id, number, EXTENSIONS[fmt])),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-cache",
    }
    if number is not None:
        headers["X-Tandem-Version"] = str(number)
    if fmt == "html":
        # The page carries the same policy in a meta tag; the header also covers a browser
        # that renders it from a download. No scripts, no remote loads but images; downloads
        # allowed, or a sandboxed page could not follow its attachments' links.
        headers["Content-Security-Policy"] = f"{html_export.CSP}; sandbox allow-downloads"
    state.audit(request).record(
        doc_id, caller.user, "export", fmt if number is None else f"{fmt}, version {number}"
    )
    return Response(body, headers=headers, media_type=CONTENT_TYPES[fmt])


routes = [
    Route("/docs/{doc_id}/versions", list_versions, methods=["GET"]),
    Route("/docs/{doc_id}/versions", create_version, methods=["POST"]),
    Route("/docs/{doc_id}/versions/{number:int}", get_version, methods=["GET"]),
    Route("/docs/{doc_id}/versions/{number:int}/restore", restore_version, methods=["POST"]),
    Route("/docs/{doc_id}/diff", diff_versions, methods=["GET"]),
    Route("/docs/{doc_id}/export", export, methods=["GET"]),
]

OPENAPI_INPUTS: list[type[BaseModel]] = [VersionCreate]
OPENAPI_OUTPUTS: list[type[BaseModel]] = [
    DocVersion,
    DocVersionList,
    DocVersionDetail,
    RestoreResult,
    VersionDiff,
]


def openapi_paths() -> dict[str, dict[str, Any]]:
    """Version history, restore, change summaries and read-only exports. A version number is
    unique across documents."""
    exports: dict[str, Any] = {
        media: {} for media in ("text/markdown", "text/html", "application/json")
    }
    return {
        "/api/docs/{doc_id}/versions": {
            "get": operation(
                "A document's versions, newest first: named ones and the newest automatic ones",
                ok=(200, "the versions", json_body(DocVersionList)),
                errors=READ_ERRORS,
                tag="versions",
            ),
            "post": operation(
                "Save the document as it is now (every acknowledged edit) as a named version",
                ok=(201, "the version", json_body(DocVersion)),
                body=json_body(VersionCreate),
                errors=(401, 403, 404, 413, 422),
                tag="versions",
            ),
        },
        "/api/docs/{doc_id}/versions/{number}": {
            "get": operation(
                "A version's metadata and content (the JSON read model)",
                ok=(200, "the version", json_body(DocVersionDetail)),
                errors=READ_ERRORS,
                tag="versions",
            ),
        },
        "/api/docs/{doc_id}/versions/{number}/restore": {
            "post": operation(
                'First save the current state as the named version "before restoring '
                'version N" (restoring that one undoes this), then make the document read '
                "as this version again, as a new change every connected client receives; "
                'saved as the named version "restored from version N"',
                ok=(200, "restored", json_body(RestoreResult)),
                errors=(401, 403, 404, 422),
                tag="versions",
            ),
        },
        "/api/docs/{doc_id}/diff": {
            "get": operation(
                "What changed between two versions (to: default the document now)",
                ok=(200, "the changes", json_body(VersionDiff)),
                query=query_parameters(DiffQuery),
                errors=(401, 403, 404, 422),
                tag="versions",
            ),
        },
        "/api/docs/{doc_id}/export": {
            "get": operation(
                "Export read-only as Markdown, HTML or JSON: now, at a version, or as it was "
                "at a time (the newest version made at or before it)",
                ok=(200, "the export, shown inline", exports),
                query=query_parameters(ExportQuery),
                errors=(401, 403, 404, 422),
                tag="versions",
            ),
        },
    }
