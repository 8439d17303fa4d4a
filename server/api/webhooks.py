"""/api/webhooks: outgoing webhooks of the workspace (admins only).

A webhook receives every event of the sidecar (or the kinds it lists) from its creation on,
as signed POSTs retried until acknowledged, in order per document; server/sidecar/webhooks.py
describes the requests and how to check their signature. Its secret is shown once, in the
answer that creates it; lists show how many deliveries still wait for an acknowledgement.
Only an admin may see or change webhooks (the local user when there is no sign-in): they
carry every event of every document to another system.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import delete, func, insert, select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.api import state
from server.api.auth import sign_in_off
from server.api.caller import principal
from server.api.describe import json_body, operation, query
from server.api.errors import ApiError, not_found, parse_body, parse_query
from server.api.fields import Timestamp
from server.auth import Principal
from server.notifications import KINDS
from server.persistence import users as accounts
from server.persistence.tables import events, webhook_deliveries, webhooks
from server.persistence.workspace import now
from server.sidecar.webhooks import pending_counts

ADMIN_ONLY = "only an admin may see and change webhooks"
MAX_URL_CHARS = 2000


def _url(value: str) -> str:
    if len(value) > MAX_URL_CHARS:
        raise ValueError(f"at most {MAX_URL_CHARS} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("a URL has no spaces or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError:
        raise ValueError("not a URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("an http:// or https:// URL is required")
    if not parts.hostname:
        raise ValueError("the URL names no host")
    return value


def _kind(value: str) -> str:
    if value not in KINDS:
        raise ValueError(f"not an event kind (they are: {', '.join(KINDS)})")
    return value


def _kinds(value: list[str] | None) -> list[str] | None:
    return None if value is None else sorted(set(value), key=KINDS.index)


Url = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(_url)]
Kind = Annotated[str, AfterValidator(_kind)]
Secret = Annotated[str, StringConstraints(min_length=16, max_length=200)]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Url = Field(description="where events are POSTed (http or https)")
    secret: Secret | None = Field(
        None, description="the HMAC-SHA256 key of the signatures; default: a random one"
    )
    kinds: Annotated[list[Kind] | None, Field(min_length=1), AfterValidator(_kinds)] = Field(
        None, description="the event kinds to send; default (null): all"
    )


class _WebhookFields(BaseModel):
    id: int
    url: str
    kinds: list[str] | None
    active: bool
    created_by: str | None
    created_at: Timestamp


class Webhook(_WebhookFields):
    pending: int = Field(description="deliveries not acknowledged yet")


class WebhookCreated(_WebhookFields):
    secret: str = Field(description="the signing key; shown only in this answer")


class WebhookList(BaseModel):
    webhooks: list[Webhook]


class DeliveryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(50, ge=1, le=500, description="at most this many, newest first")
    pending: bool | None = Field(
        None, description="true: only those not acknowledged yet; false: only acknowledged ones"
    )


class Delivery(BaseModel):
    id: int
    event_id: int
    kind: str
    doc_id: str
    attempts: int = Field(description="attempts made so far")
    next_attempt_at: Timestamp | None = Field(description="null once acknowledged")
    delivered_at: Timestamp | None = Field(description="when the receiver acknowledged it")
    last_error: str | None = Field(description="what went wrong at the last failed attempt")


class DeliveryList(BaseModel):
    deliveries: list[Delivery]


async def _admin(request: Request) -> Principal:
    """An admin (or anyone when there is no sign-in); 403 otherwise."""
    caller = await principal(request)
    if caller.doc is not None:
        raise ApiError(403, "this token is limited to one document")
    if sign_in_off(request):
        return caller
    if caller.read_only:
        raise ApiError(403, "this token is read-only")
    async with state.engine(request).connect() as conn:
        if not await accounts.is_admin(conn, caller.user):
            raise ApiError(403, ADMIN_ONLY)
    return caller


def _webhook_json(row: Any, pending: int) -> dict[str, Any]:
    return Webhook(
        id=row.id,
        url=row.url,
        kinds=row.kinds,
        active=row.active,
        created_by=row.created_by,
        created_at=row.created_at,
        pending=pending,
    ).model_dump(mode="json")


async def create_webhook(request: Request) -> Response:
    """A new webhook; the answer holds its secret, shown only once."""
    caller = await _admin(request)
    body = await parse_body(request, WebhookCreate)
    secret = body.secret if body.secret is not None else secrets.token_urlsafe(32)
    created = now()
    async with state.engine(request).begin() as conn:
        webhook_id = (
            await conn.execute(
                insert(webhooks)
                .values(
                    url=body.url,
                    secret=secret,
                    kinds=body.kinds,
                    active=True,
                    created_by=caller.user,
                    created_at=created,
                )
                .returning(webhooks.c.id)
            )
        ).scalar_one()
    answer = WebhookCreated(
        id=webhook_id,
        url=body.url,
        kinds=body.kinds,
        active=True,
        created_by=caller.user,
        created_at=created,
        secret=secret,
    )
    return JSONResponse(
        answer.model_dump(mode="json"),
        201,
        headers={"Location": f"/api/webhooks/{webhook_id}", "Cache-Control": "no-store"},
    )


async def list_webhooks(request: Request) -> Response:
    """Every webhook, oldest first, without secrets."""
    await _admin(request)
    async with state.engine(request).connect() as conn:
        rows = (await conn.execute(select(webhooks).order_by(webhooks.c.id))).all()
        pending = await pending_counts(conn)
    return JSONResponse({"webhooks": [_webhook_json(row, pending.get(row.id, 0)) for row in rows]})


async def delete_webhook(request: Request) -> Response:
    """Delete a webhook and what it had still to deliver."""
    await _admin(request)
    webhook_id: int = request.path_params["webhook_id"]
    async with state.engine(request).begin() as conn:
        # Explicitly, not only by the foreign key's cascade: a sender that is mid-attempt
        # then updates no row.
        await conn.execute(
            delete(webhook_deliveries).where(webhook_deliveries.c.webhook_id == webhook_id)
        )
        gone = await conn.execute(delete(webhooks).where(webhooks.c.id == webhook_id))
        if gone.rowcount == 0:
            raise not_found("webhook", webhook_id)
    return Response(status_code=204)


async def list_deliveries(request: Request) -> Response:
    """A webhook's deliveries, newest first."""
    await _admin(request)
    webhook_id: int = request.path_params["webhook_id"]
    params = parse_query(request, DeliveryQuery)
    d = webhook_deliveries
    stmt = (
        select(
            d.c.id,
            d.c.event_id,
            events.c.kind,
            d.c.doc_id,
            d.c.attempts,
            d.c.next_attempt_at,
            d.c.delivered_at,
            d.c.last_error,
        )
        .select_from(d.join(events, events.c.id == d.c.event_id))
        .where(d.c.webhook_id == webhook_id)
        .order_by(d.c.id.desc())
        .limit(params.limit)
    )
    if params.pending is not None:
        stmt = stmt.where(
            d.c.delivered_at.is_(None) if params.pending else d.c.delivered_at.is_not(None)
        )
    async with state.engine(request).connect() as conn:
        known = await conn.scalar(
            select(func.count()).select_from(webhooks).where(webhooks.c.id == webhook_id)
        )
        if not known:
            raise not_found("webhook", webhook_id)
        rows = (await conn.execute(stmt)).all()
    deliveries = [
        Delivery(
            id=row.id,
            event_id=row.event_id,
            kind=row.kind,
            doc_id=row.doc_id,
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at if row.delivered_at is None else None,
            delivered_at=row.delivered_at,
            last_error=row.last_error,
        ).model_dump(mode="json")
        for row in rows
    ]
    return JSONResponse({"deliveries": deliveries})


