"""Progress of boards and departments, from the task projection (`task_index`).

- GET /api/docs/{doc_id}/progress: one board's figures.
- GET /api/progress: the figures over every board the caller may read (or `?department=`,
  `?board=`), overall, per department and per board.
- GET /api/docs/{doc_id}/progress/stream and GET /api/progress/stream: the same as
  server-sent events, an `event: progress` whenever the figures change.

The figures of a set of tasks: `total`, `by_status` (todo, in_progress, done),
`percent_done` (done / total * 100, one decimal; 0 with no tasks), `overdue` (open tasks
whose due moment has passed) and `next_deadlines` (up to 5 open tasks with a due date,
soonest first, overdue ones included and marked). A task's department is its own, else its
board's (as the projection stores it); tasks without one are under `department: null`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, case, func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from server.access import at_least
from server.api import state
from server.api.caller import reader
from server.api.describe import json_body, operation
from server.api.describe import query as describe_query
from server.api.errors import ApiError, not_found
from server.api.fields import Department, DocId
from server.api.task_list import (
    STATUSES,
    Scope,
    due_order,
    is_overdue,
    parse_query,
    readable_boards,
    task_fields,
    tasks_of,
)
from server.persistence.tables import documents, task_index

log = logging.getLogger("tandem.api")

NEXT_DEADLINES = 5
POLL_SECONDS = 0.5
KEEP_ALIVE_SECONDS = 15.0

# -- models -------------------------------------------------------------------------------------


class ProgressQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    department: Department | None = Field(None, description="only tasks of this department")
    board: DocId | None = Field(None, description="only this board")


class ByStatus(BaseModel):
    todo: int
    in_progress: int
    done: int


class Deadline(BaseModel):
    board: str
    board_title: str | None
    task_id: str
    title: str
    status: str
    assignee: str | None
    department: str | None
    due: str | None = Field(description="as written in the board")
    due_at: str = Field(description="UTC")
    overdue: bool


class Figures(BaseModel):
    total: int
    by_status: ByStatus
    percent_done: float = Field(description="0 to 100, one decimal; 0 when there are no tasks")
    overdue: int = Field(description="open tasks whose due moment has passed")
    next_deadlines: list[Deadline] = Field(
        description="up to 5 open tasks with a due date, soonest first (overdue ones too)"
    )


class BoardProgress(Figures):
    board: str
    title: str | None


class DepartmentProgress(Figures):
    department: str | None = Field(description="null: tasks of no department")


class ProgressReport(BaseModel):
    overall: Figures
    departments: list[DepartmentProgress] = Field(description="by name, no department last")
    boards: list[BoardProgress] = Field(description="by title, then id")


# -- figures ------------------------------------------------------------------------------------


class _Tally:
    """Counts of one group of tasks, then its figures."""

    def __init__(self) -> None:
        self.by_status = dict.fromkeys(STATUSES, 0)
        self.overdue = 0
        self.deadlines: list[dict[str, Any]] = []

    def add(self, status: str, count: int, overdue: int) -> None:
        # A status outside the three (a client's junk) is counted in the total only.
        self.by_status[status] = self.by_status.get(status, 0) + count
        self.overdue += overdue

    def figures(self) -> dict[str, Any]:
        total = sum(self.by_status.values())
        done = self.by_status["done"]
        return {
            "total": total,
            "by_status": {status: self.by_status[status] for status in STATUSES},
            "percent_done": round(done * 100 / total, 1) if total else 0.0,
            "overdue": self.overdue,
            "next_deadlines": self.deadlines[:NEXT_DEADLINES],
        }


async def _report(
    conn: AsyncConnection,
    scope: Scope,
    conditions: list[ColumnElement[bool]],
    now: datetime,
) -> dict[str, Any]:
    """Overall, per-department and per-board figures of the tasks in `scope` that meet
    `conditions`."""
    overdue = func.sum(case((is_overdue(now), 1), else_=0))
    counts = (
        await conn.execute(
            tasks_of(
                scope,
                task_index.c.doc_id,
                task_index.c.department,
                task_index.c.status,
                func.count().label("n"),
                overdue.label("late"),
            )
            .where(*conditions)
            .group_by(task_index.c.doc_id, task_index.c.department, task_index.c.status)
        )
    ).all()
    overall = _Tally()
    departments: dict[str | None, _Tally] = {}
    boards: dict[str, _Tally] = {}
    for row in scope.keep(counts):
        late = int(row.late or 0)
        for tally in (
            overall,
            departments.setdefault(row.department, _Tally()),
            boards.setdefault(row.doc_id, _Tally()),
        ):
            tally.add(row.status, int(row.n), late)

    # The next deadlines of each group: numbered within the board, the department and
    # overall, and only the first few of each fetched.
    order = due_order()[1:]
    numbered = (
        tasks_of(
            scope,
            task_index.c.doc_id,
            task_index.c.task_id,
            task_index.c.title,
            task_index.c.status,
            task_index.c.assignee,
            task_index.c.department,
            task_index.c.due,
            task_index.c.due_at,
            documents.c.title.label("board_title"),
            func.row_number()
            .over(partition_by=task_index.c.doc_id, order_by=order)
            .label("in_board"),
            func.row_number()
            .over(partition_by=task_index.c.department, order_by=order)
            .label("in_department"),
            func.row_number().over(order_by=order).label("in_all"),
        )
        .where(*conditions, task_index.c.status != "done", task_index.c.due_at.is_not(None))
        .subquery()
    )
    deadlines = (
        await conn.execute(
            select(numbered)
            .where(
                or_(
                    numbered.c.in_board <= NEXT_DEADLINES,
                    numbered.c.in_department <= NEXT_DEADLINES,
                    numbered.c.in_all <= NEXT_DEADLINES,
                )
            )
            .order_by(numbered.c.due_at, numbered.c.doc_id, numbered.c.task_id)
        )
    ).all()
    for row in scope.keep(deadlines):
        item = task_fields(row, now)  # next deadlines are open tasks
        if row.in_all <= NEXT_DEADLINES:
            overall.deadlines.append(item)
        if row.in_department <= NEXT_DEADLINES and row.department in departments:
            departments[row.department].deadlines.append(item)
        if row.in_board <= NEXT_DEADLINES and row.doc_id in boards:
            boards[row.doc_id].deadlines.append(item)

    def department_key(name: str | None) -> tuple[bool, str]:
        return (name is None, name or "")

    def board_key(doc_id: str) -> tuple[str, str]:
        return (scope.titles.get(doc_id) or "", doc_id)

    return {
        "overall": overall.figures(),
        "departments": [
            {"department": name, **departments[name].figures()}
            for name in sorted(departments, key=department_key)
        ],
        "boards": [
            {"board": doc_id, "title": scope.titles.get(doc_id), **boards[doc_id].figures()}
            for doc_id in sorted(boards, key=board_key)
        ],
    }


async def aggregate(request: Request, user: str, query: ProgressQuery) -> dict[str, Any]:
    """The report for GET /api/progress."""
    conditions: list[ColumnElement[bool]] = []
    if query.department is not None:
        conditions.append(task_index.c.department == query.department)
    now = datetime.now(UTC)
    async with state.engine(request).connect() as conn:
        scope = await readable_boards(request, conn, user, board=query.board)
        return await _report(conn, scope, conditions, now)


async def _board_row(conn: AsyncConnection, doc_id: str) -> Any:
    return (
        await conn.execute(
            select(documents.c.id, documents.c.kind, documents.c.title).where(
                documents.c.id == doc_id, documents.c.deleted_at.is_(None)
            )
        )
    ).first()


async def board_figures(request: Request, user: str, doc_id: str) -> dict[str, Any] | None:
    """One board's figures (BoardProgress), or None if it is gone or no longer readable."""
    now = datetime.now(UTC)
    async with state.engine(request).connect() as conn:
        row = await _board_row(conn, doc_id)
        if row is None:
            return None
        scope = await readable_boards(request, conn, user, board=doc_id)
        report = await _report(conn, scope, [], now)
    if report["boards"]:
        figures = dict(report["boards"][0])
        figures["title"] = row.title
        return figures
    if not at_least(await state.access(request).document(user, doc_id), "read"):
        return None
    # A readable board without tasks in the projection.
    return {"board": doc_id, "title": row.title, **_Tally().figures()}


