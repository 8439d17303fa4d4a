"""GET /api/tasks: the tasks of every board the caller may read, from the task projection.

The sidecar keeps `task_index` in step with the boards (one row per task); this module only
reads it, so "what is mine, across every board" needs no CRDT document. The same pieces
(which boards a caller may read, a row as JSON, due-date bounds) serve the calendar feed
(server/api/calendar.py) and the progress figures (server/api/progress.py).

Access: a board is listed when its `documents` row is live (not deleted) and the access rules
let the caller read it. The rules are evaluated in memory over the boards that have tasks;
the task query is then limited to those boards by id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, Literal, TypeVar
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, Select, and_, false, func, select, true
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.api import state
from server.api.caller import reader
from server.api.describe import json_body, operation
from server.api.describe import query as describe_query
from server.api.errors import ApiError, parse
from server.api.fields import Department, DocId, Limit, Offset, UserName
from server.notifications import iso
from server.persistence.tables import documents, task_index
from shared.documents import parse_timestamp

STATUSES = ("todo", "in_progress", "done")
Status = Literal["todo", "in_progress", "done"]
Q = TypeVar("Q", bound=BaseModel)
DEFAULT_LIMIT = 100
# Above this many readable boards, the query names the (fewer) unreadable ones instead.
MAX_IN_LIST = 2000

# -- query --------------------------------------------------------------------------------------


class TaskQuery(BaseModel):
    """Filters of GET /api/tasks; every one given must hold."""

    model_config = ConfigDict(extra="forbid")

    assignee: UserName | None = Field(None, description="a user name, or `me` for the caller")
    department: Department | None = Field(
        None, description="the task's department (else its board's)"
    )
    status: list[Status] | None = Field(
        None, description="todo, in_progress, done; repeat the parameter or separate by commas"
    )
    board: DocId | None = Field(None, description="only this board (a document id)")
    due_before: str | None = Field(
        None,
        description="ISO 8601 date or date-time: due at or before it (a date: by the end of "
        "that day in the server's time zone); tasks without a due date are left out",
    )
    due_after: str | None = Field(
        None,
        description="ISO 8601 date or date-time: due at or after it (a date: from the start "
        "of that day); tasks without a due date are left out",
    )
    overdue: bool | None = Field(
        None, description="true: only open tasks past due; false: only the others"
    )
    limit: Limit = DEFAULT_LIMIT
    offset: Offset = 0


class TaskItem(BaseModel):
    board: str
    board_title: str | None
    task_id: str
    title: str
    status: str
    assignee: str | None
    department: str | None
    due: str | None = Field(description="as written in the board")
    due_at: str | None = Field(description="the moment it is due, UTC")
    priority: str
    overdue: bool = Field(description="due_at has passed and the task is not done")
    updated_at: str | None
    updated_by: str | None
    url: str = Field(description="the REST address of the task")


class TaskList(BaseModel):
    tasks: list[TaskItem]
    total: int = Field(description="how many tasks match, over every page")
    limit: int
    offset: int


def query_params(request: Request, model: type[BaseModel]) -> dict[str, Any]:
    """The query string as a dict for `model`: empty values are absent, `status` may repeat
    and hold comma-separated values."""
    data: dict[str, Any] = {
        key: value for key, value in request.query_params.items() if value != ""
    }
    data.pop("token", None)
    if "status" in model.model_fields:
        statuses = [
            part.strip()
            for value in request.query_params.getlist("status")
            for part in value.split(",")
            if part.strip()
        ]
        if statuses:
            data["status"] = statuses
        else:
            data.pop("status", None)
    return data


def parse_query(request: Request, model: type[Q]) -> Q:
    """The query validated by `model`; a bad status is 422 naming `status` (not `status.0`)."""
    try:
        return parse(model, query_params(request, model))
    except ApiError as exc:
        if exc.field is not None and exc.field.startswith("status."):
            exc.field = "status"
            exc.message = "status: each must be one of todo, in_progress, done"
        raise


# -- time ---------------------------------------------------------------------------------------


def server_zone(request: Request) -> tzinfo:
    """The zone a date or time without an offset is read in (settings.timezone)."""
    try:
        return ZoneInfo(state.settings(request).timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def bound(value: str, name: str, zone: tzinfo, *, end_of_day: bool) -> datetime:
    """A due-date bound as a UTC moment; 422 naming `name` if it is not ISO 8601. A date is
    its whole day: from its start (`end_of_day` False) or up to its end."""
    try:
        parsed = parse_timestamp(value)
    except ValueError:
        raise ApiError(
            422, f"{name}: not an ISO 8601 date or date-time: {value[:64]!r}", field=name
        ) from None
    if isinstance(parsed, datetime):
        return utc(parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=zone))
    start = datetime.combine(parsed, time(), tzinfo=zone)
    if end_of_day:
        next_day = datetime.combine(parsed + timedelta(days=1), time(), tzinfo=zone)
        return utc(next_day) - timedelta(microseconds=1)
    return utc(start)


def date_only(due: str | None) -> date | None:
    """The day of a due written without a time ("2026-11-11"), else None."""
    if due is None:
        return None
    try:
        parsed = parse_timestamp(due)
    except ValueError:
        return None
    return None if isinstance(parsed, datetime) else parsed


# -- which boards -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scope:
    """The boards (with tasks) a caller may read: their titles by id, and a condition on
    `task_index` that keeps to them."""

    titles: Mapping[str, str | None]
    clause: ColumnElement[bool]

    @property
    def empty(self) -> bool:
        return not self.titles

    def keep(self, rows: Iterable[Any]) -> list[Any]:
        """Rows (with `doc_id`) of readable boards only: a board created between the two
        queries was never checked, so it is dropped rather than shown."""
        return [row for row in rows if row.doc_id in self.titles]


async def readable_boards(
    request: Request,
    conn: AsyncConnection,
    user: str,
    *,
    board: str | None = None,
) -> Scope:
    """The live boards with tasks in the projection that `user` may read (only `board` if
    given)."""
    candidates = select(
        documents.c.id, documents.c.folder_id, documents.c.department, documents.c.title
    ).where(
        documents.c.deleted_at.is_(None),
        documents.c.id.in_(select(task_index.c.doc_id).distinct()),
    )
    if board is not None:
        candidates = candidates.where(documents.c.id == board)
    rows = (await conn.execute(candidates)).all()
    readable = await state.access(request).documents(user, rows)
    titles = {row.id: row.title for row in readable}
    clause: ColumnElement[bool]
    if not titles:
        clause = false()
    elif len(titles) == len(rows):
        # Every board is readable: the join with live documents is condition enough.
        clause = task_index.c.doc_id == board if board is not None else true()
    else:
        unreadable = [row.id for row in rows if row.id not in titles]
        if len(titles) <= MAX_IN_LIST or len(titles) <= len(unreadable):
            clause = task_index.c.doc_id.in_(list(titles))
        else:
            clause = task_index.c.doc_id.not_in(unreadable)
    return Scope(titles, clause)


def tasks_of(scope: Scope, *columns: Any) -> Select[Any]:
    """SELECT from task_index joined with its live board, limited to `scope`."""
    return (
        select(*columns)
        .select_from(task_index.join(documents, documents.c.id == task_index.c.doc_id))
        .where(documents.c.deleted_at.is_(None), scope.clause)
    )


def is_overdue(now: datetime) -> ColumnElement[bool]:
    return and_(
        task_index.c.due_at.is_not(None), task_index.c.due_at < now, task_index.c.status != "done"
    )


def due_order() -> tuple[Any, ...]:
    """By due_at (tasks without one last), then board, then task id."""
    return (
        task_index.c.due_at.is_(None),
        task_index.c.due_at,
        task_index.c.doc_id,
        task_index.c.task_id,
    )


# -- rows as JSON -------------------------------------------------------------------------------


def base_url(request: Request) -> str:
    """Where links start: settings.public_url, else the address this request came to."""
    public = state.settings(request).public_url
    if public:
        return public.rstrip("/")
    return f"{request.url.scheme}://{request.url.netloc}"


def task_url(base: str, doc_id: str, task_id: str) -> str:
    return f"{base}/api/docs/{quote(doc_id, safe='')}/tasks/{quote(task_id, safe='')}"


def task_fields(row: Any, now: datetime) -> dict[str, Any]:
    """What every view of a task_index row shows (joined with its board's title as
    `board_title`): the task list's items and progress's next deadlines."""
    due_at = utc(row.due_at) if row.due_at is not None else None
    return {
        "board": row.doc_id,
        "board_title": row.board_title,
        "task_id": row.task_id,
        "title": row.title,
        "status": row.status,
        "assignee": row.assignee,
        "department": row.department,
        "due": row.due,
        "due_at": iso(due_at),
        "overdue": due_at is not None and due_at < now and row.status != "done",
    }


def task_json(row: Any, base: str, now: datetime) -> dict[str, Any]:
    """A task_index row (joined with its board's title as `board_title`) as a TaskItem."""
    return {
        **task_fields(row, now),
        "priority": row.priority,
        "updated_at": iso(row.updated_at),
        "updated_by": row.updated_by,
        "url": task_url(base, row.doc_id, row.task_id),
    }


TASK_COLUMNS: Sequence[Any] = (*task_index.c, documents.c.title.label("board_title"))

# -- the route ----------------------------------------------------------------------------------


async def list_tasks(request: Request) -> Response:
    """Tasks across every readable board, filtered, soonest due first."""
    query = parse_query(request, TaskQuery)
    caller = await reader(request, query.board)
    user = caller.user
    assignee = user if query.assignee == "me" else query.assignee
    now = datetime.now(UTC)
    zone = server_zone(request)
    conditions: list[ColumnElement[bool]] = []
    if assignee is not None:
        conditions.append(task_index.c.assignee == assignee)
    if query.department is not None:
        conditions.append(task_index.c.department == query.department)
    if query.status:
        conditions.append(task_index.c.status.in_(sorted(set(query.status))))
    if query.due_before is not None:
        before = bound(query.due_before, "due_before", zone, end_of_day=True)
        conditions.append(task_index.c.due_at <= before)
    if query.due_after is not None:
        after = bound(query.due_after, "due_after", zone, end_of_day=False)
        conditions.append(task_index.c.due_at >= after)
    if query.overdue is not None:
        late = is_overdue(now)  # never NULL, so its negation is every other task
        conditions.append(late if query.overdue else ~late)
    async with state.engine(request).connect() as conn:
        scope = await readable_boards(request, conn, user, board=query.board)
        if scope.empty:
            return JSONResponse(
                {"tasks": [], "total": 0, "limit": query.limit, "offset": query.offset}
            )
        total = (await conn.execute(tasks_of(scope, func.count()).where(*conditions))).scalar_one()
        rows = (
            await conn.execute(
                tasks_of(scope, *TASK_COLUMNS)
                .where(*conditions)
                .order_by(*due_order())
                .limit(query.limit)
                .offset(query.offset)
            )
        ).all()
    base = base_url(request)
    items = [task_json(row, base, now) for row in scope.keep(rows)]
    return JSONResponse(
        {"tasks": items, "total": total, "limit": query.limit, "offset": query.offset}
    )


# -- OpenAPI ------------------------------------------------------------------------------------

OPENAPI_INPUTS: list[type[BaseModel]] = []
OPENAPI_OUTPUTS: list[type[BaseModel]] = [TaskItem, TaskList]


def openapi_paths() -> dict[str, dict[str, Any]]:
    parameters = describe_query(TaskQuery)
    for parameter in parameters:
        if parameter["name"] == "status":
            # Repeated (`status=a&status=b`) or comma-separated.
            parameter["style"] = "form"
            parameter["explode"] = True
    return {
        "/api/tasks": {
            "get": operation(
                "Tasks of every board the caller may read, from the task projection: by "
                "assignee (`me`), department, status, due date, board; soonest due first "
                "(no due date last), then board and task id",
                ok=(200, "one page of matching tasks and how many match", json_body(TaskList)),
                query=parameters,
                errors=(401, 403, 422),
                tag="tasks",
            )
        }
    }


routes = [Route("/tasks", list_tasks, methods=["GET"])]
