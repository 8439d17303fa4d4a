"""Typed access to what the lifespan put in the application state."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

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
