"""The document id in `/api/docs/{doc_id}...` paths, checked once for every such route.

A malformed id is 422 naming the rule, before the handler (or authentication) runs: the
same rule and the same order as the WebSocket endpoint, which closes with 4400. A
well-formed id that names no document stays the handler's 404.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.errors import error_response
from server.api.fields import DOC_ID_RULE
from server.rooms.session import DOC_ID

FIELD = "doc_id"


def _checked(app: ASGIApp) -> ASGIApp:
    async def check(scope: Scope, receive: Receive, send: Send) -> None:
        if not DOC_ID.fullmatch(scope["path_params"][FIELD]):
            response = error_response(422, f"{FIELD}: {DOC_ID_RULE}", field=FIELD)
            await response(scope, receive, send)
            return
        await app(scope, receive, send)

    check.checks_doc_id = True  # type: ignore[attr-defined]
    return check


def check_doc_ids(routes: Iterable[BaseRoute]) -> None:
    """Make each route with a `{doc_id}` path parameter check it (once, however often this
    is called)."""
    for route in routes:
        if (
            isinstance(route, Route)
            and FIELD in route.param_convertors
            and not getattr(route.app, "checks_doc_id", False)
        ):
            route.app = _checked(route.app)
