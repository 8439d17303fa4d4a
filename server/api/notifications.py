"""/api/notifications: the caller's notifications, unread first; marking them read; and a
live stream of new ones as server-sent events, resumable with Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import func, select, update
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from server.api import state
from server.api.caller import SHARE_ONLY, principal
from server.api.describe import json_body, operation, query
from server.api.errors import ApiError, not_found, parse_body, parse_query
from server.auth import Principal
from server.notification_hub import NotificationHub, joined
from server.notifications import notification_json
from server.persistence.tables import notifications
from server.sidecar.clock import SystemClock

KEEP_ALIVE_SECONDS = 15.0
BACKLOG = 1000  # notifications a resumed stream catches up with at most


class NotificationQuery(BaseModel):
    unread: bool | None = Field(None, description="only unread (true) or only read (false)")
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0)


class Notification(BaseModel):
    id: int
    event_id: int
    kind: str
    doc_id: str
    task_id: str | None
    message_id: str | None
    actor: str | None
    created_at: str | None
    read: bool
    read_at: str | None
    data: dict[str, Any]


class NotificationList(BaseModel):
    notifications: list[Notification]
    unread: int
    total: int
    next_offset: int | None


class MarkRead(BaseModel):
    ids: list[int] | None = Field(None, description="these; absent: all of the caller's")


class Marked(BaseModel):
    marked: int


async def _caller(request: Request) -> Principal:
    caller = await principal(request)
    if caller.share:
        raise ApiError(403, SHARE_ONLY)
    return caller


async def list_notifications(request: Request) -> Response:
    caller = await _caller(request)
    params = parse_query(request, NotificationQuery)
    mine = notifications.c.user_name == caller.user
    selection = joined().where(mine)
    if params.unread is not None:
        selection = selection.where(
            notifications.c.read_at.is_(None)
            if params.unread
            else notifications.c.read_at.is_not(None)
        )
    async with state.engine(request).connect() as conn:
        rows = (
            await conn.execute(
                selection.order_by(notifications.c.read_at.is_not(None), notifications.c.id.desc())
                .limit(params.limit + 1)
                .offset(params.offset)
            )
        ).all()
        counts = (
            await conn.execute(
                select(
                    func.count(),
                    func.count().filter(notifications.c.read_at.is_(None)),
                ).where(mine)
            )
        ).one()
    more = len(rows) > params.limit
    return JSONResponse(
        {
            "notifications": [notification_json(r) for r in rows[: params.limit]],
            "unread": counts[1],
            "total": counts[0],
            "next_offset": params.offset + params.limit if more else None,
        }
    )


async def mark_one(request: Request) -> Response:
    caller = await _caller(request)
    try:
        note_id = int(request.path_params["note_id"])
    except ValueError:
        raise not_found("notification", request.path_params["note_id"]) from None
    async with state.engine(request).begin() as conn:
        done = await conn.execute(
            update(notifications)
            .where(notifications.c.id == note_id, notifications.c.user_name == caller.user)
            .values(read_at=func.coalesce(notifications.c.read_at, SystemClock().now()))
        )
    if done.rowcount == 0:
        raise not_found("notification", note_id)
    return Response(status_code=204)


async def mark_many(request: Request) -> Response:
    caller = await _caller(request)
    body = await parse_body(request, MarkRead) if await request.body() else MarkRead(ids=None)
    where = [notifications.c.user_name == caller.user, notifications.c.read_at.is_(None)]
    if body.ids is not None:
        where.append(notifications.c.id.in_(body.ids))
    async with state.engine(request).begin() as conn:
        done = await conn.execute(
            update(notifications).where(*where).values(read_at=SystemClock().now())
        )
    return JSONResponse({"marked": done.rowcount})


async def stream(request: Request) -> Response:
    caller = await _caller(request)
    hub: NotificationHub = request.state.notification_hub
    resume = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    after: int | None = None
    if resume:
        try:
            after = int(resume)
        except ValueError:
            raise ApiError(
                422, "Last-Event-ID is a notification id", field="last_event_id"
            ) from None
    queue, start = await hub.subscribe(caller.user)
    engine = state.engine(request)

    async def events() -> AsyncIterator[str]:
        sent = start
        try:
            yield ": connected\n\n"
            if after is not None and after < start:
                async with engine.connect() as conn:
                    rows = (
                        await conn.execute(
                            joined()
                            .where(
                                notifications.c.user_name == caller.user,
                                notifications.c.id > after,
                                notifications.c.id <= start,
                            )
                            .order_by(notifications.c.id)
                            .limit(BACKLOG)
                        )
                    ).all()
                for row in rows:
                    yield _event(notification_json(row))
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), KEEP_ALIVE_SECONDS)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if item is None:
                    return  # fell behind: the client reconnects with Last-Event-ID
                if item["id"] <= sent:
                    continue
                sent = item["id"]
                yield _event(item)
        finally:
            hub.unsubscribe(caller.user, queue)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _event(item: dict[str, Any]) -> str:
    data = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
    return f"id: {item['id']}\nevent: notification\ndata: {data}\n\n"


routes = [
    Route("/notifications", list_notifications, methods=["GET"]),
    Route("/notifications/stream", stream, methods=["GET"]),
    Route("/notifications/read", mark_many, methods=["POST"]),
    Route("/notifications/{note_id}/read", mark_one, methods=["POST"]),
]

OPENAPI_INPUTS: list[type[BaseModel]] = [MarkRead]
OPENAPI_OUTPUTS: list[type[BaseModel]] = [NotificationList, Marked]


def openapi_paths() -> dict[str, dict[str, Any]]:
    tag = "notifications"
    return {
        "/api/notifications": {
            "get": operation(
                "The caller's notifications, unread first, newest first",
                ok=(200, "a page of notifications", json_body(NotificationList)),
                query=query(NotificationQuery),
                errors=(401, 403, 422),
                tag=tag,
            )
        },
        "/api/notifications/stream": {
            "get": operation(
                "New notifications as server-sent events (`event: notification`, `id` the "
                "notification id, `data` its JSON); send Last-Event-ID to resume",
                ok=(200, "an event stream", {"text/event-stream": {"schema": {"type": "string"}}}),
                errors=(401, 403, 422),
                tag=tag,
            )
        },
        "/api/notifications/read": {
            "post": operation(
                "Mark the listed notifications (or all) read",
                ok=(200, "how many were marked", json_body(Marked)),
                body=json_body(MarkRead),
                errors=(401, 403, 422),
                tag=tag,
            )
        },
        "/api/notifications/{note_id}/read": {
            "post": operation(
                "Mark one notification read",
                ok=(204, "marked", None),
                errors=(401, 403, 404),
                tag=tag,
            )
        },
    }