# -- OpenAPI ------------------------------------------------------------------------------------

OPENAPI_INPUTS: list[type[BaseModel]] = [WebhookCreate]
OPENAPI_OUTPUTS: list[type[BaseModel]] = [Webhook, WebhookCreated, WebhookList, DeliveryList]


def openapi_paths() -> dict[str, dict[str, Any]]:
    return {
        "/api/webhooks": {
            "post": operation(
                "Create a webhook: every event (or the kinds listed) POSTed to the URL, signed "
                "with HMAC-SHA256, retried until a 2xx, in order per document (admin)",
                ok=(201, "the webhook and its secret (shown once)", json_body(WebhookCreated)),
                body=json_body(WebhookCreate),
                errors=(401, 403, 413, 422),
                tag="webhooks",
            ),
            "get": operation(
                "The webhooks, without their secrets, with their pending deliveries (admin)",
                ok=(200, "the webhooks", json_body(WebhookList)),
                errors=(401, 403),
                tag="webhooks",
            ),
        },
        "/api/webhooks/{webhook_id}": {
            "delete": operation(
                "Delete a webhook and what it had still to deliver (admin)",
                ok=(204, "deleted", None),
                errors=(401, 403, 404),
                tag="webhooks",
            ),
        },
        "/api/webhooks/{webhook_id}/deliveries": {
            "get": operation(
                "A webhook's deliveries, newest first: attempts, last error, acknowledged when "
                "(admin)",
                ok=(200, "the deliveries", json_body(DeliveryList)),
                query=query(DeliveryQuery),
                errors=(401, 403, 404, 422),
                tag="webhooks",
            ),
        },
    }


routes = [
    Route("/webhooks", list_webhooks, methods=["GET"]),
    Route("/webhooks", create_webhook, methods=["POST"]),
    Route("/webhooks/{webhook_id:int}", delete_webhook, methods=["DELETE"]),
    Route("/webhooks/{webhook_id:int}/deliveries", list_deliveries, methods=["GET"]),
]
