"""GET /api/me/calendar.ics: the caller's due dates as an iCalendar feed.

One VEVENT per task assigned to the caller that has a due date, on a board the caller may
read, from the task projection (server/api/task_list.py). A calendar application subscribes
to the address with the token as `?token=` (it cannot send a header).

- UID `{board}/{task}@tandem`: stable, so an application updates the event in place when
  the task's title or due date changes.
- A due written as a date ("2026-11-11") is an all-day event (DTSTART;VALUE=DATE, DTEND the
  next day); one written with a time is timed, at its moment in UTC.
- Done tasks are left out: the feed is what is still to do, and an event disappears from the
  calendar once its task is done. `?done=1` keeps them, their SUMMARY ending in " (done)".
- DTSTAMP and LAST-MODIFIED are the task's last change, so an unchanged feed is the same
  bytes (and the same ETag; If-None-Match gets 304).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, tzinfo
from email.utils import format_datetime
from typing import Any

from icalendar import Calendar, Event
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.api import state
from server.api.caller import reader
from server.api.describe import operation
from server.api.describe import query as describe_query
from server.api.task_list import (
    TASK_COLUMNS,
    base_url,
    date_only,
    parse_query,
    readable_boards,
    server_zone,
    task_url,
    tasks_of,
    utc,
)
from server.persistence.tables import task_index
from shared.documents import parse_timestamp

MEDIA_TYPE = "text/calendar; charset=utf-8"
PRODID = "-//Tandem//Tandem task calendar//EN"
# Subscribing applications refresh this often if they honour the hint.
REFRESH = timedelta(minutes=15)


class CalendarQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    done: bool = Field(False, description="also list done tasks (their summary ends in (done))")


def _uid(doc_id: str, task_id: str) -> str:
    return f"{doc_id}/{task_id}@tandem"


def _event(row: Any, base: str, zone: tzinfo) -> Event | None:
    """The VEVENT of one task row, or None when its due date cannot be placed."""
    event = Event()
    day = date_only(row.due)
    if day is not None:
        event.add("dtstart", day)
        event.add("dtend", day + timedelta(days=1))
    else:
        moment = utc(row.due_at) if row.due_at is not None else None
        if moment is None:
            try:
                parsed = parse_timestamp(row.due)
            except ValueError:
                return None
            if not isinstance(parsed, datetime):
                return None
            moment = utc(parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=zone))
        event.add("dtstart", moment)
    changed = utc(row.updated_at)
    summary = row.title + (" (done)" if row.status == "done" else "")
    lines = [f"Board: {row.board_title or row.doc_id}", f"Status: {row.status}"]
    lines.append(f"Priority: {row.priority}")
    if row.department:
        lines.append(f"Department: {row.department}")
    event.add("uid", _uid(row.doc_id, row.task_id))
    event.add("summary", summary)
    event.add("dtstamp", changed)
    event.add("last-modified", changed)
    event.add("url", task_url(base, row.doc_id, row.task_id))
    event.add("description", "\n".join(lines))
    event.add("status", "CONFIRMED")
    if row.board_title:
        event.add("categories", [row.board_title])
    return event


async def calendar(request: Request) -> Response:
    """The caller's due dates as iCalendar."""
    query = parse_query(request, CalendarQuery)
    caller = await reader(request)
    conditions = [task_index.c.assignee == caller.user, task_index.c.due.is_not(None)]
    if not query.done:
        conditions.append(task_index.c.status != "done")
    async with state.engine(request).connect() as conn:
        scope = await readable_boards(request, conn, caller.user)
        rows: list[Any] = []
        if not scope.empty:
            statement = (
                tasks_of(scope, *TASK_COLUMNS)
                .where(*conditions)
                .order_by(task_index.c.due_at, task_index.c.doc_id, task_index.c.task_id)
            )
            rows = scope.keep((await conn.execute(statement)).all())
    base = base_url(request)
    zone = server_zone(request)
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("x-wr-calname", f"Tandem: {caller.user}")
    cal.add("refresh-interval", REFRESH, parameters={"VALUE": "DURATION"})
    cal.add("x-published-ttl", REFRESH)
    for row in rows:
        event = _event(row, base, zone)
        if event is not None:
            cal.add_component(event)
    body = cal.to_ical()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if rows:
        newest = max(utc(row.updated_at) for row in rows)
        headers["Last-Modified"] = format_datetime(newest.astimezone(UTC), usegmt=True)
    wanted = [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]
    if etag in wanted or "*" in wanted:
        return Response(status_code=304, headers=headers)
    return Response(
        body,
        media_type=MEDIA_TYPE,
        headers={**headers, "Content-Disposition": 'inline; filename="tandem.ics"'},
    )


# -- OpenAPI ------------------------------------------------------------------------------------

OPENAPI_INPUTS: list[type[BaseModel]] = []
OPENAPI_OUTPUTS: list[type[BaseModel]] = []


def openapi_paths() -> dict[str, dict[str, Any]]:
    return {
        "/api/me/calendar.ics": {
            "get": operation(
                "The caller's open tasks with a due date, on boards they may read, as an "
                "iCalendar feed (one event per task, UID `{board}/{task}@tandem`; a date-only "
                "due is an all-day event). A calendar application subscribes with the token "
                "as `?token=`",
                ok=(200, "iCalendar (RFC 5545)", {"text/calendar": {"schema": {"type": "string"}}}),
                query=describe_query(CalendarQuery),
                errors=(401, 403, 422),
                tag="tasks",
            )
        }
    }


routes = [Route("/me/calendar.ics", calendar, methods=["GET"])]
