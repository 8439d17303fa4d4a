"""Typed access to what the lifespan put in the application state."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from server.access import AccessControl
from server.access_events import AccessChange, AccessEvents
from server.audit import AuditLog
from server.blobs import BlobStore
from server.rooms.registry import Registry
from server.settings import Settings


def engine(request: Request) -> AsyncEngine:
    value: AsyncEngine = request.state.engine
    return value


def registry(request: Request) -> Registry:
    value: Registry = request.state.registry
    return value


def blobs(request: Request) -> BlobStore:
    value: BlobStore = request.state.blobs
    return value


def settings(request: Request) -> Settings:
    value: Settings = request.state.settings
    return value


def access(request: Request) -> AccessControl:
    value: AccessControl = request.state.access
    return value


def access_events(request: Request) -> AccessEvents:
    value: AccessEvents = request.state.access_events
    return value


def audit(request: Request) -> AuditLog:
    value: AuditLog = request.state.audit
    return value


async def access_changed(request: Request) -> None:
    """Rules, folders, documents' placement or users changed: every process reads them again
    and checks its open connections."""
    await access_events(request).publish(AccessChange())
