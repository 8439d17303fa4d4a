"""/api/docs/{id}/share: read-only links to one document.

A share link is a token like any other (`?token=` on the socket and on REST, or
`Authorization: Bearer`), limited to its document, read-only, expiring, and revocable: its id
is the token's id (jti), and revoking it voids the token on every open connection at once.
It opens the document's live content over the socket and `GET …/content`, and its exports
when created with `allow_export`; nothing else (no other document, no writes, no files).
Whoever may write a document may share it.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import insert, select, update
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.access_events import AccessChange
from server.api import state
from server.api.caller import writer
from server.api.describe import READ_ERRORS, WRITE_ERRORS, json_body, operation
from server.api.errors import ApiError, not_found, parse_body
from server.api.fields import Timestamp
from server.auth import issue_token
from server.persistence import workspace
from server.persistence.tables import share_links
from server.persistence.workspace import now

DAY = 24 * 3600
MAX_EXPIRES_IN = 365 * DAY


class ShareCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_in: Annotated[int, Field(ge=60, le=MAX_EXPIRES_IN)] = Field(
        7 * DAY, description="seconds until the link stops working (1 minute to 1 year)"
    )
    allow_export: bool = Field(False, description="the link also opens the document's exports")


class ShareLink(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    doc_id: str
    allow_export: bool
    created_by: str | None
    created_at: Timestamp
    expires_at: Timestamp
    revoked_at: Timestamp | None


class ShareLinkList(BaseModel):
    links: list[ShareLink]


class ShareCreated(BaseModel):
    id: str
    token: str = Field(description="the link's token; shown only in this answer")
    url: str = Field(description="the document's content, opened with the token")
    expires_at: Timestamp


def link_json(row: Any) -> dict[str, Any]:
    return ShareLink.model_validate(row).model_dump(mode="json")


def _secret(request: Request) -> str:
    secret = state.settings(request).secret
    if secret is None:
        raise ApiError(409, "share links need sign-in: set TANDEM_SECRET")
    return secret


async def create_share(request: Request) -> Response:
    """A new read-only link to the document; the answer holds its token, shown only once."""
    doc_id: str = request.path_params["doc_id"]
    user = (await writer(request, doc_id)).user
    body = await parse_body(request, ShareCreate)
    secret = _secret(request)
    share_id = secrets.token_urlsafe(12)
    created = now()
    expires = created + timedelta(seconds=body.expires_in)
    async with state.engine(request).begin() as conn:
        if await workspace.get_document(conn, doc_id) is None:
            raise not_found("document", doc_id)
        await conn.execute(
            insert(share_links).values(
                id=share_id,
                doc_id=doc_id,
                allow_export=body.allow_export,
                created_by=user,
                created_at=created,
                expires_at=expires,
            )
        )
    token = issue_token(
        secret,
        f"share:{share_id}",
        doc=doc_id,
        read_only=True,
        expires=int(expires.timestamp()),
        token_id=share_id,
        share=True,
        export=body.allow_export,
    )
    link = link_json(
        {
            "id": share_id,
            "doc_id": doc_id,
            "allow_export": body.allow_export,
            "created_by": user,
            "created_at": created,
            "expires_at": expires,
            "revoked_at": None,
        }
    )
    path = f"/api/docs/{quote(doc_id, safe='')}/content?token={token}"
    state.audit(request).record(doc_id, user, "share", f"link {share_id}")
    return JSONResponse(
        {
            "id": share_id,
            "token": token,
            "url": str(request.base_url).rstrip("/") + path,
            "expires_at": link["expires_at"],
        },
        201,
    )


async def list_shares(request: Request) -> Response:
    """The document's links, newest first, revoked and expired ones included."""
    doc_id: str = request.path_params["doc_id"]
    await writer(request, doc_id)
    async with state.engine(request).connect() as conn:
        rows = (
            await conn.execute(
                select(share_links)
                .where(share_links.c.doc_id == doc_id)
                .order_by(share_links.c.created_at.desc())
            )
        ).all()
    return JSONResponse({"links": [link_json(row) for row in rows]})


async def revoke_share(request: Request) -> Response:
    """Revoke a link: its token is refused from now on and its open connections close."""
    doc_id: str = request.path_params["doc_id"]
    share_id: str = request.path_params["share_id"]
    user = (await writer(request, doc_id)).user
    async with state.engine(request).begin() as conn:
        result = await conn.execute(
            update(share_links)
            .where(share_links.c.id == share_id, share_links.c.doc_id == doc_id)
            .values(revoked_at=now())
        )
    if result.rowcount != 1:
        raise not_found("share link", share_id)
    await state.access_events(request).publish(
        AccessChange(rules=False, revoked=frozenset({share_id}))
    )
    state.audit(request).record(doc_id, user, "unshare", f"link {share_id}")
    return Response(status_code=204)


routes = [
    Route("/docs/{doc_id}/share", create_share, methods=["POST"]),
    Route("/docs/{doc_id}/share", list_shares, methods=["GET"]),
    Route("/docs/{doc_id}/share/{share_id}", revoke_share, methods=["DELETE"]),
]

OPENAPI_INPUTS: list[type[BaseModel]] = [ShareCreate]
OPENAPI_OUTPUTS: list[type[BaseModel]] = [ShareCreated, ShareLinkList]


def openapi_paths() -> dict[str, dict[str, Any]]:
    return {
        "/api/docs/{doc_id}/share": {
            "post": operation(
                "Create a read-only, expiring, revocable link to the document (writers)",
                ok=(201, "the link and its token (shown once)", json_body(ShareCreated)),
                body=json_body(ShareCreate),
                errors=WRITE_ERRORS,
                tag="access",
            ),
            "get": operation(
                "The document's share links (writers)",
                ok=(200, "its links", json_body(ShareLinkList)),
                errors=READ_ERRORS,
                tag="access",
            ),
        },
        "/api/docs/{doc_id}/share/{share_id}": {
            "delete": operation(
                "Revoke a share link: its token is refused and its connections close at once",
                ok=(204, "revoked", None),
                errors=READ_ERRORS,
                tag="access",
            ),
        },
    }
