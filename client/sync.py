"""SyncClient: keep a pycrdt Doc in sync with a Tandem room over the y-protocols.

Edits made to `client.doc` are sent as they happen; while the connection is down they stay
in the document and are merged into the room by the sync exchange on the next connect
(the server's sync step 1 asks for everything it lacks), so the client works offline.
`close()` (and the end of `async with`) sends what is still queued and asks the server to
confirm it before the connection goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as _ssl
from collections import deque
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

# Queued behind the updates still in the outbox: the sender asks the server for its sync
# step 2 there, and the future learns whether the answer came (False: the connection ended).
_Confirmation = asyncio.Future[bool]


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
        close_timeout: float = 5.0,
    ) -> None:
        """`server_url` is ws://HOST:PORT/ws or wss://…; for wss, `ssl` is the context that
        verifies the server (e.g. one trusting a private CA), the system's default if None.
        `close_timeout`: how long leaving `async with` waits for the server to confirm the
        client's edits (see `close`)."""
        self.url = f"{server_url.rstrip('/')}/{quote(doc_id)}"
        if token:
            self.url += f"?token={quote(token)}"
        self.doc: Doc[Any] = doc if doc is not None else Doc()
        self.reconnect = reconnect
        self.close_timeout = close_timeout
        # Passed to `connect` only when given: an explicit None would turn TLS off for wss.
        self._connect_options: dict[str, Any] = {} if ssl is None else {"ssl": ssl}
        self.synced = asyncio.Event()
        self.connected = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str = ""
        self._ws: ClientConnection | None = None
        self._applying_remote = False
        self._outbox: asyncio.Queue[bytes | _Confirmation] = asyncio.Queue()
        # One entry per sync step 1 sent on the current connection, oldest first: the server
        # answers them in order, each with a step 2.
        self._asked: deque[_Confirmation | None] = deque()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        # Local edits (transactions) made so far, and how many of them the server has
        # confirmed; content the doc came with counts as one.
        self._edits = 0 if self.doc.get_state() == b"\x00" else 1
        self._confirmed = 0
        self.doc.observe(self._on_change)

    @property
    def all_sent(self) -> bool:
        """Whether the server has confirmed every local edit, as of the last confirmation
        (`close()` asks for one)."""
        return self._confirmed >= self._edits

    def _on_change(self, event: TransactionEvent) -> None:
        if self._applying_remote:
            return
        self._edits += 1
        if self._ws is not None:
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

    async def close(self, timeout: float | None = None) -> bool:
        """Send every queued edit, then close; return `all_sent`.

        While the client runs and has edits the server has not confirmed, this waits (at
        most `timeout` seconds, `close_timeout` if None) for a connection, sends what is
        queued and then a sync step 1. The server handles the frames of a connection in
        order, so its step 2 answer means it has applied every edit sent before it; edits
        made offline went out in the sync exchange when the connection was made. If the
        connection drops meanwhile, the next one is used. Without an answer in time the
        connection is cut, a warning is logged and False returned: the edits stay in `doc`.

        Applied is not yet stored: the server writes updates to its database in a group
        commit (TANDEM_COMMIT_DELAY_MS, 250 ms by default) and commits what is pending when
        it shuts down cleanly (SIGTERM); a `kill -9` within that window loses them on the
        server, and only a client that still holds them can send them again.
        """
        timeout = self.close_timeout if timeout is None else timeout
        confirmed = True
        try:
            if not self.all_sent and self._task is not None and not self._task.done():
                try:
                    async with asyncio.timeout(timeout):
                        await self._confirm(self._task)
                except TimeoutError:
                    confirmed = False
        finally:
            await self._shutdown(graceful=confirmed)
        if not self.all_sent:
            log.warning(
                "closing %s with %d local edit(s) the server has not confirmed",
                self.url,
                self._edits - self._confirmed,
            )
        return self.all_sent

    async def disconnect(self) -> None:
        """Go offline until `start()` without sending what is queued; local edits keep
        accumulating in the doc and reach the server on the next connect."""
        await self._shutdown()

    async def _shutdown(self, graceful: bool = True) -> None:
        self._stopped = True
        if self._ws is not None:
            if graceful:
                await self._ws.close()
            else:  # the server did not answer in time: no closing handshake either
                self._ws.transport.abort()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _confirm(self, task: asyncio.Task[None]) -> None:
        """Until the server confirms the edits made so far, or `task` (the connection loop)
        ends: on each synced connection, queue a confirmation behind the pending updates."""
        loop = asyncio.get_running_loop()
        while not task.done():
            if not self.synced.is_set():
                # Synced means the server's sync step 1 has been answered on this
                # connection (it comes before the step 2 that sets `synced`), and with it
                # every edit made while offline.
                synced = loop.create_task(self.synced.wait())
                try:
                    await asyncio.wait({synced, task}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    synced.cancel()
                continue
            upto = self._edits
            answer: _Confirmation = loop.create_future()
            self._outbox.put_nowait(answer)
            if await answer:
                self._confirmed = max(self._confirmed, upto)
                return

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
        self._asked = deque([None])
        try:
            # A server that refuses at once may close before this send: keep its code too.
            await ws.send(encode_sync_step1(self.doc.get_state()))
            async with _running(self._pump(ws)):
                async for data in ws:
                    if isinstance(data, bytes):
                        await self._handle(ws, data)
        finally:
            # No await from here on: a confirmation queued after this would never be sent.
            self.synced.clear()
            unanswered: list[bytes | _Confirmation | None] = [*self._asked]
            while not self._outbox.empty():
                unanswered.append(self._outbox.get_nowait())
            self._asked.clear()
            for item in unanswered:
                if isinstance(item, asyncio.Future) and not item.done():
                    item.set_result(False)
            if ws.protocol.close_rcvd is not None:
                self.close_code = ws.protocol.close_rcvd.code
                self.close_reason = ws.protocol.close_rcvd.reason

    async def _pump(self, ws: ClientConnection) -> None:
        while True:
            item = await self._outbox.get()
            if isinstance(item, bytes):
                await ws.send(item)
            else:
                self._asked.append(item)  # before the send: the answer may come at once
                await ws.send(encode_sync_step1(self.doc.get_state()))

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
                asked = self._asked.popleft() if self._asked else None
                if asked is not None and not asked.done():
                    asked.set_result(True)
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
