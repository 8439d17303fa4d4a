"""/api/docs/{id}/...: reading and changing a document's content over REST.

Every change runs in the document's live room, in one transaction (`Room.edit`, or
`Room.apply_update` for raw updates), with origin "rest" and the caller as author. Connected
clients receive it at once, the update log stores it like a client's edit, and the handler
answers once it is committed. The document's row records who changed it last (updated_by).

Each operation checks, before it writes anything, that the document and the task exist and
that the document is of the kind the operation needs. A task operation on a document that is
not a board (or text on something other than a `doc`, or a message outside a discussion) is
409 Conflict: the request is well formed, but does not fit the document as it is.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

from pycrdt import Array, Doc, Map, get_update
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.api import state, storage
from server.api.caller import reader, writer
from server.api.docs import require_document
from server.api.errors import ApiError, not_found, parse, parse_body
from server.api.fields import Department, Notes, TagList, Title
from server.export import read_model
from server.origin import Origin
from server.persistence import workspace
from server.persistence.availability import unreachable
from server.rooms.registry import LoadFailed
from server.rooms.room import RejectedFrame, Room
from shared import board, discussion, richtext
from shared.documents import (
    Kind,
    call_with_deep_stack,
    detect_kind,
    is_panic,
    timestamp_text,
)
from shared.protocol import read_varuint

log = logging.getLogger("tandem.api")

T = TypeVar("T")

MAX_TEXT_BYTES = 4 * 1024 * 1024
MAX_SUBTASKS = 200
MAX_WATCHERS = 200
MAX_MENTIONS = 100

# -- request models ----------------------------------------------------------------------------


def _timestamp(value: str) -> str:
    return timestamp_text(value)


def _subtask_items(value: object) -> object:
    """Subtasks may be given as titles: "a" is {"title": "a"}."""
    if isinstance(value, list):
        return [{"title": item} if isinstance(item, str) else item for item in value]
    return value


def _no_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("may not be blank")
    return value


Status = Literal["todo", "in_progress", "done"]
Priority = Literal["low", "normal", "high", "urgent"]
UserName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
Due = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
    AfterValidator(_timestamp),
]
Order = Annotated[float, Field(allow_inf_nan=False)]
Reference = Annotated[str, StringConstraints(min_length=1, max_length=128)]
MessageBody = Annotated[
    str, StringConstraints(min_length=1, max_length=20_000), AfterValidator(_no_blank)
]


class SubtaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title
    done: bool = False


SubtaskList = Annotated[
    list[SubtaskCreate], BeforeValidator(_subtask_items), Field(max_length=MAX_SUBTASKS)
]


class TaskCreate(BaseModel):
    """A new task; it goes to the end of its status column unless `order` is given."""

    model_config = ConfigDict(extra="forbid")

    title: Title
    description: Notes = ""
    status: Status = "todo"
    assignee: UserName | None = None
    department: Department | None = None
    due: Due | None = Field(None, description="ISO 8601 date or date and time")
    priority: Priority = "normal"
    tags: TagList = Field(default_factory=list)
    subtasks: SubtaskList = Field(
        default_factory=list, description="titles, or objects {title, done}"
    )
    watchers: list[UserName] = Field(default_factory=list, max_length=MAX_WATCHERS)
    order: Order | None = None


class TaskUpdate(BaseModel):
    """Only the fields given change. A new `status` moves the task to the end of that column
    (or to `order`); `assignee`, `department` and `due` may be null to clear them;
    `subtasks` replaces the list."""

    model_config = ConfigDict(extra="forbid")

    title: Title | None = None
    description: Notes | None = None
    status: Status | None = None
    order: Order | None = None
    assignee: UserName | None = None
    department: Department | None = None
    due: Due | None = None
    priority: Priority | None = None
    tags: TagList | None = None
    subtasks: SubtaskList | None = None
    watchers: list[UserName] | None = Field(None, max_length=MAX_WATCHERS)


_CLEARABLE = frozenset({"assignee", "department", "due"})


class SubtaskUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    done: bool


class AnchorIn(BaseModel):
    """Where in the subject document a comment points: Yjs relative positions (their JSON
    form, or the binary encoding as base64 text) and the text they covered."""

    model_config = ConfigDict(extra="forbid")

    start: dict[str, Any] | str
    end: dict[str, Any] | str
    quote: Annotated[str, StringConstraints(max_length=2000)] | None = None


class MessageCreate(BaseModel):
    """A message by the caller; `reply_to` must be a message of this discussion."""

    model_config = ConfigDict(extra="forbid")

    body: MessageBody
    reply_to: Reference | None = None
    mentions: list[UserName] = Field(default_factory=list, max_length=MAX_MENTIONS)
    anchor: AnchorIn | None = None


class TextBody(BaseModel):
    """The new text of a `doc`: Markdown (headings, lists, task lists, tables, quotes, code,
    bold, italic, strike, links) or plain text (blank lines separate paragraphs)."""

    model_config = ConfigDict(extra="forbid")

    text: Annotated[str, StringConstraints(max_length=MAX_TEXT_BYTES)]
    format: Literal["markdown", "plain"] = "markdown"


class UpdateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    update: str = Field(description="a Yjs update (v1 encoding), base64")


# -- response models ---------------------------------------------------------------------------


class Subtask(BaseModel):
    id: str
    title: str
    done: bool


class Task(BaseModel):
    id: str
    title: str
    description: str
    status: str
    assignee: str | None
    department: str | None
    due: str | None
    priority: str
    tags: list[str]
    subtasks: list[Subtask]
    order: float | None
    watchers: list[str]
    created_by: str | None
    created_at: str | None


class Message(BaseModel):
    id: str
    author: str
    body: str
    created_at: str | None
    reply_to: str | None
    mentions: list[str]
    anchor: dict[str, Any] | None
    edited_at: str | None
    deleted: bool


class ContentProblem(BaseModel):
    path: str
    message: str


class Content(BaseModel):
    """The document's live content as its kind's JSON view (shared/schema), and what in it
    does not fit the schema (skipped in this view)."""

    id: str
    kind: str
    content: dict[str, Any]
    problems: list[ContentProblem]


class UpdateResult(BaseModel):
    changed: bool = Field(description="false when the document had everything already")
    state_vector: str = Field(description="the document's state vector afterwards, base64")


# -- helpers -----------------------------------------------------------------------------------


async def _document(request: Request, doc_id: str) -> Any:
    async with state.engine(request).connect() as conn:
        return await require_document(conn, doc_id)


@contextlib.asynccontextmanager
async def _room(request: Request, doc_id: str) -> AsyncIterator[Room]:
    registry = state.registry(request)
    try:
        room = await registry.acquire(doc_id)
    except LoadFailed:
        raise ApiError(503, "the document store is unavailable; try again") from None
    try:
        yield room
    finally:
        registry.release(doc_id)


def _kind(row: Any, room: Room) -> Kind | None:
    kind: Kind | None = row.kind if row.kind in ("board", "doc", "discussion") else None
    return kind or detect_kind(room.doc)


def _require_kind(row: Any, room: Room, expected: Kind) -> None:
    kind = _kind(row, room)
    if kind != expected:
        what = f"a {kind}" if kind is not None else "of no known kind"
        raise ApiError(409, f"document {row.id} is {what}, not a {expected}")


def _edit(request: Request, room: Room, user: str, change: Callable[[Doc[Any]], T]) -> T:
    """`change` as one server-side edit by `user`. Changes check what they need before they
    write, so a refusal (ApiError) leaves the document untouched; so does a database that
    cannot store the edit now (503)."""
    storage.require_storage(request)
    try:
        return room.edit(Origin("rest", user), change)
    except KeyError as exc:
        raise not_found("item", exc.args[0] if exc.args else "?") from None
    except ValueError as exc:  # the document holds something the change cannot work on
        raise ApiError(409, str(exc)) from None


async def _saved(request: Request, doc_id: str, user: str) -> None:
    """Answer once the edit is committed (503 if it is not in time), and record the author on
    the document's row."""
    await storage.stored(request, doc_id)
    try:
        async with state.engine(request).begin() as conn:
            await workspace.touch_document(conn, doc_id, updated_by=user)
    except Exception as exc:
        if not unreachable(exc):
            raise
        # The edit is stored; only who changed the document last is not recorded.
        log.warning("%s: the edit is stored, its author not recorded: %s", doc_id, exc)


