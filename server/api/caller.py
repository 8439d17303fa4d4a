"""Who is calling: the principal of `Authorization: Bearer T`, and what it may do.

`reader` and `writer` check, in this order: the token (401), its scope (a token limited to
one document, a read-only token, a share link), then the access rules for the document
(server/access.py); each refusal is a 403 that says which. Routes that work on a folder or a
file check the folder with `folder_access`; lists filter with `state.access(request)`.
"""

from __future__ import annotations

import math

from starlette.requests import Request

from server.access import Access, at_least
from server.api import state
from server.api.errors import ApiError
from server.auth import AuthError, Principal
from server.limits import SlidingWindow
from server.signin import Authenticator

SHARE_ONLY = "a share link opens its own document's content and exports, nothing else"


async def principal(request: Request) -> Principal:
    """The caller; without sign-in configured, the local user. 401 for a bad token or a
    disabled user."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    token = credentials.strip() if scheme.lower() == "bearer" else None
    # A download link in a browser cannot send a header; the token may come as ?token=.
    token = token or request.query_params.get("token") or None
    auth: Authenticator = request.state.auth
    try:
        caller = await auth.authenticate(token)
    except AuthError as exc:
        raise ApiError(401, exc.reason, headers={"WWW-Authenticate": "Bearer"}) from None
    access = state.access(request)
    if access.enabled and not caller.share and not (await access.person(caller.user)).active:
        raise ApiError(401, "this user is disabled", headers={"WWW-Authenticate": "Bearer"})
    return caller


async def reader(
    request: Request, doc_id: str | None = None, *, share_ok: bool = False
) -> Principal:
    """A caller who may read `doc_id` (None: the workspace as a whole, whose lists the route
    filters). `share_ok`: the route is one a share link opens (content, exports)."""
    caller = await principal(request)
    if caller.share and not (share_ok and doc_id == caller.doc):
        raise ApiError(403, SHARE_ONLY)
    if caller.doc is not None and caller.doc != doc_id:
        raise ApiError(403, "this token is limited to one document")
    if doc_id is not None and not caller.share:
        await _require(request, caller, doc_id, "read")
    return caller


async def writer(request: Request, doc_id: str | None = None) -> Principal:
    """A caller who may change `doc_id` (None: the workspace as a whole)."""
    caller = await principal(request)
    if caller.share:
        raise ApiError(403, SHARE_ONLY)
    if caller.doc is not None and caller.doc != doc_id:
        raise ApiError(403, "this token is limited to one document")
    if caller.read_only:
        raise ApiError(403, "this token is read-only")
    if doc_id is not None:
        await _require(request, caller, doc_id, "write")
    return caller


def count_creation(request: Request, caller: Principal) -> None:
    """One more document or folder created by `caller` this minute; 429 past the limit.
    Only signed-in users are counted (without sign-in there is one, local, user)."""
    if not state.access(request).enabled:
        return
    app_state = request.app.state
    window: SlidingWindow | None = getattr(app_state, "creations", None)
    if window is None:
        limit = state.settings(request).max_creations_per_minute
        window = SlidingWindow(limit, 60.0, name="creations")
        app_state.creations = window
    wait = window.retry_after(caller.user)
    if wait > 0:
        raise ApiError(
            429,
            f"more than {window.limit} documents and folders created in a minute; "
            f"try again in {math.ceil(wait)} s",
            headers={"Retry-After": str(math.ceil(wait))},
        )
    window.record(caller.user)


async def _require(request: Request, caller: Principal, doc_id: str, needed: Access) -> None:
    level = await state.access(request).document(caller.user, doc_id)
    if not at_least(level, needed):
        if level == "read":
            raise ApiError(403, f"you may read document {doc_id} but not change it")
        raise ApiError(403, f"you have no access to document {doc_id}")


async def folder_access(
    request: Request, caller: Principal, folder_id: int, needed: Access, *, field: str | None = None
) -> None:
    """403 unless `caller` has `needed` access to the folder (and what it holds)."""
    level = await state.access(request).folder(caller.user, folder_id)
    if not at_least(level, needed):
        what = "change" if needed == "write" else "open"
        raise ApiError(403, f"you may not {what} folder {folder_id}", field=field)
