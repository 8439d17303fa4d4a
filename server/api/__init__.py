"""The REST API under /api: JSON in and out, errors as `{"error": {...}}`."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from server.api import (
    access,
    activity,
    auth,
    calendar,
    docs,
    files,
    folders,
    live,
    messages,
    notifications,
    openapi,
    preferences,
    progress,
    share,
    task_list,
    tasks,
    text,
    updates,
    users,
    versions,
    watches,
    webhooks,
)
from server.api.doc_ids import check_doc_ids
from server.api.errors import HANDLERS

routes: list[BaseRoute] = [
    *docs.routes,
    *live.routes,
    *updates.routes,
    *text.routes,
    *messages.routes,
    *tasks.routes,
    *versions.routes,
    *folders.routes,
    *files.routes,
    *auth.routes,
    *users.routes,
    *access.routes,
    *share.routes,
    *activity.routes,
    *notifications.routes,
    *task_list.routes,
    *calendar.routes,
    *progress.routes,
    *preferences.routes,
    *watches.routes,
    *webhooks.routes,
    *openapi.routes,
]
check_doc_ids(routes)


def create_api() -> Starlette:
    """The API as an app of its own, mounted at /api, so its errors are JSON."""
    return Starlette(routes=routes, exception_handlers=dict(HANDLERS))
