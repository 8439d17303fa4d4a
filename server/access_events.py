"""Access changes, told to every process that serves connections.

A grant removed, a user downgraded or disabled, a token or share link revoked: each is
published as an `AccessChange`, and every subscriber (the rules cache, the enforcer that
re-checks open connections) hears it. `LocalAccessEvents` delivers within this process; a
broker shared by several processes implements the same two methods.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("tandem.access")


@dataclass(frozen=True, slots=True)
class AccessChange:
    """What changed. `rules`: grants, folders, documents' placement or users, so every
    connection is checked again; `revoked`: these token ids (share links included) are void."""

    rules: bool = True
    revoked: frozenset[str] = field(default_factory=frozenset)


Listener = Callable[[AccessChange], Awaitable[None]]


class AccessEvents(Protocol):
    async def publish(self, change: AccessChange) -> None: ...
    def subscribe(self, listener: Listener) -> None: ...


class LocalAccessEvents:
    """Delivers each change to this process's listeners, in the order they subscribed."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def publish(self, change: AccessChange) -> None:
        for listener in self._listeners:
            try:
                await listener(change)
            except Exception:
                # One listener's failure must not keep the change from the others.
                log.exception("an access change could not be applied")
