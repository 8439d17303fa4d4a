"""SyncClient: keep a pycrdt Doc in sync with a Tandem room over the y-protocols.

Edits made to `client.doc` are sent as they happen; while the connection is down they stay
in the document and are merged into the room by the sync exchange on the next connect
(the server's sync step 1 asks for everything it lacks), so the client works offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as _ssl
from collections.abc import AsyncIterator, Coroutine
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

from pycrdt import Doc, TransactionEvent
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from shared.protocol import (
    MSG_AWARENESS,
    MSG_SYNC,
    SYNC_STEP1,
    SYNC_STEP2,
    decode_message,
    encode_sync_step1,
    encode_sync_step2,
    encode_update,
)

log = logging.getLogger("tandem.client")


class SyncClient:
    """One document, one connection at a time, reconnecting with backoff until closed."""

    def __init__(
        self,
        server_url: str,
        doc_id: str,
        doc: Doc[Any] | None = None,
        *,
        token: str | None = None,
        reconnect: bool = True,
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        """`server_url` is ws://HOST:PORT/ws or wss://…; for wss, `ssl` is the context that
        verifies the server (e.g. one trusting a private CA), the system's default if None."""
        self.url = f"{server_url.rstrip('/')}/{quote(doc_id)}"
        if token:
            self.url += f"?token={quote(token)}"
        self.doc: Doc[Any] = doc if doc is not None else Doc()
        self.reconnect = reconnect
        # Passed to `connect` only when given: an explicit None would turn TLS off for wss.
        self._connect_options: dict[str, Any] = {} if ssl is None else {"ssl": ssl}
        self.synced = asyncio.Event()
        self.connected = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str = ""
        self._ws: ClientConnection | None = None
        self._applying_remote = False
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self.doc.observe(self._on_change)

    def _on_change(self, event: TransactionEvent) -> None:
        if not self._applying_remote and self._ws is not None:
            self._outbox.put_nowait(encode_update(event.update))

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def start(self) -> None:
        self._stopped = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        self._stopped = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def disconnect(self) -> None:
        """Go offline until `start()`; local edits keep accumulating in the doc."""
        await self.close()

    async def wait_synced(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            await self.synced.wait()

    async def _run(self) -> None:
        delay = 0.1
        while not self._stopped:
            try:
                async with connect(
                    self.url, max_size=None, compression=None, **self._connect_options
                ) as ws:
                    delay = 0.1
                    await self._session(ws)
            except (OSError, ConnectionClosed, TimeoutError) as exc:
                log.debug("connection to %s ended: %s", self.url, exc)
            finally:
                self._ws = None
                self.connected.clear()
                self.synced.clear()
            if not self.reconnect or self._stopped:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.5)

    async def _session(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.connected.set()
        # Fresh queue: edits made offline reach the server through the sync exchange.
        self._outbox = asyncio.Queue()
        try:
            # A server that refuses at once may close before this send: keep its code too.
            await ws.send(encode_sync_step1(self.doc.get_state()))
            async with _running(self._pump(ws)):
                async for data in ws:
                    if isinstance(data, bytes):
                        await self._handle(ws, data)
        finally:
            if ws.protocol.close_rcvd is not None:
                self.close_code = ws.protocol.close_rcvd.code
                self.close_reason = ws.protocol.close_rcvd.reason

    async def _pump(self, ws: ClientConnection) -> None:
        while True:
            await ws.send(await self._outbox.get())

    async def _handle(self, ws: ClientConnection, data: bytes) -> None:
        message = decode_message(data)
        if message.kind == MSG_SYNC:
            if message.sync == SYNC_STEP1:
                await ws.send(encode_sync_step2(self.doc.get_update(message.payload)))
                return
            self._applying_remote = True
            try:
                self.doc.apply_update(message.payload)
            finally:
                self._applying_remote = False
            if message.sync == SYNC_STEP2:
                self.synced.set()
        elif message.kind == MSG_AWARENESS:
            pass  # presence is not tracked by this client


@contextlib.asynccontextmanager
async def _running(coro: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    task = asyncio.ensure_future(coro)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await task