def _tasks(doc: Doc[Any]) -> Map[Any]:
    tasks: Map[Any] = doc.get("tasks", type=Map)
    return tasks


def _check_task(doc: Doc[Any], task_id: str) -> Map[Any]:
    tasks = _tasks(doc)
    if task_id not in tasks:
        raise not_found("task", task_id)
    task = tasks[task_id]
    if not isinstance(task, Map):
        raise ApiError(409, f"task {task_id} is not a Map in this document; it cannot be edited")
    return task


def _task_json(doc: Doc[Any], task_id: str) -> dict[str, Any]:
    found = board.read_board(doc)[0].task(task_id)
    if found is None:  # written just now, so only a client's junk can hide it
        raise ApiError(409, f"task {task_id} cannot be read back")
    return Task.model_validate({"id": task_id, **found.to_json()}).model_dump(mode="json")


def _subtask_values(items: list[SubtaskCreate]) -> list[board.Subtask]:
    return [board.Subtask(id="", title=item.title, done=item.done) for item in items]


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body is at most {limit} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise ApiError(413, f"the body is at most {limit} bytes")
    return bytes(raw)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _json_body(raw: bytes) -> object:
    if not raw.strip():
        raise ApiError(422, "body: a JSON object is required", field="body")
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(422, "body: not valid JSON", field="body") from None


