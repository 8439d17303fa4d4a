"""/api/docs/{id}/tasks...: a board's tasks and their subtasks over REST.

Each operation is one edit in the board's live room (server/api/live.py); a task operation
on a document that is not a board is 409.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import quote

from pycrdt import Array, Doc, Map
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

from server.api import live
from server.api.caller import reader, writer
from server.api.describe import WRITE_ERRORS, json_body, operation
from server.api.errors import ApiError, not_found, parse_body
from server.api.fields import Department, Notes, TagList, Title, UserName
from shared import board
from shared.documents import timestamp_text

MAX_SUBTASKS = 200
MAX_WATCHERS = 200

# -- request models ----------------------------------------------------------------------------


def _timestamp(value: str) -> str:
    return timestamp_text(value)


def _subtask_items(value: object) -> object:
    """Subtasks may be given as titles: "a" is {"title": "a"}."""
    if isinstance(value, list):
        return [{"title": item} if isinstance(item, str) else item for item in value]
    return value


Status = Literal["todo", "in_progress", "done"]
Priority = Literal["low", "normal", "high", "urgent"]
Due = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
    AfterValidator(_timestamp),
]
Order = Annotated[float, Field(allow_inf_nan=False)]


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


# -- helpers -----------------------------------------------------------------------------------


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


# -- tasks -------------------------------------------------------------------------------------


async def create_task(request: Request) -> Response:
    """Add a task to a board."""
    doc_id: str = request.path_params["doc_id"]
    user = (await writer(request, doc_id)).user
    body = await parse_body(request, TaskCreate)
    row = await live.document(request, doc_id)

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

    async with live.open_room(request, doc_id) as room:
        live.require_kind(row, room, "board")
        task_id = live.edit(request, room, user, add)
        task = _task_json(room.doc, task_id)
    await live.saved(request, doc_id, user)
    location = f"/api/docs/{quote(doc_id, safe='')}/tasks/{quote(task_id, safe='')}"
    return JSONResponse(task, 201, headers={"Location": location})


async def get_task(request: Request) -> Response:
    """One task of a board."""
    doc_id: str = request.path_params["doc_id"]
    task_id: str = request.path_params["task_id"]
    await reader(request, doc_id)
    row = await live.document(request, doc_id)
    async with live.open_room(request, doc_id) as room:
        live.require_kind(row, room, "board")
        _check_task(room.doc, task_id)
        task = _task_json(room.doc, task_id)
    return JSONResponse(task)


async def update_task(request: Request) -> Response:
    """Change a task's fields; a new status moves it to that column."""
    doc_id: str = request.path_params["doc_id"]
    task_id: str = request.path_params["task_id"]
    user = (await writer(request, doc_id)).user
    body = await parse_body(request, TaskUpdate)
    changes = body.model_dump(include=body.model_fields_set)
    for name, value in changes.items():
        if value is None and name not in _CLEARABLE:
            raise ApiError(422, f"{name}: may not be null", field=name)
    if "subtasks" in changes:
        changes["subtasks"] = _subtask_values(body.subtasks or [])
    row = await live.document(request, doc_id)

    def change(doc: Doc[Any]) -> None:
        _check_task(doc, task_id)
        if changes:
            board.update_task(doc, task_id, **changes)

    async with live.open_room(request, doc_id) as room:
        live.require_kind(row, room, "board")
        live.edit(request, room, user, change)
        task = _task_json(room.doc, task_id)
    if changes:
        await live.saved(request, doc_id, user)
    return JSONResponse(task)


async def complete_task(request: Request) -> Response:
    """Mark a task done (it moves to the end of the done column)."""
    doc_id: str = request.path_params["doc_id"]
    task_id: str = request.path_params["task_id"]
    user = (await writer(request, doc_id)).user
    row = await live.document(request, doc_id)

    def complete(doc: Doc[Any]) -> None:
        _check_task(doc, task_id)
        board.complete_task(doc, task_id)

    async with live.open_room(request, doc_id) as room:
        live.require_kind(row, room, "board")
        live.edit(request, room, user, complete)
        task = _task_json(room.doc, task_id)
    await live.saved(request, doc_id, user)
    return JSONResponse(task)


