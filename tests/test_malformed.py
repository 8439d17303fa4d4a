"""End to end: malformed input against a real server process.

Each bad frame closes only the connection that sent it, with a specific close code; healthy
clients in the same room keep syncing, the server stays up, and nothing from the bad frame
reaches the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from conftest import ServerFactory, ServerProcess
from pycrdt import Doc, Text
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from client.sync import SyncClient
from server.auth import issue_token
from shared.protocol import (
    MSG_QUERY_AWARENESS,
    MSG_SYNC,
    SYNC_STEP1,
    decode_message,
    encode_awareness,
    encode_update,
)

ROOM = "malformed-room"
LEGIT_MARKER = "LEGIT-valid-update-before-bad-frame"


# -- helpers ---------------------------------------------------------------------------------


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


async def wait_for_log(server: ServerProcess, text: str, timeout: float = 10.0) -> None:
    await wait_until(lambda: text in server.log(), timeout, f"{text!r} in the server log")


@contextlib.asynccontextmanager
async def raw(url: str, headers: dict[str, str] | None = None) -> AsyncIterator[ClientConnection]:
    """A bare WebSocket connection, for sending what a well-behaved client never would."""
    async with connect(
        url, max_size=None, compression=None, open_timeout=10, additional_headers=headers
    ) as ws:
        yield ws


async def greeting(ws: ClientConnection, timeout: float = 10.0) -> None:
    """Wait for the server's sync step 1: the connection has joined its room."""
    async with asyncio.timeout(timeout):
        first = await ws.recv()
    assert isinstance(first, bytes)
    message = decode_message(first)
    assert (message.kind, message.sync) == (MSG_SYNC, SYNC_STEP1)


async def closed_by_server(ws: ClientConnection, timeout: float = 10.0) -> tuple[int | None, str]:
    """Read (and discard) whatever arrives until the server closes; return code and reason."""
    try:
        async with asyncio.timeout(timeout):
            async for _ in ws:
                pass
    except ConnectionClosed:
        pass
    except TimeoutError:
        raise AssertionError("the server did not close the connection") from None
    return ws.close_code, ws.close_reason or ""


def text_of(doc: Doc) -> str:
    return str(doc.get("text", type=Text))


def update_inserting(content: str) -> bytes:
    doc = Doc()
    doc.get("text", type=Text).insert(0, content)
    return doc.get_update()


def undecodable_update(content: str) -> bytes:
    """A real update carrying `content`, cut short so pycrdt cannot decode it."""
    update = update_inserting(content)[:-1]
    with pytest.raises(ValueError):
        Doc().apply_update(update)
    assert content.encode() in update
    return update


async def assert_alive(server: ServerProcess) -> None:
    assert server.proc is not None and server.proc.poll() is None, "server process exited"
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server.http_url}/healthz", timeout=5)
    assert response.status_code == 200


def stored_rows(database_url: str) -> list[bytes]:
    """Every update row and snapshot state of the SQLite database, read after the server stopped."""
    path = Path(database_url.split(":///", 1)[1])
    assert path.exists()
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = [bytes(r[0]) for r in db.execute("SELECT data FROM updates ORDER BY seq")]
        rows += [bytes(r[0]) for r in db.execute("SELECT state FROM snapshots ORDER BY id")]
    return rows


class Editors:
    """Two healthy clients editing the room in the background the whole time."""

    def __init__(self, a: SyncClient, b: SyncClient) -> None:
        self.a = a
        self.b = b
        self.edits = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._edit())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _edit(self) -> None:
        for n in range(100_000):  # bounded; cancelled long before
            client = self.a if n % 2 == 0 else self.b
            text = client.doc.get("text", type=Text)
            text.insert(len(text), f"<{'ab'[n % 2]}{n}>")
            self.edits += 1
            await asyncio.sleep(0.03)

    async def check_sync(self, label: str) -> None:
        """Both directions still work: each side's probe reaches the other."""
        probe_a, probe_b = f"[{label}:from-a]", f"[{label}:from-b]"
        ta, tb = self.a.doc.get("text", type=Text), self.b.doc.get("text", type=Text)
        ta.insert(len(ta), probe_a)
        tb.insert(0, probe_b)
        await wait_until(lambda: probe_a in text_of(self.b.doc), what=f"{label}: a -> b")
        await wait_until(lambda: probe_b in text_of(self.a.doc), what=f"{label}: b -> a")


