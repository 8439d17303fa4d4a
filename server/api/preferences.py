"""/api/me/notification-preferences: what the caller wants to hear of, and how.

Each signed-in person sets their own: documents muted (boards, discussions, documents: no
notification from them at all), kinds of event turned off (server/notifications.py KINDS),
and e-mail (`off`, `each` event in its own message, or an hourly `digest`; sent only when
the operator configured an SMTP server). Someone who never set any gets the defaults:
nothing muted, every kind on, no e-mail. A share link, or a token limited to one document,
has no preferences to read or change.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.api import state
from server.api.caller import SHARE_ONLY, principal
from server.api.describe import json_body, operation
from server.api.errors import ApiError, parse_body
from server.api.fields import DocId
from server.auth import Principal
from server.notifications import KINDS, Preferences
from server.persistence.tables import notification_prefs
from server.persistence.workspace import now

MAX_MUTED = 1000


def _kind(value: str) -> str:
    if value not in KINDS:
        raise ValueError(f"unknown kind {value!r}; the kinds are {', '.join(KINDS)}")
    return value


Kind = Annotated[str, AfterValidator(_kind), Field(json_schema_extra={"enum": list(KINDS)})]


class NotificationPreferences(BaseModel):
    """The whole of one person's preferences: PUT replaces them (a field left out is reset
    to its default)."""

    model_config = ConfigDict(extra="forbid")

    muted: Annotated[list[DocId], Field(max_length=MAX_MUTED)] = Field(
        default_factory=list, description="documents (boards, discussions) never notified of"
    )
    off: list[Kind] = Field(default_factory=list, description="kinds of event never notified of")
    email: Literal["off", "each", "digest"] = Field(
        "off", description="e-mail: none, one message per notification, or an hourly digest"
    )


def upsert(conn: AsyncConnection, table: Table) -> Any:
    """An INSERT that can say what to do on a conflict (`on_conflict_do_update` or
    `on_conflict_do_nothing`), in the dialect of `conn` (PostgreSQL or SQLite)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


async def _myself(request: Request, *, change: bool) -> Principal:
    caller = await principal(request)
    if caller.share:
        raise ApiError(403, SHARE_ONLY)
    if caller.doc is not None:
        raise ApiError(403, "this token is limited to one document")
    if change and caller.read_only:
        raise ApiError(403, "this token is read-only")
    return caller


async def get_preferences(request: Request) -> Response:
    """The caller's preferences (the defaults if they never set any)."""
    caller = await _myself(request, change=False)
    async with state.engine(request).connect() as conn:
        data = (
            await conn.execute(
                select(notification_prefs.c.data).where(
                    notification_prefs.c.user_name == caller.user
                )
            )
        ).scalar_one_or_none()
    return JSONResponse(Preferences.from_json(data).to_json())


async def put_preferences(request: Request) -> Response:
    """Replace the caller's preferences; the answer is what was stored (sorted, without
    duplicates)."""
    caller = await _myself(request, change=True)
    body = await parse_body(request, NotificationPreferences)
    stored = Preferences(
        muted=frozenset(body.muted), off=frozenset(body.off), email=body.email
    ).to_json()
    changed = now()
    async with state.engine(request).begin() as conn:
        stmt = upsert(conn, notification_prefs).values(
            user_name=caller.user, data=stored, updated_at=changed
        )
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[notification_prefs.c.user_name],
                set_={"data": stmt.excluded.data, "updated_at": stmt.excluded.updated_at},
            )
        )
    return JSONResponse(stored)


OPENAPI_INPUTS: list[type[BaseModel]] = [NotificationPreferences]
OPENAPI_OUTPUTS: list[type[BaseModel]] = [NotificationPreferences]


def openapi_paths() -> dict[str, dict[str, Any]]:
    return {
        "/api/me/notification-preferences": {
            "get": operation(
                "Your notification preferences (the defaults if never set)",
                ok=(200, "the preferences", json_body(NotificationPreferences)),
                tag="notifications",
            ),
            "put": operation(
                "Replace your notification preferences: muted documents, kinds turned off, "
                "e-mail (off, each, digest)",
                ok=(200, "the preferences as stored", json_body(NotificationPreferences)),
                body=json_body(NotificationPreferences),
                errors=(401, 403, 413, 422),
                tag="notifications",
            ),
        },
    }


routes = [
    Route("/me/notification-preferences", get_preferences, methods=["GET"]),
    Route("/me/notification-preferences", put_preferences, methods=["PUT"]),
]
