"""Who is calling: the principal of `Authorization: Bearer T`, and what it may do."""

from __future__ import annotations

from starlette.requests import Request

from server.api import state
from server.api.errors import ApiError
from server.auth import AuthError, Principal, authenticate


def principal(request: Request) -> Principal:
    """The caller; without a configured secret, the local user. 401 for a bad token."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    token = credentials.strip() if scheme.lower() == "bearer" else None
    # A download link in a browser cannot send a header; the token may come as ?token=.
    token = token or request.query_params.get("token") or None
    try:
        return authenticate(state.settings(request).secret, token)
    except AuthError as exc:
        raise ApiError(401, exc.reason, headers={"WWW-Authenticate": "Bearer"}) from None


def reader(request: Request, doc_id: str | None = None) -> Principal:
    """A caller who may read `doc_id` (None: the workspace as a whole)."""
    caller = principal(request)
    if caller.doc is not None and caller.doc != doc_id:
        raise ApiError(403, "this token is limited to one document")
    return caller


def writer(request: Request, doc_id: str | None = None) -> Principal:
    """A caller who may change `doc_id` (None: the workspace as a whole)."""
    caller = reader(request, doc_id)
    if caller.read_only:
        raise ApiError(403, "this token is read-only")
    return caller