@contextlib.asynccontextmanager
async def two_editors(server: ServerProcess) -> AsyncIterator[Editors]:
    """Two healthy clients in ROOM, editing in the background until the block ends."""
    async with SyncClient(server.ws_url, ROOM) as a, SyncClient(server.ws_url, ROOM) as b:
        await a.wait_synced()
        await b.wait_synced()
        editors = Editors(a, b)
        editors.start()
        try:
            yield editors
        finally:
            await editors.stop()


async def send_until_closed(url: str, frames: Iterable[bytes]) -> tuple[int | None, str]:
    """Join the room, send `frames` (as far as the server lets), wait for the close."""
    async with raw(url) as ws:
        await greeting(ws)
        with contextlib.suppress(ConnectionClosed):
            for frame in frames:
                await ws.send(frame)
        return await closed_by_server(ws)


def big_edits(count: int, size: int) -> Iterator[bytes]:
    """Valid updates, each inserting a marker `[bigN]` and `size` more characters."""
    for n in range(count):
        yield encode_update(update_inserting(f"[big{n}]" + "x" * size))


@dataclass
class BadCase:
    name: str
    marker: str  # must never reach the database
    send: Callable[[ClientConnection], Awaitable[None]]
    code: int
    reason: str  # expected substring of the close reason


def _random_frame(marker: str) -> bytes:
    rng = random.Random(7)
    noise = bytes(rng.randrange(256) for _ in range(64))
    return b"\x07" + marker.encode() + noise  # 7 is no y-protocols message type


def bad_cases() -> list[BadCase]:
    async def send(ws: ClientConnection, data: bytes | str) -> None:
        # The server may close while a large frame is still being written.
        with contextlib.suppress(ConnectionClosed):
            await ws.send(data)

    big_marker = "EVIL-too-big"
    big = encode_update(update_inserting(big_marker + "x" * 100_000))
    assert len(big) > 100_000
    return [
        BadCase(
            "random-bytes",
            "EVIL-random-bytes",
            lambda ws: send(ws, _random_frame("EVIL-random-bytes")),
            1002,
            "malformed message",
        ),
        BadCase(
            "truncated-varint",
            "",
            lambda ws: send(ws, b"\x00\x02\xff"),
            1002,
            "truncated varint",
        ),
        BadCase(
            "undecodable-update",
            "EVIL-undecodable-update",
            lambda ws: send(ws, encode_update(undecodable_update("EVIL-undecodable-update"))),
            1007,
            "update rejected",
        ),
        BadCase(
            "malformed-awareness",
            "EVIL-awareness",
            lambda ws: send(ws, encode_awareness(b"\x01\x01\x00\x0eEVIL-awareness")),
            1002,
            "malformed awareness",
        ),
        BadCase(
            "text-frame",
            "EVIL-text-frame",
            lambda ws: send(ws, "EVIL-text-frame " + encode_update(b"x").hex()),
            1003,
            "text frames",
        ),
        # A well-formed, valid update: only its size is wrong, and it must not be applied.
        BadCase("too-big", big_marker, lambda ws: send(ws, big), 1009, "exceeds limit"),
    ]


# -- malformed frames ------------------------------------------------------------------------