def _content_json(doc_id: str, kind: Kind, doc: Doc[Any]) -> dict[str, Any]:
    model, problems = read_model(doc, kind)
    return Content.model_validate(
        {
            "id": doc_id,
            "kind": kind,
            "content": model.to_json(),
            "problems": [p.to_json() for p in problems],
        }
    ).model_dump(mode="json")


# -- tasks -------------------------------------------------------------------------------------


async def create_task(request: Request) -> Response:
    """Add a task to a board."""
    doc_id: str = request.path_params["doc_id"]
    user = writer(request, doc_id).user
    body = await parse_body(request, TaskCreate)
    row = await _document(request, doc_id)

    def add(doc: Doc[Any]) -> str:
        return board.add_task(
            doc,
            body.title,
            status=body.status,
            assignee=body.assignee,
            department=body.department,
            due=body.due,
            priority=body.priority,
            tags=body.tags,
            subtasks=_subtask_values(body.subtasks),
            created_by=user,
            description=body.description,
            watchers=body.watchers,
            order=body.order,
        )

    async with _room(request, doc_id) as room:
        _require_kind(row, room, "board")
        task_id = _edit(request, room, user, add)
        task = _task_json(room.doc, task_id)
    await _saved(request, doc_id, user)
    location = f"/api/docs/{quote(doc_id, safe='')}/tasks/{quote(task_id, safe='')}"
    return JSONResponse(task, 201, headers={"Location": location})


async def get_task(request: Request) -> Response:
    """One task of a board."""
    doc_id: str = request.path_params["doc_id"]
    task_id: str = request.path_params["task_id"]
    reader(request, doc_id)
    row = await _document(request, doc_id)
    async with _room(request, doc_id) as room:
        _require_kind(row, room, "board")
        _check_task(room.doc, task_id)
        task = _task_json(room.doc, task_id)
    return JSONResponse(task)


async def update_task(request: Request) -> Response:
    """Change a task's fields; a new status moves it to that column."""
    doc_id: str = request.path_params["doc_id"]
    task_id: str = request.path_params["task_id"]
    user = writer(request, doc_id).user
    body = await parse_body(request, TaskUpdate)
    changes = body.model_dump(include=body.model_fields_set)
    for name, value in changes.items():
        if value is None and name not in _CLEARABLE:
            raise ApiError(422, f"{name}: may not be null", field=name)
    if "subtasks" in changes:
        changes["subtasks"] = _subtask_values(body.subtasks or [])
    row = await _document(request, doc_id)

    def change(doc: Doc[Any]) -> None:
        _check_task(doc, task_id)
        if changes:
            board.update_task(doc, task_id, **changes)

    async with _room(request, doc_id) as room:
        _require_kind(row, room, "board")
        _edit(request, room, user, change)
        task = _task_json(room.doc, task_id)
    if changes:
        await _saved(request, doc_id, user)
    return JSONResponse(task)


async def complete_task(request: Request) -> Response:
    """Mark a task done (it moves to the end of the done column)."""
    doc_id: str = request.path_params["doc_id"]
    task_id: str = request.path_params["task_id"]
    user = writer(request, doc_id).user
    row = await _document(request, doc_id)

    def complete(doc: Doc[Any]) -> None:
        _check_task(doc, task_id)
        board.complete_task(doc, task_id)

    async with _room(request, doc_id) as room:
        _require_kind(row, room, "board")
        _edit(request, room, user, complete)
        task = _task_json(room.doc, task_id)
    await _saved(request, doc_id, user)
    return JSONResponse(task)


async def delete_task(request: Request) -> Response:
    """Remove a task from a board."""
    doc_id: str = request.path_params["doc_id"]
    task_id: str = request.path_params["task_id"]
    user = writer(request, doc_id).user
    row = await _document(request, doc_id)

    def delete(doc: Doc[Any]) -> None:
        if task_id not in _tasks(doc):
            raise not_found("task", task_id)
        board.delete_task(doc, task_id)

    async with _room(request, doc_id) as room:
        _require_kind(row, room, "board")
        _edit(request, room, user, delete)
    await _saved(request, doc_id, user)
    return Response(status_code=204)


