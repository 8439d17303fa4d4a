"""Scale-out: the rooms that several processes hold of one document, joined through Redis.

Every change a process makes to a room (its clients' updates, its REST edits, its clients'
presence) is appended to the document's Redis stream, `{prefix}:doc:{id}`, and published on
its channel with the entry's id, both by one script so the two orders agree. A process
subscribes to the channels of the documents it hosts, applies what the others appended, and
relays it to its own peers as the very frame bytes the sender's peers got. The stream keeps
the last `stream_length` entries (about; trimmed on each append) and expires when nobody
appends for `idle_expire` seconds; it serves three purposes a channel alone cannot:

- a process that starts hosting a document replays what other processes appended before it
  subscribed (their updates may still be in their writers' 250 ms windows, not yet stored);
- after a lost connection, a process reads the entries it missed, by id, from the stream;
- nothing else: storage stays with the process whose client made the change (each update is
  stored exactly once), and the stream is never compacted into the database.

Why streams and channels both: channels alone are at-most-once (a reconnect loses what was
published meanwhile); blocking reads of many streams cost a call per wake-up with every
hosted stream's key. The channel carries the live traffic at one delivery per message; the
stream is read only to catch up.

Each process renews a key `{prefix}:alive:{id}` every second. When a process whose updates a
room holds disappears (kill -9, lost machine), what its writer had not committed yet lives on
in the other processes' rooms: one of them (a lease per document) stores whatever its room
holds that the database lacks, and every process forgets the dead one's presence states.

While Redis is unreachable a process keeps serving its own clients, whose edits are stored
as usual; their updates are kept per document and published, merged, once Redis answers
again, and every hosted room then re-reads the database and the entries it missed. Clients
on different processes do not see each other's edits meanwhile; they converge after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from pycrdt import merge_updates
from redis.exceptions import RedisError

from server import metrics
from server.rooms.room import RELAY_PRESENCE as PRESENCE
from server.rooms.room import RELAY_UPDATE as UPDATE
from server.rooms.room import Room
from server.rooms.wire import frame_payload, update_frame
from shared.protocol import MSG_SYNC, SYNC_UPDATE, ProtocolError, decode_message

log = logging.getLogger("tandem.broker")

QUERY = b"q"  # "tell me your presence": sent by a process that starts hosting a document

# XADD to the stream and PUBLISH "<id>|<origin>|<kind><frame>" on the channel, atomically:
# the channel's order is the stream's, and a subscriber's last id is a cursor into it.
_APPEND = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                      'o', ARGV[2], 'k', ARGV[3], 'f', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', KEYS[2], id .. '|' .. ARGV[2] .. '|' .. ARGV[3] .. ARGV[4])
return id
"""

_ERRORS = (RedisError, OSError, ConnectionError, asyncio.TimeoutError)


@dataclass(slots=True)
class Retained:
    """What other processes appended to a document's stream: their updates, in order, and
    the id of the last entry read (None: Redis did not answer; caught up on recovery)."""

    updates: list[bytes]
    cursor: bytes | None


class Keeper(Protocol):
    """What the broker asks of this process's rooms (server/rooms/registry.py)."""

    async def reconcile(self, doc_id: str) -> None:
        """Store whatever the room holds that the database lacks (a process died)."""

    async def refresh(self, doc_id: str) -> None:
        """Merge the stored state into the room (after Redis was unreachable)."""


# A process-wide event from another process (access changes, deletions): its payload.
EventHandler = Callable[[bytes], Awaitable[None]]


def update_of(frame: bytes) -> bytes:
    """The update a sync update frame (an unmasked server frame) carries.

    Raises ProtocolError if it is not one."""
    message = decode_message(frame_payload(frame))
    if message.kind != MSG_SYNC or message.sync != SYNC_UPDATE:
        raise ProtocolError("not a sync update")
    return message.payload