async def test_bad_frames_close_only_their_connection(make_server: ServerFactory) -> None:
    server = await make_server(None, TANDEM_MAX_MESSAGE_BYTES="65536")
    url = f"{server.ws_url}/{ROOM}"
    cases = bad_cases()
    results: dict[str, tuple[int | None, str]] = {}

    async with SyncClient(server.ws_url, ROOM) as a, SyncClient(server.ws_url, ROOM) as b:
        await a.wait_synced()
        await b.wait_synced()
        editors = Editors(a, b)
        editors.start()
        await editors.check_sync("start")

        for case in cases:
            async with raw(url) as ws:
                await greeting(ws)
                await case.send(ws)
                results[case.name] = await closed_by_server(ws)
            await editors.check_sync(case.name)
            await assert_alive(server)

        # A connection that first sends a VALID update, then a bad frame. The valid update was
        # accepted before anything went wrong, so it is legitimately broadcast and stored; only
        # the bad frame that follows is rejected and must never be stored.
        async with raw(url) as ws:
            await greeting(ws)
            await ws.send(encode_update(update_inserting(LEGIT_MARKER)))
            await wait_until(lambda: LEGIT_MARKER in text_of(a.doc), what="legit update at a")
            await wait_until(lambda: LEGIT_MARKER in text_of(b.doc), what="legit update at b")
            await ws.send(encode_update(undecodable_update("EVIL-after-legit")))
            results["legit-then-bad"] = await closed_by_server(ws)
        await editors.check_sync("legit-then-bad")
        await assert_alive(server)

        # The background edits must have run alongside the bad frames, however fast they went.
        await wait_until(lambda: editors.edits > 10, what="background edits")
        await editors.stop()
        await wait_until(lambda: text_of(a.doc) == text_of(b.doc), what="a and b converge")
        final = text_of(a.doc)

    for case in cases:
        code, reason = results[case.name]
        assert code == case.code, f"{case.name}: closed with {code} {reason!r}"
        if case.reason:
            assert case.reason in reason, f"{case.name}: reason {reason!r}"
    assert results["legit-then-bad"][0] == 1007
    assert "update rejected" in results["legit-then-bad"][1]

    # The healthy clients never lost their connections: each bad connection, plus the two
    # healthy ones, opened exactly once.
    opened = server.log().count(f"ws open doc={ROOM} ")
    assert opened == 2 + len(cases) + 1, server.log()
    for case in cases:
        assert not case.marker or case.marker not in final

    # Stop the server (flushing every update) and inspect what was stored.
    assert await server.stop() in (0, -signal.SIGTERM)
    assert "tandem stopped; every update committed: True" in server.log()
    assert "Traceback" not in server.log()
    rows = stored_rows(server.database_url)
    assert rows, "the healthy edits were stored"
    merged = Doc()
    for row in rows:
        merged.apply_update(row)
    stored_text = text_of(merged)
    assert stored_text == final
    assert LEGIT_MARKER in stored_text
    assert any(LEGIT_MARKER.encode() in row for row in rows), "markers are visible in raw rows"
    for marker in [c.marker for c in cases if c.marker] + ["EVIL-after-legit"]:
        assert marker not in stored_text, marker
        assert not any(marker.encode() in row for row in rows), marker


# -- floods ------------------------------------------------------------------------------------


async def test_floods_close_only_their_connection(make_server: ServerFactory) -> None:
    """A client that keeps sending faster than its allowance is paced, and closed with 1008
    once it has kept that up for TANDEM_MAX_THROTTLED_SECONDS; a burst within two seconds'
    worth passes; the room, its other clients and their edits go on."""
    server = await make_server(
        None,
        TANDEM_MAX_MESSAGES_PER_SECOND="50",
        TANDEM_MAX_BYTES_PER_SECOND="100000",
        TANDEM_MAX_THROTTLED_SECONDS="2",
    )
    url = f"{server.ws_url}/{ROOM}"
    query = bytes((MSG_QUERY_AWARENESS,))
    async with two_editors(server) as editors:
        # A burst of 80 messages (two seconds' worth is 100) is fine, and so is its edit.
        async with raw(url) as ws:
            await greeting(ws)
            for _ in range(80):
                await ws.send(query)
            await ws.send(encode_update(update_inserting("[burst]")))
            await wait_until(lambda: "[burst]" in text_of(editors.a.doc), what="burst edit")
            assert ws.close_code is None

        # Messages without end: paced, then closed after two seconds of it.
        flood = await send_until_closed(url, [query] * 5000)
        await editors.check_sync("message-flood")

        # Big valid edits without end: 100 KB each against 100,000 bytes a second.
        byte_flood = await send_until_closed(url, big_edits(40, 100_000))
        await editors.check_sync("byte-flood")
        await assert_alive(server)

    assert flood == (1008, "too many messages: at most 50 a second, for over 2 s")
    assert byte_flood == (1008, "too much data: at most 100000 bytes a second, for over 2 s")
    assert server.log().count("rejected frame") == 2, server.log()


async def test_a_document_over_its_size_limit_refuses_only_the_growing_client(
    make_server: ServerFactory,
) -> None:
    server = await make_server(None, TANDEM_MAX_DOCUMENT_BYTES="50000")
    url = f"{server.ws_url}/{ROOM}"
    async with two_editors(server) as editors:
        closed = await send_until_closed(url, big_edits(20, 10_000))
        await editors.check_sync("after-the-ceiling")  # small edits still fit
        grown = text_of(editors.a.doc)
    assert closed == (1009, "document is over its size limit")
    assert "[big0]" in grown and "[big19]" not in grown
    await assert_alive(server)