async def _require_board(request: Request, doc_id: str) -> None:
    """404 unless `doc_id` is a live document; 409 if it is known not to be a board."""
    async with state.engine(request).connect() as conn:
        row = await _board_row(conn, doc_id)
    if row is None:
        raise not_found("document", doc_id)
    if row.kind is not None and row.kind != "board":
        raise ApiError(409, f"document {doc_id} is a {row.kind}, not a board")


# -- routes -------------------------------------------------------------------------------------


async def get_board_progress(request: Request) -> Response:
    """One board's progress."""
    doc_id: str = request.path_params["doc_id"]
    caller = await reader(request, doc_id)
    await _require_board(request, doc_id)
    figures = await board_figures(request, caller.user, doc_id)
    if figures is None:  # deleted or closed to the caller in between
        raise not_found("document", doc_id)
    return JSONResponse(figures)


async def get_progress(request: Request) -> Response:
    """Progress over every board the caller may read: overall, per department, per board."""
    query = parse_query(request, ProgressQuery)
    caller = await reader(request, query.board)
    return JSONResponse(await aggregate(request, caller.user, query))


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _stream(
    request: Request, compute: Callable[[], Awaitable[dict[str, Any] | None]]
) -> StreamingResponse:
    """Server-sent events: `progress` with the figures at once and whenever they change
    (looked at every POLL_SECONDS), `: keep-alive` comments in quiet times, and `gone` (then
    the end) when the board is deleted or no longer readable."""

    async def events() -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        last: dict[str, Any] | None = None
        quiet_since = loop.time()
        while not await request.is_disconnected():
            try:
                figures = await compute()
            except SQLAlchemyError as exc:
                # The database is away for a moment: keep the stream, try again.
                log.info("progress stream: %s", exc)
                figures = last
            if figures is None:
                yield _event("gone", {})
                return
            if figures != last:
                last = figures
                quiet_since = loop.time()
                yield _event("progress", figures)
            elif loop.time() - quiet_since >= KEEP_ALIVE_SECONDS:
                quiet_since = loop.time()
                yield b": keep-alive\n\n"
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def stream_board_progress(request: Request) -> Response:
    """One board's progress, live."""
    doc_id: str = request.path_params["doc_id"]
    caller = await reader(request, doc_id)
    await _require_board(request, doc_id)

    async def compute() -> dict[str, Any] | None:
        return await board_figures(request, caller.user, doc_id)

    return _stream(request, compute)


