"""SyncClient: keep a pycrdt Doc in sync with a Tandem room over the y-protocols.

Edits made to `client.doc` are sent as they happen; while the connection is down they stay
in the document and are merged into the room by the sync exchange on the next connect
(the server's sync step 1 asks for everything it lacks), so the client works offline. With
`store=PATH` every update is also kept in a local SQLite file (client/store.py), so the
document opens without a server and offline edits survive a restart of the process.

The connection is retried with exponential backoff and full jitter until `close()`, unless
the server refuses the client for good: a refused token (4401, 4403), a deleted document
(4404) or an invalid id (4400) stop it, and the waits and `close()` raise the matching
`ClientError` (client/errors.py).

Two levels of confirmation: `close()` (and the end of `async with`) waits until the server
has *applied* the client's edits (a sync step 1 answered behind them); `wait_stored()` until
it has *committed* them to its database (the server's durable acknowledgements, MSG_STORED,
which the client asks for with `?durable=1`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl as _ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote

from pycrdt import Doc, TransactionEvent
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from client.errors import AccessRefused, ClientError, DocumentDeleted, for_close
from client.presence import RENEW_SECONDS, Presence
from client.statevector import StateVector, covers, decode_state_vector, merged
from client.store import COMPACT_AFTER, OfflineStore
from shared.protocol import (
    DURABLE_PARAM,
    MSG_AUTH,
    MSG_AWARENESS,
    MSG_QUERY_AWARENESS,
    MSG_STORED,
    MSG_SYNC,
    SYNC_STEP1,
    SYNC_STEP2,
    ProtocolError,
    decode_message,
    encode_awareness,
    encode_sync_step1,
    encode_sync_step2,
    encode_update,
)

__all__ = [
    "EVENTS",
    "AccessRefused",
    "ClientError",
    "ConnectionState",
    "DocumentDeleted",
    "SyncClient",
]

log = logging.getLogger("tandem.client")

ConnectionState = Literal["connecting", "connected", "synced", "offline", "closed"]
EVENTS = ("connecting", "connected", "synced", "offline", "closed", "stored", "presence")
"""What `SyncClient.on` takes: the connection states, `stored` (every local edit is now
committed on the server) and `presence` (another client's presence changed)."""

# Close codes that mean the server (or what is between) could not make sense of a frame: the
# client logs them as errors, and reconnects all the same.
_PROTOCOL_CLOSES = {1002: "malformed message", 1003: "unsupported data", 1007: "invalid update"}

# Queued behind the updates still in the outbox: the sender asks the server for its sync
# step 2 there, and the future learns whether the answer came (False: the connection ended).
_Confirmation = asyncio.Future[bool]


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Full jitter: uniform in [0, min(maximum, initial * 2**attempt)]."""
    return random.uniform(0.0, min(maximum, initial * 2 ** min(attempt, 62)))


class SyncClient:
    """One document, one connection at a time, reconnecting with backoff until closed."""

    def __init__(
        self,
        server_url: str,
        doc_id: str,
        doc: Doc[Any] | None = None,
        *,
        token: str | None = None,
        store: str | Path | OfflineStore | None = None,
        reconnect: bool = True,
        ssl: _ssl.SSLContext | None = None,
        close_timeout: float = 5.0,
        durable: bool = True,
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
    ) -> None:
        """`server_url` is ws://HOST:PORT/ws or wss://…; for wss, `ssl` is the context that
        verifies the server (e.g. one trusting a private CA), the system's default if None.
        `store`: an offline store (a path of a SQLite file, created if missing, or an open
        `OfflineStore`); the document is loaded from it at once. `close_timeout`: how long
        leaving `async with` waits for the server to confirm the client's edits (see
        `close`). `durable`: ask for the server's stored acknowledgements (`wait_stored`).
        Reconnecting waits a random time up to `backoff_initial` doubled per failed
        attempt, at most `backoff_max` seconds."""
        self.doc_id = doc_id
        self.url = f"{server_url.rstrip('/')}/{quote(doc_id)}"
        params = []
        if token:
            params.append(f"token={quote(token)}")
        if durable:
            params.append(f"{DURABLE_PARAM}=1")
        self._connect_url = self.url + ("?" + "&".join(params) if params else "")
        self.doc: Doc[Any] = doc if doc is not None else Doc()
        self.reconnect = reconnect
        self.close_timeout = close_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        # Passed to `connect` only when given: an explicit None would turn TLS off for wss.
        self._connect_options: dict[str, Any] = {} if ssl is None else {"ssl": ssl}
        self.synced = asyncio.Event()
        self.connected = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.error: ClientError | None = None
        """Set when the server refused the client for good; the waits raise it."""
        self._state: ConnectionState = "closed"
        self._listeners: dict[str, list[Callable[[], None]]] = {name: [] for name in EVENTS}
        self._changed = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._applying_remote = False
        self._outbox: asyncio.Queue[bytes | _Confirmation] = asyncio.Queue()
        # One entry per sync step 1 sent on the current connection, oldest first: the server
        # answers them in order, each with a step 2.
        self._asked: deque[_Confirmation | None] = deque()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._synced_once = False  # on the current connection
        self._presence = Presence(self.doc.client_id)

        self._owns_store = store is not None and not isinstance(store, OfflineStore)
        self.store: OfflineStore | None = (
            None
            if store is None
            else store
            if isinstance(store, OfflineStore)
            else OfflineStore(store)
        )
        self._stored: StateVector = {}
        self._writers: set[int] = set()
        self._rows = 0
        if self.store is not None:
            if self.doc.get_state() != b"\x00":  # a doc given with content: keep that too
                self._rows = self.store.append(doc_id, self.doc.get_update())
            self._load_store(self.store)
        # Local edits (transactions) made so far, and how many of them the server has
        # confirmed; content the doc came with (or loaded from the store) counts as one.
        self._edits = 0 if self.doc.get_state() == b"\x00" else 1
        self._confirmed = 0
        self._was_stored = self.all_stored
        self.doc.observe(self._on_change)

    def _load_store(self, store: OfflineStore) -> None:
        saved = store.load(self.doc_id)
        if saved is not None:
            self._applying_remote = True
            try:
                self.doc.apply_update(saved)
            finally:
                self._applying_remote = False
        self._rows = store.count(self.doc_id)
        self._stored = store.stored(self.doc_id)
        self._writers = store.writers(self.doc_id)

    # -- state and events -------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    def on(self, event: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback()` on each `event` (see EVENTS); returns a function that removes it.
        Callbacks run on the client's event loop; an exception in one is logged."""
        if event not in self._listeners:
            raise ValueError(f"unknown event {event!r}; one of {', '.join(EVENTS)}")
        self._listeners[event].append(callback)
        return lambda: self._listeners[event].remove(callback)

    def _emit(self, event: str) -> None:
        for callback in list(self._listeners[event]):
            try:
                callback()
            except Exception:
                log.exception("%s listener failed", event)

    def _set_state(self, state: ConnectionState) -> None:
        if state != self._state:
            self._state = state
            self._emit(state)
            self._notify()

    def _notify(self) -> None:
        """Wake every wait to look again."""
        self._changed.set()
        self._changed = asyncio.Event()

    # -- local edits --------------------------------------------------------------------------

    @property
    def all_sent(self) -> bool:
        """Whether the server has confirmed every local edit, as of the last confirmation
        (`close()` asks for one)."""
        return self._confirmed >= self._edits

    @property
    def all_stored(self) -> bool:
        """Whether the server has acknowledged as stored every edit this client (and, with a
        store, earlier processes using it) wrote."""
        local = decode_state_vector(self.doc.get_state())
        return covers(self._stored, local, self._writers | {self.doc.client_id})

    @property
    def unconfirmed_writers(self) -> set[int]:
        """Client ids with edits the server has not acknowledged as stored."""
        local = decode_state_vector(self.doc.get_state())
        return {
            c for c in self._writers | {self.doc.client_id} if not covers(self._stored, local, [c])
        }

    def _on_change(self, event: TransactionEvent) -> None:
        update: bytes = event.update
        if update == b"\x00\x00":
            return  # the transaction changed nothing
        if self.store is not None:
            self._rows = self.store.append(self.doc_id, update)
            if self._rows > COMPACT_AFTER:
                self.store.compact(self.doc_id)
                self._rows = 1
        if self._applying_remote:
            return
        self._edits += 1
        if self.doc.client_id not in self._writers:
            self._writers.add(self.doc.client_id)
            self._save_progress()
        self._was_stored = False
        if self._ws is not None:
            self._outbox.put_nowait(encode_update(update))
        self._notify()

    def _save_progress(self) -> None:
        if self.store is not None:
            self.store.save_progress(self.doc_id, self._stored, self._writers)

    # -- presence -----------------------------------------------------------------------------

    def set_presence(self, state: dict[str, Any] | None) -> None:
        """Set this client's presence (awareness) state, e.g. `{"user": {"name": …}}`, sent
        at once when connected and again on every connect; None removes it. A signed-in
        server replaces `user`'s identity fields with who signed in."""
        payload = self._presence.set_local(state)
        if self._ws is not None:
            self._outbox.put_nowait(encode_awareness(payload))

    def presence(self) -> dict[int, dict[str, Any]]:
        """The presence states of the other clients in the document, by client id."""
        return self._presence.others()

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.close()
        except ClientError:
            if exc_type is None:
                raise  # else the block's own exception says more

    def start(self) -> None:
        """Connect (in a task of the running loop) and stay connected until `close()` or
        `disconnect()`. Raises the `ClientError` that stopped the client, if one did."""
        if self.error is not None:
            raise self.error
        if self._task is not None and not self._task.done():
            return  # running already
        self._stopped = False
        self._set_state("connecting")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self, timeout: float | None = None) -> bool:
        """Send every queued edit, then close; return `all_sent`. Raises the `ClientError`
        that stopped the client, if one did.

        While the client runs and has edits the server has not confirmed, this waits (at
        most `timeout` seconds, `close_timeout` if None) for a connection, sends what is
        queued and then a sync step 1. The server handles the frames of a connection in
        order, so its step 2 answer means it has applied every edit sent before it; edits
        made offline went out in the sync exchange when the connection was made. If the
        connection drops meanwhile, the next one is used. Without an answer in time the
        connection is cut, a warning is logged and False returned: the edits stay in `doc`
        (and in the store, which sends them on its next connection).

        Applied is not yet stored: the server writes updates to its database in a group
        commit (TANDEM_COMMIT_DELAY_MS, 250 ms by default) and commits what is pending when
        it shuts down cleanly (SIGTERM); a `kill -9` within that window loses them on the
        server, and only a client that still holds them can send them again. `wait_stored`
        waits for the commit.
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
            await self._shutdown(graceful=confirmed, leave=True)
            self._set_state("closed")
            if self.store is not None and self._owns_store:
                self.store.close()
                self.store = None
        if self.error is not None:
            raise self.error
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
        self._set_state("offline")

    async def _shutdown(self, graceful: bool = True, leave: bool = False) -> None:
        self._stopped = True
        ws = self._ws
        if ws is not None:
            if graceful:
                if leave and self._presence.local is not None:
                    # Tell the others at once rather than by the server's timeout.
                    with contextlib.suppress(ConnectionClosed, OSError):
                        await ws.send(encode_awareness(self._presence.set_local(None)))
                await ws.close()
            else:  # the server did not answer in time: no closing handshake either
                ws.transport.abort()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- waits --------------------------------------------------------------------------------

    async def _until(self, done: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while True:
                if self.error is not None:
                    raise self.error
                if done():
                    return
                changed = self._changed
                await changed.wait()

    async def wait_synced(self, timeout: float = 10.0) -> None:
        """Until the client is connected and has the server's state (TimeoutError after
        `timeout` seconds; the ClientError that stopped the client, if one did)."""
        await self._until(self.synced.is_set, timeout)

    async def wait_stored(self, timeout: float = 30.0) -> None:
        """Until the server has committed to its database every edit this client (and, with
        a store, any earlier process using it) made so far (TimeoutError after `timeout`
        seconds; the ClientError that stopped the client, if one did). Needs a server that
        sends durable acknowledgements (MSG_STORED)."""
        await self._until(lambda: self.all_stored, timeout)

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

    # -- the connection -----------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._stopped:
            self._set_state("connecting")
            self.close_code, self.close_reason = None, ""
            try:
                async with connect(
                    self._connect_url, max_size=None, compression=None, **self._connect_options
                ) as ws:
                    await self._session(ws)
            except (OSError, ConnectionClosed, TimeoutError, WebSocketException) as exc:
                log.debug("connection to %s ended: %s", self.url, exc)
            finally:
                self._ws = None
                self.connected.clear()
                self.synced.clear()
                if self._presence.forget_others():
                    self._emit("presence")
            code = self.close_code
            if code is not None and code in _PROTOCOL_CLOSES:
                log.error(
                    "the server closed %s: %d %s (%s); reconnecting",
                    self.url,
                    code,
                    _PROTOCOL_CLOSES[code],
                    self.close_reason,
                )
            self.error = for_close(self.close_code, self.close_reason, self.url)
            if self.error is not None:
                log.error("%s; not reconnecting", self.error)
                self._stopped = True
                self._set_state("closed")
                return
            if self._stopped:
                return
            if not self.reconnect:
                self._set_state("closed")
                return
            self._set_state("offline")
            if self._synced_once:
                attempt = 0
            await asyncio.sleep(backoff_delay(attempt, self.backoff_initial, self.backoff_max))
            attempt += 1

    async def _session(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._synced_once = False
        self.connected.set()
        self._set_state("connected")
        # Fresh queue: edits made offline reach the server through the sync exchange.
        self._outbox = asyncio.Queue()
        self._asked = deque([None])
        try:
            # A server that refuses at once may close before this send: keep its code too.
            await ws.send(encode_sync_step1(self.doc.get_state()))
            renewed = self._presence.renew(bump=2)
            if renewed is not None:
                await ws.send(encode_awareness(renewed))
            async with _running(self._pump(ws)), _running(self._renew()):
                async for data in ws:
                    if isinstance(data, bytes):
                        try:
                            await self._handle(ws, data)
                        except ProtocolError as exc:
                            log.error("malformed message from %s: %s; reconnecting", self.url, exc)
                            await ws.close(1002, "malformed message")
                            break
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

    async def _renew(self) -> None:
        """Keep the own presence alive for stock clients, and forget silent others."""
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            renewed = self._presence.renew()
            if renewed is not None:
                self._outbox.put_nowait(encode_awareness(renewed))
            if self._presence.expire():
                self._emit("presence")

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
                self._synced_once = True
                self.synced.set()
                self._set_state("synced")
            self._notify()
        elif message.kind == MSG_STORED:
            self._on_stored(decode_state_vector(message.payload))
        elif message.kind == MSG_AWARENESS:
            if self._presence.apply(message.payload):
                self._emit("presence")
        elif message.kind == MSG_QUERY_AWARENESS:
            renewed = self._presence.renew()
            if renewed is not None:
                self._outbox.put_nowait(encode_awareness(renewed))
        elif message.kind == MSG_AUTH:
            log.warning("the server denied a permission on %s: %r", self.url, message.payload)

    def _on_stored(self, vector: StateVector) -> None:
        self._stored = merged(self._stored, vector)
        local = decode_state_vector(self.doc.get_state())
        # Ids whose edits are all stored need no more watching (a new edit adds its id again).
        self._writers = {c for c in self._writers if not covers(self._stored, local, [c])}
        self._save_progress()
        now = covers(self._stored, local, self._writers | {self.doc.client_id})
        if now and not self._was_stored:
            self._was_stored = True
            self._emit("stored")
        self._notify()


@contextlib.asynccontextmanager
async def _running(coro: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    task = asyncio.ensure_future(coro)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await task