# -- document ids ----------------------------------------------------------------------------

INVALID_DOC_IDS = [
    quote("../x", safe=""),
    "..%2F..%2Fetc%2Fpasswd",
    "a" * 129,
    "a" * 200,
    "a%20b",
    "a%2Fb",
    "a/b",
    "%00",
    ".hidden",
]


async def test_invalid_document_ids_are_refused(server: ServerProcess) -> None:
    for doc_id in INVALID_DOC_IDS:
        async with raw(f"{server.ws_url}/{doc_id}") as ws:
            code, reason = await closed_by_server(ws)
        assert (code, reason) == (4400, "invalid document id"), doc_id
    await assert_alive(server)
    # The limits are exact: the longest valid id, and letters of any script, are accepted.
    for doc_id in ["a" * 128, quote("文档-1.v2_x")]:
        async with raw(f"{server.ws_url}/{doc_id}") as ws:
            await greeting(ws)
    assert "ws open doc=" + "a" * 128 + " " in server.log()


# -- tokens ----------------------------------------------------------------------------------

SECRET = "s3cret"


async def test_query_string_token_never_reaches_the_log(make_server: ServerFactory) -> None:
    server = await make_server(None, TANDEM_SECRET=SECRET)
    token = issue_token(SECRET, "alice", doc="secret-doc")
    _, body, signature = token.split(".")

    async with SyncClient(server.ws_url, "secret-doc", token=token, reconnect=False) as client:
        await client.wait_synced()
        client.doc.get("text", type=Text).insert(0, "hello")
        await wait_for_log(server, "ws open doc=secret-doc ")
    await wait_for_log(server, "ws close doc=secret-doc ")

    # Also as a bearer header, the other way to pass it.
    header_token = issue_token(SECRET, "bob", doc="secret-doc")
    headers = {"Authorization": f"Bearer {header_token}"}
    async with raw(f"{server.ws_url}/secret-doc", headers) as ws:
        await greeting(ws)
    await wait_for_log(server, "user=bob")

    # Plain HTTP requests are logged with their query string too.
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{server.http_url}/healthz?x=1&token={token}")).status_code == 200
    await wait_for_log(server, "/healthz?x=1&token=")

    log = server.log()
    assert "user=alice" in log
    # A socket is logged as the session's own line (without its query string); a request
    # line with its query string, the token replaced.
    assert "/ws/secret-doc" not in log
    assert "/healthz?x=1&token=[redacted]" in log
    assert token not in log
    assert body not in log and signature not in log
    assert header_token not in log
    assert header_token.split(".")[1] not in log


BAD_TOKENS: list[tuple[str, str | None, int, str]] = [
    ("wrong-secret", issue_token("not-the-secret", "mallory"), 4401, "invalid token"),
    ("garbage", "garbage", 4401, "invalid token"),
    ("tampered", issue_token(SECRET, "alice")[:-2] + "xx", 4401, "invalid token"),
    ("expired", issue_token(SECRET, "alice", ttl=-10), 4401, "token expired"),
    ("missing", None, 4401, "missing token"),
    ("other-doc", issue_token(SECRET, "alice", doc="other-doc"), 4403, "not valid"),
]


async def test_bad_tokens_are_refused(make_server: ServerFactory) -> None:
    server = await make_server(None, TANDEM_SECRET=SECRET)
    for name, token, code, reason in BAD_TOKENS:
        url = f"{server.ws_url}/secret-doc" + (f"?token={quote(token)}" if token else "")
        async with raw(url) as ws:
            got_code, got_reason = await closed_by_server(ws)
        assert got_code == code, name
        assert reason in got_reason, (name, got_reason)
    await wait_until(
        lambda: server.log().count("ws refused doc=secret-doc") == len(BAD_TOKENS),
        what="every refusal logged",
    )
    log = server.log()
    assert "ws open doc=secret-doc" not in log
    for _, token, _, _ in BAD_TOKENS:
        assert not token or token not in log
    # The right token still gets in.
    good = issue_token(SECRET, "alice", doc="secret-doc")
    async with raw(f"{server.ws_url}/secret-doc?token={good}") as ws:
        await greeting(ws)
    await assert_alive(server)