async def delete_task(request: Request) -> Response:
    """Remove a task from a board."""
    doc_id: str = request.path_params["doc_id"]
    task_id: str = request.path_params["task_id"]
    user = (await writer(request, doc_id)).user
    row = await live.document(request, doc_id)

    def delete(doc: Doc[Any]) -> None:
        if task_id not in _tasks(doc):
            raise not_found("task", task_id)
        board.delete_task(doc, task_id)

    async with live.open_room(request, doc_id) as room:
        live.require_kind(row, room, "board")
        live.edit(request, room, user, delete)
    await live.saved(request, doc_id, user)
    return Response(status_code=204)


async def add_subtask(request: Request) -> Response:
    """Append a subtask to a task; answers with the task."""
    doc_id: str = request.path_params["doc_id"]
    task_id: str = request.path_params["task_id"]
    user = (await writer(request, doc_id)).user
    body = await parse_body(request, SubtaskCreate)
    row = await live.document(request, doc_id)

    def add(doc: Doc[Any]) -> str:
        task = _check_task(doc, task_id)
        subtasks = task.get("subtasks")
        if subtasks is not None and not isinstance(subtasks, Array):
            raise ApiError(409, f"the subtasks of task {task_id} are not an Array")
        return board.add_subtask(doc, task_id, body.title, done=body.done)

    async with live.open_room(request, doc_id) as room:
        live.require_kind(row, room, "board")
        live.edit(request, room, user, add)
        task = _task_json(room.doc, task_id)
    await live.saved(request, doc_id, user)
    return JSONResponse(task, 201)


async def update_subtask(request: Request) -> Response:
    """Tick or untick a subtask; answers with the task."""
    doc_id: str = request.path_params["doc_id"]
    task_id: str = request.path_params["task_id"]
    subtask_id: str = request.path_params["subtask_id"]
    user = (await writer(request, doc_id)).user
    body = await parse_body(request, SubtaskUpdate)
    row = await live.document(request, doc_id)

    def tick(doc: Doc[Any]) -> None:
        task = _check_task(doc, task_id)
        subtasks = task.get("subtasks")
        if not isinstance(subtasks, Array) or not any(
            isinstance(item, Map) and item.get("id") == subtask_id for item in subtasks
        ):
            raise not_found("subtask", subtask_id)
        board.set_subtask_done(doc, task_id, subtask_id, body.done)

    async with live.open_room(request, doc_id) as room:
        live.require_kind(row, room, "board")
        live.edit(request, room, user, tick)
        task = _task_json(room.doc, task_id)
    await live.saved(request, doc_id, user)
    return JSONResponse(task)


routes = [
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

OPENAPI_INPUTS: list[type[BaseModel]] = [TaskCreate, TaskUpdate, SubtaskCreate, SubtaskUpdate]
OPENAPI_OUTPUTS: list[type[BaseModel]] = [Task]


def openapi_paths() -> dict[str, dict[str, Any]]:
    """A task operation on a document that is not a board is 409."""
    task = json_body(Task)
    return {
        "/api/docs/{doc_id}/tasks": {
            "post": operation(
                "Add a task to a board",
                ok=(201, "the task", task),
                body=json_body(TaskCreate),
                errors=WRITE_ERRORS,
                tag="tasks",
            ),
        },
        "/api/docs/{doc_id}/tasks/{task_id}": {
            "get": operation(
                "A task", ok=(200, "the task", task), errors=(401, 403, 404, 409), tag="tasks"
            ),
            "patch": operation(
                "Change a task: fields, status (a move), order, assignee, due, priority",
                ok=(200, "the changed task", task),
                body=json_body(TaskUpdate),
                errors=WRITE_ERRORS,
                tag="tasks",
            ),
            "delete": operation(
                "Delete a task", ok=(204, "deleted", None), errors=WRITE_ERRORS, tag="tasks"
            ),
        },
        "/api/docs/{doc_id}/tasks/{task_id}/complete": {
            "post": operation(
                "Mark a task done",
                ok=(200, "the task", task),
                errors=(401, 403, 404, 409),
                tag="tasks",
            ),
        },
        "/api/docs/{doc_id}/tasks/{task_id}/subtasks": {
            "post": operation(
                "Add a subtask",
                ok=(201, "the task with its new subtask last", task),
                body=json_body(SubtaskCreate),
                errors=WRITE_ERRORS,
                tag="tasks",
            ),
        },
        "/api/docs/{doc_id}/tasks/{task_id}/subtasks/{subtask_id}": {
            "patch": operation(
                "Tick or untick a subtask",
                ok=(200, "the task", task),
                body=json_body(SubtaskUpdate),
                errors=WRITE_ERRORS,
                tag="tasks",
            ),
        },
    }
