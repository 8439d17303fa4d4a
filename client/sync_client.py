"""A synchronous facade over SyncClient for scripts: the client runs on an event loop in a
background thread, and the caller edits the document between parking that loop.

    with open_document("ws://127.0.0.1:8000/ws", "plan", store="plan.db") as handle:
        with handle.transaction() as doc:
            add_task(doc, "Check prices")
        handle.wait_stored(timeout=30)

`transaction()` parks the loop thread for the length of the block (it runs nothing else
meanwhile), so the document and the client are only ever touched by one thread at a time;
inside the block, call no other method of the handle (it would wait for the parked loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from pycrdt import Doc

from client.store import OfflineStore
from client.sync import ConnectionState, SyncClient

__all__ = ["DocumentHandle", "open_document"]

log = logging.getLogger("tandem.client")

T = TypeVar("T")


class DocumentHandle:
    """A running SyncClient and the loop thread it runs on (see `open_document`)."""

    def __init__(self, make_client: Callable[[], SyncClient]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tandem-client", daemon=True
        )
        self._thread.start()
        self._closed = False

        async def started() -> SyncClient:
            client = make_client()
            client.start()
            return client

        try:
            self.client = self._call(started())
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("a DocumentHandle method was called on its own loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Doc[Any]]:
        """The document, for the length of the block, in one transaction (sent as one update
        when the block ends); the client's loop is parked meanwhile."""
        if self._closed:
            raise RuntimeError("the document handle is closed")
        parked = threading.Event()
        release = threading.Event()

        def park() -> None:
            parked.set()
            release.wait()

        self._loop.call_soon_threadsafe(park)
        parked.wait()
        try:
            with self.client.doc.transaction():
                yield self.client.doc
        finally:
            release.set()

    def read(self, fn: Callable[[Doc[Any]], T]) -> T:
        """`fn(doc)`'s result, run with the loop parked (for reading the document)."""
        with self.transaction() as doc:
            return fn(doc)

    @property
    def state(self) -> ConnectionState:
        return self.client.state

    def wait_synced(self, timeout: float = 10.0) -> None:
        self._call(self.client.wait_synced(timeout))

    def wait_stored(self, timeout: float = 30.0) -> None:
        self._call(self.client.wait_stored(timeout))

    def set_presence(self, state: dict[str, Any] | None) -> None:
        self._call(_now(lambda: self.client.set_presence(state)))

    def presence(self) -> dict[int, dict[str, Any]]:
        return self._call(_now(self.client.presence))

    def close(self, timeout: float | None = None) -> bool:
        """Close the client (see SyncClient.close) and stop the loop thread."""
        if self._closed:
            return self.client.all_sent
        self._closed = True
        try:
            return self._call(self.client.close(timeout))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except Exception:
            if exc_type is None:
                raise
            log.exception("closing the document after an error")


async def _now(fn: Callable[[], T]) -> T:
    return fn()


def open_document(
    url: str,
    doc_id: str,
    token: str | None = None,
    store: str | Path | OfflineStore | None = None,
    *,
    sync_timeout: float | None = 10.0,
    **options: Any,
) -> DocumentHandle:
    """Start a SyncClient for `doc_id` on a background thread and return its handle.

    With `sync_timeout` (seconds) this first waits until the client has the server's state;
    when that does not come in time, TimeoutError, unless there is a `store` to work from
    offline (then a warning is logged and the handle returned). `options` go to SyncClient.
    """
    handle = DocumentHandle(lambda: SyncClient(url, doc_id, token=token, store=store, **options))
    if sync_timeout is not None:
        try:
            handle.wait_synced(sync_timeout)
        except TimeoutError:
            if store is None:
                handle.close(timeout=0)
                raise
            log.warning("%s is not reachable; working offline from %s", url, store)
        except BaseException:
            with contextlib.suppress(Exception):
                handle.close(timeout=0)
            raise
    return handle
