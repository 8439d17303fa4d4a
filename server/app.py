"""create_app(): the ASGI application and the lifespan that wires storage and rooms."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from server import __version__, apidocs, demo
from server.access import AccessControl
from server.access_events import (
    PG_CHANNEL,
    AccessChange,
    LocalAccessEvents,
    SharedAccessEvents,
)
from server.api import create_api
from server.api.auth import log_sign_in_status
from server.audit import AuditLog
from server.blobs import FileBlobStore
from server.catalog import Catalog
from server.leases import compaction_lease, relay_commits
from server.metrics import PROCESS_INFO
from server.notification_hub import NotificationHub
from server.persistence import migrate
from server.persistence.listen import listen
from server.persistence.memory import MemoryStore
from server.persistence.sql import SqlStore, create_engine
from server.persistence.store import Store, UpdateRecord
from server.persistence.writer import Writer
from server.provisioning import Provisioner
from server.rooms import session
from server.rooms.broker import RedisBroker
from server.rooms.enforcer import Enforcer
from server.rooms.registry import Registry
from server.settings import Settings
from server.sidecar.service import Sidecar
from server.signin import Authenticator

log = logging.getLogger("tandem")


class SchemaOutOfDate(RuntimeError):
    pass


class RedisUnavailable(RuntimeError):
    pass


@contextlib.asynccontextmanager
async def lifespan_for(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    with contextlib.ExitStack() as scratch:
        async with _running(settings, scratch) as state:
            yield state


@contextlib.asynccontextmanager
async def _running(
    settings: Settings, scratch: contextlib.ExitStack
) -> AsyncIterator[dict[str, Any]]:
    # First: a sign-in configuration it refuses stops the start before anything is opened.
    auth = Authenticator.from_settings(settings)
    store: Store
    if settings.in_memory:
        # Documents only in memory (benchmarks, trials); workspace metadata in a scratch
        # SQLite file that goes away with the process.
        folder = scratch.enter_context(tempfile.TemporaryDirectory(prefix="tandem-"))
        engine = create_engine(f"sqlite+aiosqlite:///{folder}/workspace.db")
        await migrate.upgrade(engine)
        store = MemoryStore()
    else:
        engine = create_engine(
            settings.database_url, sqlite_synchronous=settings.sqlite_synchronous
        )
        if settings.is_sqlite:
            await migrate.ensure_current(engine)
        elif await migrate.current(engine) != migrate.head():
            await engine.dispose()
            raise SchemaOutOfDate("the database schema is not current: run `tandem db upgrade`")
        store = SqlStore(engine)
    writer = Writer(
        store,
        delay=settings.commit_delay_ms / 1000,
        compact_after_updates=settings.compact_after_updates,
        compact_after_bytes=settings.compact_after_bytes,
        max_pending_bytes=settings.max_pending_bytes,
    )
    registry = Registry(
        store,
        writer,
        grace=settings.room_grace_seconds,
        max_document_bytes=settings.max_document_bytes,
        presence_interval=settings.presence_interval_ms / 1000,
    )
    # Documents that clients create or rename over the socket: their records follow the
    # content. With documents in memory there are no rows to keep up to date.
    catalog = None if settings.in_memory else Catalog(engine, store, registry)
    audit = AuditLog(engine)

    # Access rules, and their changes reaching open connections (server/rooms/enforcer.py).
    access = AccessControl(engine, enabled=not auth.open)
    # Live notification streams of this process; the sidecar in this process (unless turned
    # off, or documents are only in memory) is woken at each commit, shares the access
    # rules, and hands its notifications to the streams at once.
    hub = NotificationHub(engine, poll_seconds=settings.sidecar_poll_ms / 1000)
    sidecar: Sidecar | None = None
    if settings.sidecar and not settings.in_memory:
        sidecar = Sidecar(engine, settings, access=access)
        sidecar.listeners.append(hub.nudge)
    relay: Callable[[], None] | None = None  # commits told to the sidecar of another process

    def committed(row: UpdateRecord) -> None:
        if catalog is not None:
            catalog.changed(row.doc_id)
        audit.edited(row)
        if sidecar is not None:
            sidecar.changed()
            if relay is not None:
                relay()

    writer.on_commit = committed
    enforcer = Enforcer(
        registry, access, max_connections_per_user=settings.max_connections_per_user
    )
    broker: RedisBroker | None = None
    access_events: LocalAccessEvents
    if settings.redis_url:
        broker = RedisBroker(
            settings.redis_url,
            registry,
            prefix=settings.redis_prefix,
            stream_length=settings.redis_stream_length,
        )
        access_events = SharedAccessEvents(broker)
        if sidecar is not None and settings.is_sqlite:
            relay = relay_commits(broker, lambda: sidecar.leading, sidecar.changed)

        async def recheck() -> None:
            # Revocations and rule changes told while Redis was unreachable were missed.
            await enforcer.load_revoked(engine)
            await access_events.publish(AccessChange())

        broker.recovery_hooks.append(recheck)
    else:
        access_events = LocalAccessEvents()
    access_events.subscribe(enforcer.apply)
    await enforcer.load_revoked(engine)
    # `tandem user ...` changes users in the database directly; on PostgreSQL it NOTIFYs.
    access_listener = None
    if engine.dialect.name == "postgresql":
        pending: set[asyncio.Task[None]] = set()

        def heard() -> None:
            task = asyncio.get_running_loop().create_task(access_events.deliver(AccessChange()))
            pending.add(task)
            task.add_done_callback(pending.discard)

        access_listener = await listen(engine, PG_CHANNEL, heard)
    if broker is not None:
        try:
            await broker.start()
        except Exception as exc:
            await broker.close()
            await engine.dispose()
            raise RedisUnavailable(
                f"Redis at {settings.redis_url} does not answer ({exc}); "
                "TANDEM_REDIS_URL is set, so documents are shared through it"
            ) from exc
        registry.broker = broker
        PROCESS_INFO.labels(process=broker.process_id, pid=str(os.getpid())).set(1)
        writer.lease = compaction_lease(broker)
    auth.is_revoked = enforcer.is_revoked
    if auth.idp is not None:
        auth.on_external_user = Provisioner(engine, settings.jwt_user_claim)
    blobs = FileBlobStore(settings.blob_dir)
    swept = await asyncio.to_thread(blobs.sweep_stale_uploads)
    if swept:
        log.warning("removed %d unfinished uploads left by an earlier process", swept)
    commit_loop = asyncio.get_running_loop().create_task(writer.run())
    if sidecar is not None:
        sidecar.start()
    where = "memory (nothing is stored)" if settings.in_memory else engine.url.render_as_string()
    log.info("tandem %s ready; documents in %s", __version__, where)
    try:
        if settings.demo:
            await demo.seed(engine, registry)
        await log_sign_in_status(engine, settings)
        yield {
            "settings": settings,
            "auth": auth,
            "store": store,
            "writer": writer,
            "registry": registry,
            "engine": engine,
            "blobs": blobs,
            "access": access,
            "access_events": access_events,
            "enforcer": enforcer,
            "audit": audit,
            "notification_hub": hub,
            "sidecar": sidecar,
            "broker": broker,
        }
    finally:
        auth.close()
        if access_listener is not None:
            with contextlib.suppress(Exception):
                await access_listener.close()
        await hub.close()
        if sidecar is not None:
            await sidecar.stop()
        await registry.close()
        await writer.close()
        if broker is not None:
            await broker.close()
        if catalog is not None:
            await catalog.close()
        await audit.close()
        commit_loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await commit_loop
        await store.close()
        await engine.dispose()
        log.info("tandem stopped; every update committed: %s", writer.uncommitted() == 0)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """200 while edits are being stored; 503 when the database does not answer within 2 s or
    the writer cannot store (commits fail or stall, or its queue is at its bound), or, with
    TANDEM_REDIS_URL set, while Redis is unreachable."""
    writer: Writer = request.state.writer
    try:
        await asyncio.wait_for(request.state.store.ping(), timeout=2.0)
        database = "ok"
    except Exception as exc:
        database = (str(exc) or type(exc).__name__)[:200]
    persistence = writer.state()
    ready = database == "ok" and persistence == "ok"
    broker: RedisBroker | None = request.state.broker
    extra: dict[str, Any] = {}
    if broker is not None:
        # While Redis is down the process serves its own clients and stores their edits;
        # it is not ready in the sense that clients of other processes do not see them.
        extra = {"redis": broker.state(), "process": broker.process_id}
        ready = ready and broker.state() == "ok"
    return JSONResponse(
        {
            "status": "ok" if ready else "unavailable",
            "database": database,
            "persistence": persistence,
            **extra,
            "pending_updates": writer.uncommitted(),
            "pending_bytes": writer.pending_bytes(),
            "rooms": len(request.state.registry.rooms),
        },
        200 if ready else 503,
    )


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class SyncFirst:
    """Hands `/ws/{doc_id}` WebSockets straight to the sync session; everything else (HTTP,
    lifespan) goes to the Starlette app.

    A sync connection lives for hours, and each ASGI layer it passes through (error and
    exception middleware, router, route) stays on its stack as a suspended coroutine: in
    front of them a server with thousands of connections keeps several MB less.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"].startswith(session.PREFIX):
            await session.serve(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> SyncFirst:
    settings = settings or Settings()
    return SyncFirst(
        Starlette(
            routes=[
                Route("/healthz", healthz),
                Route("/readyz", readyz),
                Route("/metrics", metrics),
                Mount("/api", app=create_api()),
                *apidocs.routes(),
            ],
            lifespan=lambda app: lifespan_for(settings),
        )
    )
