"""Drive real, stock Yjs clients (yjs + y-websocket running in Node) from pytest.

Each :class:`NodeYClient` is one ``node tests/js/yclient.mjs <serverUrl> <room> [token]``
process: a ``Y.Doc`` plus a ``WebsocketProvider`` that connects to ``<serverUrl>/<room>``.
The process is remote-controlled through line-delimited JSON: one command per stdin line,
exactly one reply per command on stdout, matched by ``id``. See ``tests/js/yclient.mjs`` for
the command list.

Setup: ``npm ci`` in ``tests/js`` (needs Node >= 20 on PATH).

Example::

    client = await NodeYClient.start("ws://127.0.0.1:8123/ws", "room-1")
    try:
        await client.call("wait_synced", timeout=10)
        await client.call("insert_text", name="text", index=0, value="你好🙂")
        state = await client.call("state")
        assert state["text"]["text"] == "你好🙂"
    finally:
        await client.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "JS_DIR",
    "YCLIENT_SCRIPT",
    "NodeYClient",
    "ensure_node_modules",
    "node_executable",
]

JS_DIR: Path = Path(__file__).resolve().parent / "js"
YCLIENT_SCRIPT: Path = JS_DIR / "yclient.mjs"

DEFAULT_CALL_TIMEOUT = 15.0
# Extra time the Python side waits beyond a command's own "timeout", so that a Node-side wait
# (e.g. wait_synced) can report its own, more descriptive, timeout error first.
_REPLY_GRACE = 2.0
_STDERR_TAIL_LINES = 200
# Replies such as "state" or "encode_state" can be large; lift asyncio's 64 KiB line limit.
_STREAM_LIMIT = 64 * 1024 * 1024
_REQUIRED_PACKAGES = ("yjs", "y-websocket", "ws")

logger = logging.getLogger(__name__)


def node_executable() -> str:
    """Path of the ``node`` binary (``$NODE`` overrides), or raise ``RuntimeError``."""
    candidate = os.environ.get("NODE") or "node"
    found = shutil.which(candidate)
    if found is None:
        raise RuntimeError(f"Node.js executable {candidate!r} not found on PATH (need Node >= 20)")
    return found


def ensure_node_modules() -> None:
    """Raise ``RuntimeError`` with a clear hint unless the Node test client can run."""
    node_modules = JS_DIR / "node_modules"
    missing = [name for name in _REQUIRED_PACKAGES if not (node_modules / name).is_dir()]
    if not node_modules.is_dir() or missing:
        if not node_modules.is_dir():
            what = "tests/js/node_modules is missing"
        else:
            what = f"tests/js/node_modules lacks {', '.join(missing)}"
        raise RuntimeError(f"{what}: run npm ci in tests/js (cd {JS_DIR} && npm ci)")
    if not YCLIENT_SCRIPT.is_file():
        raise RuntimeError(f"Node Yjs client script not found: {YCLIENT_SCRIPT}")


class NodeYClient:
    """One stock Yjs client (``Y.Doc`` + y-websocket ``WebsocketProvider``) in a Node process."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        server_url: str,
        room: str,
        token: str | None,
    ) -> None:
        # Use :meth:`start`; the constructor only wires up an already spawned process.
        assert process.stdin is not None
        assert process.stdout is not None
        assert process.stderr is not None
        self.server_url = server_url
        self.room = room
        self.token = token
        self._process = process
        self._stdin = process.stdin
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._stderr_tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)
        self._closed = False
        self._stdout_task = asyncio.create_task(self._read_replies(process.stdout))
        self._stderr_task = asyncio.create_task(self._read_stderr(process.stderr))

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def start(
        cls,
        server_url: str,
        room: str,
        token: str | None = None,
        *,
        startup_timeout: float = DEFAULT_CALL_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> Self:
        """Spawn the Node client and wait until it answers commands.

        ``server_url`` is the WebSocket base URL (``ws://host:port/ws``); the provider connects to
        ``<server_url>/<room>`` and appends ``?token=<token>`` when a token is given. This returns
        once the process is up, not once it is connected: use ``call("wait_synced")`` for that.
        """
        ensure_node_modules()
        args = [str(YCLIENT_SCRIPT), server_url, room]
        if token:
            args.append(token)
        process = await asyncio.create_subprocess_exec(
            node_executable(),
            *args,
            cwd=JS_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **env} if env is not None else None,
            limit=_STREAM_LIMIT,
        )
        client = cls(process, server_url, room, token)
        try:
            # A first round trip proves the modules resolved and the command loop runs.
            await client.call("status", timeout=startup_timeout)
        except BaseException:
            await client.kill()
            raise
        return client

    async def close(self, timeout: float = 5.0) -> int | None:
        """Ask the client to destroy its provider and exit; kill it if it does not.

        Returns the process exit code. Safe to call more than once.
        """
        if not self._closed and self._process.returncode is None:
            self._closed = True
            with contextlib.suppress(RuntimeError, TimeoutError):
                await self.call("close", timeout=timeout)
        self._closed = True
        try:
            await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            logger.warning("node client %s did not exit in %.1fs; killing it", self.pid, timeout)
            await self.kill()
        await self._finish_readers()
        return self._process.returncode

    async def kill(self) -> None:
        """Kill the process at once (no goodbye to the server)."""
        self._closed = True
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
        await self._process.wait()
        await self._finish_readers()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    @property
    def stderr_tail(self) -> str:
        """The last lines the client logged on stderr (for assertion messages)."""
        return "\n".join(self._stderr_tail)

    # ------------------------------------------------------------------ commands

    async def call(
        self,
        op: str,
        *,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        **fields: Any,
    ) -> dict[str, Any]:
        """Send command ``op`` with ``fields`` and return its reply (without ``id``/``ok``).

        ``timeout`` (seconds) is also sent to the client as the command's ``"timeout"`` field, so
        for ``wait_synced`` it is how long Node waits; the Python side waits slightly longer.
        Raises ``RuntimeError`` when the reply has ``ok: false`` or the process has died, and
        ``TimeoutError`` when no reply came in time.
        """
        if self._process.returncode is not None or self._stdin.is_closing():
            raise RuntimeError(self._describe(f"client is not running; cannot send {op!r}"))
        command_id = next(self._ids)
        command: dict[str, Any] = {**fields, "id": command_id, "op": op, "timeout": timeout}
        line = json.dumps(command, ensure_ascii=False) + "\n"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        try:
            try:
                self._stdin.write(line.encode("utf-8"))
                await self._stdin.drain()
            except (ConnectionError, RuntimeError) as exc:
                raise RuntimeError(self._describe(f"cannot send {op!r}: {exc}")) from exc
            try:
                reply = await asyncio.wait_for(asyncio.shield(future), timeout + _REPLY_GRACE)
            except TimeoutError:
                raise TimeoutError(
                    self._describe(f"no reply to {op!r} within {timeout + _REPLY_GRACE:.1f}s")
                ) from None
        finally:
            self._pending.pop(command_id, None)
        if not reply.get("ok"):
            raise RuntimeError(f"{op} failed: {reply.get('error', 'unknown error')}")
        return {key: value for key, value in reply.items() if key not in ("id", "ok")}

    # Thin conveniences over :meth:`call`.

    async def wait_synced(self, timeout: float = 10.0) -> None:
        await self.call("wait_synced", timeout=timeout)

    async def status(self) -> dict[str, Any]:
        return await self.call("status")

    async def state(
        self,
        texts: list[str] | None = None,
        maps: list[str] | None = None,
        xmls: list[str] | None = None,
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if texts is not None:
            fields["texts"] = texts
        if maps is not None:
            fields["maps"] = maps
        if xmls is not None:
            fields["xmls"] = xmls
        return await self.call("state", **fields)

    async def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        op: str = "state",
        *,
        timeout: float = 10.0,
        interval: float = 0.05,
        **fields: Any,
    ) -> dict[str, Any]:
        """Poll ``op`` until ``predicate(reply)`` holds; return that reply.

        Raises ``TimeoutError`` (with the last reply) if it never holds within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            reply = await self.call(op, **fields)
            if predicate(reply):
                return reply
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    self._describe(f"condition on {op!r} not met within {timeout}s; last: {reply}")
                )
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------ internals

    def _describe(self, message: str) -> str:
        status = (
            f"exited with {self._process.returncode}"
            if self._process.returncode is not None
            else "running"
        )
        tail = self.stderr_tail
        return f"{message} [node client pid {self.pid} {status}]" + (
            f"\n--- client stderr ---\n{tail}" if tail else ""
        )

    async def _read_replies(self, stdout: asyncio.StreamReader) -> None:
        try:
            while True:
                raw = await stdout.readline()
                if not raw:
                    break
                text = raw.decode("utf-8", errors="replace").strip()
                if not text:
                    continue
                try:
                    reply = json.loads(text)
                except json.JSONDecodeError:
                    logger.warning("node client %s: non-JSON stdout line: %s", self.pid, text)
                    continue
                command_id = reply.get("id") if isinstance(reply, dict) else None
                future = self._pending.get(command_id) if isinstance(command_id, int) else None
                if future is None:
                    logger.warning("node client %s: unmatched reply: %s", self.pid, text)
                elif not future.done():
                    future.set_result(reply)
        except (ValueError, asyncio.LimitOverrunError) as exc:
            logger.error("node client %s: cannot read replies: %s", self.pid, exc)
        finally:
            # No more replies can come: fail whoever is still waiting.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._process.wait(), 5.0)
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(
                        RuntimeError(self._describe("client stopped before replying"))
                    )

    async def _read_stderr(self, stderr: asyncio.StreamReader) -> None:
        while True:
            raw = await stderr.readline()
            if not raw:
                return
            line = raw.decode("utf-8", errors="replace").rstrip()
            self._stderr_tail.append(line)
            logger.debug("%s", line)

    async def _finish_readers(self) -> None:
        tasks: list[Awaitable[None]] = [self._stdout_task, self._stderr_task]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5.0)
