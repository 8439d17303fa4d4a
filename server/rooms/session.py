"""The /ws/{doc_id} endpoint: one connection's y-protocols exchange with its room."""

from __future__ import annotations

import logging
import re
import time
from typing import Any
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

from server import descriptors, metrics
from server.auth import AuthError
from server.metrics import TALLY
from server.rooms.enforcer import Enforcer, admit
from server.rooms.flood import FloodGuard, Flooding
from server.rooms.peer import Peer
from server.rooms.registry import LoadFailed, Registry
from server.rooms.room import FULL_CODE, RejectedFrame
from server.rooms.wire import writer_for
from server.settings import Settings
from server.signin import Authenticator
from shared.protocol import DURABLE_PARAM, MSG_AWARENESS

log = logging.getLogger("tandem.rooms")

# Letters of any script, digits, "_", "." and "-"; no separators that could alias keys.
_REJECTED = "tandem.rejected"
_CLOSE = "tandem.close"
DOC_ID = re.compile(r"\w[\w.-]{0,127}")
PRESENCE = bytes((MSG_AWARENESS,))  # the first byte of a presence (awareness) message


PREFIX = "/ws/"  # the endpoint's path: PREFIX + document id


async def serve(scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one WebSocket: authenticate, join the room, relay frames until it closes."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    registry: Registry = scope["state"]["registry"]
    settings: Settings = scope["state"]["settings"]
    auth: Authenticator = scope["state"]["auth"]
    doc_id = scope["path"][len(PREFIX) :]  # SyncFirst routes only PREFIX paths here
    client = "{}:{}".format(*tuple(scope.get("client") or ("?", 0)))

    async def close(code: int, reason: str) -> None:
        try:
            await send({"type": "websocket.close", "code": code, "reason": _fit(reason)})
        except OSError:  # the client is gone already
            pass

    wire = writer_for(scope)
    if wire is None:
        log.error("the WebSocket server is not Tandem's; start it with `tandem serve`")
        await send({"type": "websocket.close", "code": 1011})
        return
    await send({"type": "websocket.accept"})
    if not DOC_ID.fullmatch(doc_id):
        await close(4400, "invalid document id")
        return
    token, durable = _query(scope)
    try:
        principal = await auth.authenticate(token)
        admission = await admit(scope["state"]["access"], principal, doc_id)
    except AuthError as exc:
        log.info("ws refused doc=%s client=%s: %s", doc_id, client, exc.reason)
        await close(exc.code, exc.reason)
        return
    wire.release_handshake()  # the token was the last thing read from the headers
    try:
        room = await registry.acquire(doc_id, warm=False)
    except LoadFailed:
        await close(1011, "document could not be loaded; try again later")
        return
    if room.deleted:
        registry.release(doc_id)
        log.info("ws refused doc=%s client=%s: deleted", doc_id, client)
        await close(4404, "document was deleted")
        return

    enforcer: Enforcer = scope["state"]["enforcer"]
    if not enforcer.connected(principal):
        registry.release(doc_id)
        limit = enforcer.max_connections_per_user
        log.warning("ws refused doc=%s user=%s: over %d connections", doc_id, principal.user, limit)
        await close(4429, f"too many connections for this user (at most {limit})")
        return
    peer = Peer(
        wire.transport,
        user=principal.user,
        read_only=admission.read_only,
        buffer_limit=settings.send_buffer_bytes,
        fd=wire.direct_fd(),
        principal=principal,
        durable=durable,
    )
    peer.identity = admission.identity
    guard = FloodGuard(
        settings.max_messages_per_second,
        settings.max_bytes_per_second,
        settings.max_throttled_seconds,
    )
    started = time.monotonic()
    frames = 0
    code: Any = None
    reason = ""
    metrics.CONNECTIONS.inc()
    metrics.CONNECTIONS_TOTAL.inc()
    descriptors.opened()
    log.info(
        "ws open doc=%s peer=%d user=%s client=%s%s%s",
        doc_id,
        peer.id,
        principal.user,
        client,
        " read-only" if admission.read_only else "",
        " durable" if durable else "",
    )
    scope["state"]["audit"].record(doc_id, principal.user, "connect", client)

    def deliver(data: bytes) -> None:
        """The per-message hot path, called by the protocol as each frame is parsed."""
        nonlocal frames
        frames += 1
        TALLY.frames_in += 1
        TALLY.bytes_in += len(data)
        try:
            wait = guard.take(len(data))
            if wait and data[:1] == PRESENCE:
                # Presence is relayed to every peer and replaced by the next state anyway:
                # no honest client sends it faster than its allowance.
                raise Flooding(guard.describe())
            room.receive(peer, data)
            if wait:
                wire.throttle(wait)  # read nothing more until the buckets have refilled
        except RejectedFrame as exc:
            wire.handler = None  # later frames wait in the queue behind the rejection
            wire.post({"type": _REJECTED, "code": exc.code, "reason": exc.reason})
        except Exception:
            log.exception("error handling a frame doc=%s peer=%d", doc_id, peer.id)
            wire.handler = None
            wire.post({"type": _REJECTED, "code": 1011, "reason": "internal error"})

    def backlog(backed_up: bool) -> None:
        peer.backed_up(backed_up)
        room.rewired()

    def shut(code: int, reason: str) -> None:
        wire.handler = None  # frames after this wait in the queue behind the close
        wire.post({"type": _CLOSE, "code": code, "reason": reason})

    try:
        # Wired before the greeting's first byte: a greeting the socket takes only in part
        # must mark the peer as backlogged, or direct writes would overtake its rest.
        peer.close = shut
        wire.on_backlog = backlog
        wire.on_lost = lambda: room.leave(peer)
        if wire.backlogged():
            peer.backed_up(True)  # the handshake's response is still in the transport
        room.join(peer)
        wire.handler = deliver
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                data = message.get("bytes")
                if data is None:
                    raise RejectedFrame(1003, "text frames are not y-protocols messages")
                deliver(data)
            elif kind == _REJECTED:
                raise RejectedFrame(message["code"], message["reason"])
            elif kind == _CLOSE:
                code, reason = message["code"], message["reason"]
                room.leave(peer)  # nothing may follow the close frame
                await close(code, reason)
                break
            else:
                code = message.get("code")
                reason = message.get("reason") or ""
                break
    except RejectedFrame as exc:
        code, reason = exc.code, exc.reason
        metrics.REJECTED_FRAMES.labels(str(exc.code)).inc()
        if code != FULL_CODE:  # the writer warns of a full queue itself, once a minute
            log.warning("ws rejected frame doc=%s peer=%d: %d %s", doc_id, peer.id, code, reason)
        room.leave(peer)
        await close(exc.code, exc.reason)
    finally:
        wire.handler = wire.on_backlog = wire.on_lost = None
        peer.closed = True
        room.leave(peer)
        registry.release(doc_id)
        enforcer.disconnected(principal)
        metrics.CONNECTIONS.dec()
        descriptors.closed()
        log.info(
            "ws close doc=%s peer=%d code=%s reason=%r frames=%d seconds=%.1f",
            doc_id,
            peer.id,
            code,
            reason,
            frames,
            time.monotonic() - started,
        )


def _query(scope: Scope) -> tuple[str | None, bool]:
    """The token (query parameter `token`, else an `Authorization: Bearer` header) and
    whether the client asks for durable acknowledgements (`durable=1`)."""
    raw: bytes = scope.get("query_string", b"")
    query = parse_qs(raw.decode("latin-1"))
    durable = query.get(DURABLE_PARAM, ("0",))[-1].lower() in ("1", "true")
    if "token" in query:
        return query["token"][0], durable
    for name, value in scope.get("headers", []):
        if name == b"authorization" and value.lower().startswith(b"bearer "):
            token: str = value[7:].decode("latin-1")
            return token, durable
    return None, durable


def _fit(reason: str) -> str:
    """A close reason must fit in 123 bytes of UTF-8."""
    raw = reason.encode("utf-8")[:123]
    return raw.decode("utf-8", errors="ignore")
