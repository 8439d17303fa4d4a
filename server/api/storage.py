"""REST edits when the database cannot store them: refused before they apply, or reported as
applied but not stored yet. Never answered as a success.

A content edit first checks that the writer is storing (`require_storage`): while commits fail
or its queue is at its bound, the edit is refused with 503 and not applied. An edit that was
applied waits for its commit (`stored`); if that does not come within FLUSH_TIMEOUT, the answer
is 503 too, saying that the change is in the live document and queued (it is stored when the
database answers again, unless the server stops first).
"""

from __future__ import annotations

import logging

from starlette.requests import Request

from server.api import state
from server.api.errors import NOTHING_CHANGED, RETRY_AFTER, ApiError

log = logging.getLogger("tandem.api")

# How long an edit waits for its commit before the answer says it is not stored yet. The
# writer retries a failed commit within 0.1 to 2 s, so a shorter outage than this is not seen.
FLUSH_TIMEOUT = 10.0

NOT_STORED = (
    "the database is unavailable; the change was applied to the live document and is queued, "
    "but it is not stored yet: it will be stored when the database answers again (it is lost "
    "if the server stops first); do not send it again"
)


def require_storage(request: Request) -> None:
    """503 (nothing applied) unless the writer is storing edits now."""
    if not state.registry(request).writer.available():
        raise ApiError(503, NOTHING_CHANGED, headers=RETRY_AFTER)


async def stored(request: Request, doc_id: str) -> None:
    """Return once `doc_id`'s edits so far are committed; 503 after FLUSH_TIMEOUT."""
    try:
        await state.registry(request).writer.flush(doc_id, timeout=FLUSH_TIMEOUT)
    except TimeoutError:
        log.warning("%s: a REST edit is not stored yet; the writer keeps retrying", doc_id)
        raise ApiError(503, NOT_STORED, headers=RETRY_AFTER) from None