async def add_subtask(request: Request) -> Response:
    """Append a subtask to a task; answers with the task."""
    doc_id: str = request.path_params["doc_id"]
    task_id: str = request.path_params["task_id"]
    user = writer(request, doc_id).user
    body = await parse_body(request, SubtaskCreate)
    row = await _document(request, doc_id)

    def add(doc: Doc[Any]) -> str:
        task = _check_task(doc, task_id)
        subtasks = task.get("subtasks")
        if subtasks is not None and not isinstance(subtasks, Array):
            raise ApiError(409, f"the subtasks of task {task_id} are not an Array")
        return board.add_subtask(doc, task_id, body.title, done=body.done)

    async with _room(request, doc_id) as room:
        _require_kind(row, room, "board")
        _edit(request, room, user, add)
        task = _task_json(room.doc, task_id)
    await _saved(request, doc_id, user)
    return JSONResponse(task, 201)


async def update_subtask(request: Request) -> Response:
    """Tick or untick a subtask; answers with the task."""
    doc_id: str = request.path_params["doc_id"]
    task_id: str = request.path_params["task_id"]
    subtask_id: str = request.path_params["subtask_id"]
    user = writer(request, doc_id).user
    body = await parse_body(request, SubtaskUpdate)
    row = await _document(request, doc_id)

    def tick(doc: Doc[Any]) -> None:
        task = _check_task(doc, task_id)
        subtasks = task.get("subtasks")
        if not isinstance(subtasks, Array) or not any(
            isinstance(item, Map) and item.get("id") == subtask_id for item in subtasks
        ):
            raise not_found("subtask", subtask_id)
        board.set_subtask_done(doc, task_id, subtask_id, body.done)

    async with _room(request, doc_id) as room:
        _require_kind(row, room, "board")
        _edit(request, room, user, tick)
        task = _task_json(room.doc, task_id)
    await _saved(request, doc_id, user)
    return JSONResponse(task)


# -- discussions -------------------------------------------------------------------------------


async def post_message(request: Request) -> Response:
    """Post a message to a discussion, as the caller."""
    doc_id: str = request.path_params["doc_id"]
    user = writer(request, doc_id).user
    body = await parse_body(request, MessageCreate)
    row = await _document(request, doc_id)
    anchor = None if body.anchor is None else body.anchor.model_dump()

    def post(doc: Doc[Any]) -> str:
        return discussion.post_message(
            doc,
            user,
            body.body,
            reply_to=body.reply_to,
            mentions=body.mentions,
            anchor=anchor,
        )

    async with _room(request, doc_id) as room:
        _require_kind(row, room, "discussion")
        # Checked and posted with no await in between: nothing can change meanwhile.
        if body.reply_to is not None:
            current, _ = discussion.read_discussion(room.doc)
            if current.message(body.reply_to) is None:
                raise ApiError(
                    422,
                    f"reply_to: {body.reply_to} is not a message of this discussion",
                    field="reply_to",
                )
        message_id = _edit(request, room, user, post)
        posted = discussion.read_discussion(room.doc)[0].message(message_id)
    if posted is None:
        raise ApiError(409, f"message {message_id} cannot be read back")
    await _saved(request, doc_id, user)
    return JSONResponse(Message.model_validate(posted.to_json()).model_dump(mode="json"), 201)


# -- rich text ---------------------------------------------------------------------------------


def _plain_blocks(text: str) -> list[richtext.Node]:
    """Plain text as paragraphs (split at blank lines), single newlines as hard breaks."""
    normal = text.replace("\r\n", "\n").replace("\r", "\n")
    blocks: list[richtext.Node] = []
    for chunk in normal.split("\n\n"):
        if not chunk.strip("\n"):
            continue
        content: list[richtext.Node | richtext.TextRun] = []
        for index, line in enumerate(chunk.strip("\n").split("\n")):
            if index:
                content.append(richtext.Node("hardBreak"))
            if line:
                content.append(richtext.TextRun(line))
        blocks.append(richtext.Node("paragraph", {}, tuple(content)))
    return blocks