class RedisBroker:
    def __init__(
        self,
        url: str,
        keeper: Keeper,
        *,
        prefix: str = "tandem",
        stream_length: int = 10_000,
        idle_expire: float = 600.0,
        heartbeat: float = 1.0,
        alive_for: float = 5.0,
    ) -> None:
        self.url = url
        self.keeper = keeper
        self.prefix = prefix
        self._live_prefix = f"{prefix}:live:"
        self._event_prefix = f"{prefix}:event:"
        self.process_id = uuid.uuid4().hex[:12]
        self.stream_length = stream_length
        self.idle_expire_ms = int(idle_expire * 1000)
        self.heartbeat = heartbeat
        self.alive_for_ms = int(alive_for * 1000)
        self._redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5, retry=None
        )
        self._sha = ""  # the append script's, loaded at start and after each outage
        self._pubsub: Any = None
        # Hosted documents: their room (None while it loads: its messages wait in
        # `_early`), and the id of the last entry applied.
        self._rooms: dict[str, Room | None] = {}
        self._cursors: dict[str, bytes] = {}
        self._early: dict[str, list[tuple[bytes, bytes, bytes, bytes]]] = {}
        # Other processes whose updates each hosted document holds: checked for liveness.
        self._origins: dict[str, set[str]] = defaultdict(set)
        self._outbox: list[tuple[str, bytes, bytes, bytes | None]] = []
        self._flushing = False
        # Updates made while Redis was unreachable, per document: published merged later.
        self._gap: dict[str, list[bytes]] = defaultdict(list)
        self._down: str | None = "not started"
        self._down_since: float | None = None
        self._events: dict[str, EventHandler] = {}
        # Run once Redis answers again after an outage, to re-check what may have been missed.
        self.recovery_hooks: list[Callable[[], Awaitable[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        # Reads the channels; restarted (and so recovers first) when an outage is seen
        # elsewhere, since it may be blocked reading a connection that went stale.
        self._listener: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[None]] = set()

    # -- keys --------------------------------------------------------------------------

    def _stream(self, doc_id: str) -> str:
        return f"{self.prefix}:doc:{doc_id}"

    def _channel(self, doc_id: str) -> str:
        return f"{self.prefix}:live:{doc_id}"

    def _alive(self, process_id: str) -> str:
        return f"{self.prefix}:alive:{process_id}"

    def _event_channel(self, name: str) -> str:
        return f"{self.prefix}:event:{name}"

    # -- life --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and start listening. Raises if Redis does not answer: a server that was
        told to share documents through Redis does not start without it."""
        await self._redis.ping()
        self._sha = await self._redis.script_load(_APPEND)
        await self._subscribe_all()
        self._down = None
        await self._beat()
        loop = asyncio.get_running_loop()
        self._listener = loop.create_task(self._listen(), name="broker-listen")
        self._tasks = [loop.create_task(self._keepalive(), name="broker-keepalive")]
        log.info("sharing documents through Redis as process %s", self.process_id)

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._listener] if self._listener is not None else [])]
        self._tasks, self._listener = [], None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, *_ERRORS):
                await task
        with contextlib.suppress(*_ERRORS):
            await self._flush()
            await self._redis.delete(self._alive(self.process_id))
        if self._pubsub is not None:
            with contextlib.suppress(*_ERRORS):
                await self._pubsub.aclose()
        with contextlib.suppress(*_ERRORS):
            await self._redis.aclose()

    def state(self) -> str:
        """ "ok", or why Redis is not being used right now."""
        return "ok" if self._down is None else self._down

    async def ping(self) -> None:
        await self._redis.ping()

    # -- hosting -----------------------------------------------------------------------

    async def prepare(self, doc_id: str) -> Retained:
        """Start hearing `doc_id` and read what other processes appended so far; what
        arrives from now until `host` is kept for it."""
        self._rooms[doc_id] = None
        self._early[doc_id] = []
        if self._down is not None:
            return Retained([], None)
        try:
            await self._pubsub.subscribe(self._channel(doc_id))
            entries = await self._range(doc_id, b"-")
        except _ERRORS as exc:
            self._went_down(exc)
            return Retained([], None)
        updates = []
        cursor = b"0-0"
        for entry_id, fields in entries:
            cursor = entry_id
            origin = fields.get(b"o", b"").decode()
            if origin == self.process_id or fields.get(b"k") != UPDATE:
                continue
            try:
                updates.append(update_of(fields[b"f"]))
            except (KeyError, IndexError, ProtocolError):
                continue
            self._origins[origin].add(doc_id)
        return Retained(updates, cursor)

    def host(self, room: Room, retained: Retained) -> None:
        """`room` is loaded with `retained`: apply what came meanwhile, then live traffic."""
        doc_id = room.doc_id
        self._rooms[doc_id] = room
        if retained.cursor is not None:
            self._cursors[doc_id] = retained.cursor
        for entry_id, origin, kind, frame in self._early.pop(doc_id, []):
            self._deliver(doc_id, entry_id, origin, kind, frame)
        if self._down is None:
            self.publish(doc_id, QUERY, b"", None)  # the others' presence, please

    def unhost(self, doc_id: str) -> None:
        self._rooms.pop(doc_id, None)
        self._cursors.pop(doc_id, None)
        self._early.pop(doc_id, None)
        for docs in self._origins.values():
            docs.discard(doc_id)
        if self._down is None and self._pubsub is not None:
            self._spawn(self._unsubscribe(doc_id))

    async def _unsubscribe(self, doc_id: str) -> None:
        if doc_id not in self._rooms:
            with contextlib.suppress(*_ERRORS):
                await self._pubsub.unsubscribe(self._channel(doc_id))

    # -- out ---------------------------------------------------------------------------

    def publish(self, doc_id: str, kind: bytes, frame: bytes, update: bytes | None) -> None:
        """Append a change of this process's room to the document's stream; never waits.
        `update`: the update a sync frame carries (kept, merged, while Redis is down)."""
        if self._down is not None:
            if update is not None:
                self._gap[doc_id].append(update)
            return
        self._outbox.append((doc_id, kind, frame, update))
        if not self._flushing:
            self._flushing = True
            self._spawn(self._flush())

    async def _flush(self) -> None:
        try:
            while self._outbox and self._down is None:
                batch, self._outbox = self._outbox, []
                try:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for doc_id, kind, frame, _ in batch:
                            pipe.evalsha(
                                self._sha,
                                2,
                                self._stream(doc_id),
                                self._channel(doc_id),
                                self.stream_length,
                                self.process_id,
                                kind,
                                frame,
                                self.idle_expire_ms,
                            )
                        await pipe.execute()
                    metrics.BROKER_PUBLISHED.inc(len(batch))
                except _ERRORS as exc:
                    # Some of the batch may have gone out: it goes again, merged, later
                    # (a CRDT takes an update twice without harm).
                    for doc_id, _, _, update in batch + self._outbox:
                        if update is not None:
                            self._gap[doc_id].append(update)
                    self._outbox = []
                    self._went_down(exc)
        finally:
            self._flushing = False

    # -- in ----------------------------------------------------------------------------

    async def _subscribe_all(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(*_ERRORS):
                await self._pubsub.aclose()
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        # A channel nobody publishes on, so the connection is subscribed (and readable)
        # before any document is hosted.
        await self._pubsub.subscribe(
            f"{self.prefix}:process:{self.process_id}",
            *(self._event_channel(name) for name in self._events),
        )
        channels = [self._channel(doc_id) for doc_id in self._rooms]
        for start in range(0, len(channels), 500):
            await self._pubsub.subscribe(*channels[start : start + 500])

    async def _listen(self) -> None:
        backoff = 0.05
        while True:
            try:
                if self._down is not None:
                    await self._recover()
                    backoff = 0.05
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=None
                )
            except asyncio.CancelledError:
                raise
            except _ERRORS as exc:
                self._went_down(exc, listening=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"].decode()
            live = channel.startswith(self._live_prefix)
            try:
                head, origin, rest = message["data"].split(b"|", 2)
            except ValueError:
                continue
            if live:
                self._receive(
                    channel[len(self._live_prefix) :], head, origin.decode(), rest[:1], rest[1:]
                )
            elif origin.decode() != self.process_id:
                handler = self._events.get(channel[len(self._event_prefix) :])
                if handler is not None:
                    self._spawn(self._handle(handler, rest))

    async def _handle(self, handler: EventHandler, payload: bytes) -> None:
        try:
            await handler(payload)
        except Exception:
            log.exception("an event from another process could not be handled")

    # -- process-wide events ------------------------------------------------------------

    def on_event(self, name: str, handler: EventHandler) -> None:
        """Hear the events other processes send under `name` (subscribe before `start`)."""
        self._events[name] = handler

    async def send_event(self, name: str, payload: bytes) -> bool:
        """Tell every other process; False if Redis is unreachable (each process re-checks
        what events would have told it once Redis answers again: `recovery_hooks`)."""
        if self._down is not None:
            return False
        try:
            await self._redis.publish(
                self._event_channel(name), b"e|" + self.process_id.encode() + b"|" + payload
            )
        except _ERRORS as exc:
            self._went_down(exc)
            return False
        return True

    def _receive(
        self, doc_id: str, entry_id: bytes, origin: str, kind: bytes, frame: bytes
    ) -> None:
        if origin == self.process_id or doc_id not in self._rooms:
            return
        early = self._early.get(doc_id)
        if early is not None:
            early.append((entry_id, origin.encode(), kind, frame))
            return
        self._deliver(doc_id, entry_id, origin.encode(), kind, frame)

    def _deliver(
        self, doc_id: str, entry_id: bytes, origin_b: bytes, kind: bytes, frame: bytes
    ) -> None:
        room = self._rooms.get(doc_id)
        if room is None:
            return
        cursor = self._cursors.get(doc_id)
        if cursor is not None and _entry_key(entry_id) <= _entry_key(cursor):
            return  # read already (replayed, or caught up after a reconnect)
        self._cursors[doc_id] = entry_id
        origin = origin_b.decode()
        if origin == self.process_id:
            return
        metrics.BROKER_RECEIVED.inc()
        if kind == UPDATE:
            self._origins[origin].add(doc_id)
            try:
                room.apply_remote(update_of(frame), frame)
            except Exception as exc:
                log.warning(
                    "an update from process %s for %s was not applied: %s", origin, doc_id, exc
                )
        elif kind == PRESENCE:
            room.remote_presence(frame, origin)
        elif kind == QUERY:
            presence = room.local_presence()
            if presence is not None:
                self.publish(doc_id, PRESENCE, presence, None)

    # -- outages -----------------------------------------------------------------------

    def _went_down(self, exc: BaseException, *, listening: bool = False) -> None:
        first = self._down is None
        self._down = (str(exc) or type(exc).__name__)[:200]
        if not first:
            return
        self._down_since = time.monotonic()
        log.warning("Redis unreachable (%s); serving local clients, catching up later", exc)
        metrics.BROKER_OUTAGES.inc()
        listener = self._listener
        if not listening and listener is not None and not listener.done():
            # Seen by a publish or the heartbeat: the listener starts over, recovering first.
            listener.cancel()
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(), name="broker-listen"
            )

    async def _recover(self) -> None:
        """Redis answers again: subscribe anew, publish what was made meanwhile, read what
        was missed, merge the stored state into every hosted room."""
        await self._redis.ping()
        self._sha = await self._redis.script_load(_APPEND)
        await self._subscribe_all()
        self._down = None
        gap, self._gap = self._gap, defaultdict(list)
        for doc_id, updates in gap.items():
            update = updates[0] if len(updates) == 1 else merge_updates(*updates)
            self.publish(doc_id, UPDATE, update_frame(update), update)
        for doc_id, room in list(self._rooms.items()):
            if room is None:
                continue
            presence = room.local_presence()
            if presence is not None:
                self.publish(doc_id, PRESENCE, presence, None)
            cursor = self._cursors.get(doc_id, b"0-0")
            entries = await self._range(doc_id, b"(" + cursor)
            for entry_id, fields in entries:
                self._deliver(
                    doc_id,
                    entry_id,
                    fields.get(b"o", b""),
                    fields.get(b"k", b""),
                    fields.get(b"f", b""),
                )
            await self.keeper.refresh(doc_id)
        for hook in self.recovery_hooks:
            try:
                await hook()
            except Exception:
                log.exception("a check after the Redis outage failed")
        await self._beat()
        if self._down_since is not None:
            log.warning(
                "Redis reachable again after %.1f s; caught up", time.monotonic() - self._down_since
            )
        self._down_since = None

    # -- liveness ----------------------------------------------------------------------

    async def _beat(self) -> None:
        await self._redis.set(self._alive(self.process_id), b"1", px=self.alive_for_ms)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            if self._down is not None:
                continue
            try:
                await self._beat()
                await self._check_origins()
            except asyncio.CancelledError:
                raise
            except _ERRORS as exc:
                self._went_down(exc)

    async def _check_origins(self) -> None:
        origins = [o for o, docs in self._origins.items() if docs]
        if not origins:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for origin in origins:
                pipe.exists(self._alive(origin))
            answers = await pipe.execute()
        gone = [o for o, there in zip(origins, answers, strict=True) if not there]
        for origin in gone:
            docs = self._origins.pop(origin, set())
            log.warning(
                "process %s is gone; keeping what it had not stored (%d documents)",
                origin,
                len(docs),
            )
            for doc_id in docs:
                room = self._rooms.get(doc_id)
                if room is None:
                    continue
                room.forget_origin(origin)
                if await self.lease(f"reconcile:{doc_id}:{origin}", 60.0):
                    await self.keeper.reconcile(doc_id)

    async def lease(self, name: str, seconds: float) -> bool:
        """Take the lease `name` for `seconds` unless another process holds it."""
        try:
            got = await self._redis.set(
                f"{self.prefix}:lease:{name}", self.process_id, nx=True, px=int(seconds * 1000)
            )
        except _ERRORS as exc:
            self._went_down(exc)
            return False
        return bool(got)

    async def release(self, name: str) -> None:
        """Give a lease back, if this process still holds it."""
        key = f"{self.prefix}:lease:{name}"
        with contextlib.suppress(*_ERRORS):
            if await self._redis.get(key) == self.process_id.encode():
                await self._redis.delete(key)

    # -- helpers -----------------------------------------------------------------------

    async def _range(self, doc_id: str, first: bytes) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The stream's entries from `first` on (`(id`: after id)."""
        entries: Any = await self._redis.xrange(self._stream(doc_id), min=first)
        return [(bytes(entry_id), dict(fields)) for entry_id, fields in entries]

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _entry_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)