async def stream_progress(request: Request) -> Response:
    """The aggregate report, live."""
    query = parse_query(request, ProgressQuery)
    caller = await reader(request, query.board)

    async def compute() -> dict[str, Any] | None:
        return await aggregate(request, caller.user, query)

    return _stream(request, compute)


# -- OpenAPI ------------------------------------------------------------------------------------

OPENAPI_INPUTS: list[type[BaseModel]] = []
OPENAPI_OUTPUTS: list[type[BaseModel]] = [
    ByStatus,
    Deadline,
    Figures,
    BoardProgress,
    DepartmentProgress,
    ProgressReport,
]

_SSE = {"text/event-stream": {"schema": {"type": "string"}}}


def openapi_paths() -> dict[str, dict[str, Any]]:
    return {
        "/api/progress": {
            "get": operation(
                "Progress over every board the caller may read (or one department, one "
                "board): counts by status, percent done, overdue, next deadlines; overall, "
                "per department and per board",
                ok=(200, "the figures", json_body(ProgressReport)),
                query=describe_query(ProgressQuery),
                errors=(401, 403, 422),
                tag="tasks",
            )
        },
        "/api/progress/stream": {
            "get": operation(
                "GET /api/progress as server-sent events: `event: progress` with the report "
                "at once and whenever it changes, `: keep-alive` every 15 s",
                ok=(200, "an event stream of ProgressReport", _SSE),
                query=describe_query(ProgressQuery),
                errors=(401, 403, 422),
                tag="tasks",
            )
        },
        "/api/docs/{doc_id}/progress": {
            "get": operation(
                "One board's progress: counts by status, percent done, overdue, next "
                "deadlines (409 for a document that is not a board)",
                ok=(200, "the figures", json_body(BoardProgress)),
                errors=(401, 403, 404, 409),
                tag="tasks",
            )
        },
        "/api/docs/{doc_id}/progress/stream": {
            "get": operation(
                "One board's progress as server-sent events: `event: progress` with the "
                "figures at once and whenever they change, `: keep-alive` every 15 s, "
                "`event: gone` when the board is deleted or closed to the caller",
                ok=(200, "an event stream of BoardProgress", _SSE),
                errors=(401, 403, 404, 409),
                tag="tasks",
            )
        },
    }


routes = [
    Route("/progress", get_progress, methods=["GET"]),
    Route("/progress/stream", stream_progress, methods=["GET"]),
    Route("/docs/{doc_id}/progress", get_board_progress, methods=["GET"]),
    Route("/docs/{doc_id}/progress/stream", stream_board_progress, methods=["GET"]),
]