async def put_text(request: Request) -> Response:
    """Replace a `doc`'s rich text with Markdown or plain text (the raw body as text/markdown
    or text/plain, or JSON {"text", "format"})."""
    doc_id: str = request.path_params["doc_id"]
    user = writer(request, doc_id).user
    media = _media_type(request)
    raw = await _read_body(request, MAX_TEXT_BYTES)
    if media in ("text/markdown", "text/plain", "text/x-markdown"):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(422, "body: not UTF-8 text", field="body") from None
        fmt = "plain" if media == "text/plain" else "markdown"
    else:
        body = parse(TextBody, _json_body(raw))
        text, fmt = body.text, body.format
    blocks = richtext.parse_markdown(text) if fmt == "markdown" else _plain_blocks(text)
    row = await _document(request, doc_id)
    async with _room(request, doc_id) as room:
        _require_kind(row, room, "doc")
        _edit(request, room, user, lambda doc: richtext.set_content(doc, blocks))
        content = _content_json(doc_id, "doc", room.doc)
    await _saved(request, doc_id, user)
    return JSONResponse(content)


# -- any document ------------------------------------------------------------------------------


async def get_content(request: Request) -> Response:
    """The live content of a board, doc or discussion as JSON (its kind's read model)."""
    doc_id: str = request.path_params["doc_id"]
    reader(request, doc_id)
    row = await _document(request, doc_id)
    async with _room(request, doc_id) as room:
        kind = _kind(row, room)
        if kind is None:
            raise ApiError(409, f"document {doc_id} is of no known kind; it has no JSON view")
        content = _content_json(doc_id, kind, room.doc)
    return JSONResponse(content)


_NOT_CRDT_ERRORS = (KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def check_update(current: bytes, update: bytes) -> str | None:
    """Why `update` cannot be applied to a document whose state is `current` (None: it can).

    It is applied to a private copy: pycrdt cannot roll back a failed update, and an update
    that waits for changes the document lacks would sit in memory without being stored.
    """
    scratch: Doc[Any] = Doc()
    try:
        if current:
            scratch.apply_update(current)
        scratch.apply_update(update)
        # What the copy still lacks of the update: structs it could not integrate.
        missing = get_update(update, scratch.get_state())
        waiting, _ = read_varuint(missing, 0)
    except BaseException as exc:
        if isinstance(exc, _NOT_CRDT_ERRORS) or not (isinstance(exc, Exception) or is_panic(exc)):
            raise
        return f"not a Yjs update that applies here: {_short(exc)}"
    if waiting:
        return "the update depends on changes this document does not have"
    return None


async def apply_update(request: Request) -> Response:
    """Apply a raw Yjs update (application/octet-stream, or JSON {"update": base64})."""
    doc_id: str = request.path_params["doc_id"]
    user = writer(request, doc_id).user
    limit = state.settings(request).max_message_bytes
    media = _media_type(request)
    if media == "application/json":
        body = parse(UpdateBody, _json_body(await _read_body(request, limit * 4 // 3 + 1024)))
        try:
            update = base64.b64decode(body.update, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "update: not base64", field="update") from None
    else:
        update = await _read_body(request, limit)
    if not update:
        raise ApiError(422, "body: an update is required", field="body")
    await _document(request, doc_id)
    async with _room(request, doc_id) as room:
        # On a big-stack thread (pycrdt decodes nested values recursively), off the loop.
        check = functools.partial(check_update, room.encode_state(), update)
        reason = await asyncio.to_thread(call_with_deep_stack, check)
        if reason is not None:
            raise ApiError(422, f"body: {reason}", field="body")
        storage.require_storage(request)
        try:
            effective = room.apply_update(update, Origin("rest", user))
        except RejectedFrame as exc:
            raise ApiError(422, f"body: {exc.reason}", field="body") from None
        vector = room.doc.get_state()
    if effective is not None:
        await _saved(request, doc_id, user)
    result = {"changed": effective is not None, "state_vector": base64.b64encode(vector).decode()}
    return JSONResponse(result)


routes = [
    Route("/docs/{doc_id}/content", get_content, methods=["GET"]),
    Route("/docs/{doc_id}/updates", apply_update, methods=["POST"]),
    Route("/docs/{doc_id}/text", put_text, methods=["PUT"]),
    Route("/docs/{doc_id}/messages", post_message, methods=["POST"]),
    Route("/docs/{doc_id}/tasks", create_task, methods=["POST"]),
    Route("/docs/{doc_id}/tasks/{task_id}", get_task, methods=["GET"]),
    Route("/docs/{doc_id}/tasks/{task_id}", update_task, methods=["PATCH"]),
    Route("/docs/{doc_id}/tasks/{task_id}", delete_task, methods=["DELETE"]),
    Route("/docs/{doc_id}/tasks/{task_id}/complete", complete_task, methods=["POST"]),
    Route("/docs/{doc_id}/tasks/{task_id}/subtasks", add_subtask, methods=["POST"]),
    Route(
        "/docs/{doc_id}/tasks/{task_id}/subtasks/{subtask_id}",
        update_subtask,
        methods=["PATCH"],
    ),
]
