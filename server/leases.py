"""Work that must happen once when several processes share one database.

The sidecar (server/sidecar/service.py) runs in one process at a time: two of them would
send each webhook and e-mail twice and race on the feed's checkpoint. The process that runs
it holds a lock that the database side gives up by itself when the holder dies:

- PostgreSQL: a session advisory lock (`pg_try_advisory_lock`) on a connection of its own.
  When the process dies, even by SIGKILL, its socket closes, the server ends the session and
  the lock is free; nothing has to expire. Advisory locks are per database, so installations
  in separate databases of one server do not see each other's lock.
- SQLite: `flock` on a file beside the database file (`<database>.sidecar-lock`). The kernel
  releases it when the holder's descriptor closes, which includes any death. SQLite is one
  machine's database, and so is this lock (not on a network file system).

Why not a lease in Redis: a standalone `tandem sidecar` has no Redis, and a lock that the
database side releases at death is taken over within one retry interval rather than after a
TTL; nor can a holder that stalls (a long pause of its event loop) lose a lease it still
acts on, because a session lock lasts as long as the session.

Every `RETRY_SECONDS` a standing-by process tries the lock once (one query, or one system
call on SQLite) and does nothing else; the holder checks that its lock is still held (its
connection still answers, or the lock file is still the same file) and stands down if not.
Since a PostgreSQL lock goes with its session, a pooler in transaction mode between the
server and PostgreSQL would break it: the lock connection must reach PostgreSQL itself.

Compaction of a document (server/persistence/writer.py) runs under the Redis lease
`compact:{doc_id}` when Redis is configured (`compaction_lease`), so two processes do not
compact one document at once; the store's base-snapshot check stays as the safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from server import metrics

if TYPE_CHECKING:
    from server.rooms.broker import RedisBroker

log = logging.getLogger("tandem.leases")

RETRY_SECONDS = 2.0
# How long the holder's check of its PostgreSQL connection may take before the lock counts
# as lost (the holder stands down; the session may still hold the lock, which is safe).
CHECK_TIMEOUT = 5.0
# "tandemsc" as a signed 64-bit key (its first byte is below 0x80).
ADVISORY_KEY = int.from_bytes(b"tandemsc", "big")
# A compaction lease outlives any compaction it guards (a crashed holder's lease expires).
COMPACTION_LEASE_SECONDS = 120.0
RELAY_EVENT = "sidecar-feed"
RELAY_DELAY = 0.02


class Lock(Protocol):
    """A lock that one process of an installation holds at a time."""

    name: str

    async def acquire(self) -> bool:
        """Take the lock if nobody holds it; never waits for it."""
        ...

    async def held(self) -> bool:
        """Whether this process still holds the lock it took."""
        ...

    async def release(self) -> None: ...


class AdvisoryLock:
    """A PostgreSQL session advisory lock on an asyncpg connection of its own."""

    def __init__(self, engine: AsyncEngine, key: int = ADVISORY_KEY) -> None:
        self.engine = engine
        self.key = key
        self.name = f"PostgreSQL advisory lock {key}"
        self._conn: Any = None

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            from server.persistence.listen import connect

            self._conn = await connect(self.engine.url)
        return self._conn

    async def acquire(self) -> bool:
        try:
            conn = await self._connection()
            return bool(
                await conn.fetchval(
                    "SELECT pg_try_advisory_lock($1)", self.key, timeout=CHECK_TIMEOUT
                )
            )
        except Exception:
            await self._drop()
            raise

    async def held(self) -> bool:
        if self._conn is None or self._conn.is_closed():
            return False
        try:
            await self._conn.fetchval("SELECT 1", timeout=CHECK_TIMEOUT)
        except Exception as exc:
            log.warning("the connection holding the %s failed: %s", self.name, exc)
            await self._drop()
            return False
        return True

    async def release(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            with contextlib.suppress(Exception):
                await self._conn.fetchval(
                    "SELECT pg_advisory_unlock($1)", self.key, timeout=CHECK_TIMEOUT
                )
        await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), CHECK_TIMEOUT)
            if not conn.is_closed():
                conn.terminate()


class FileLock:
    """`flock` on a file; the holder writes its pid into it for whoever looks."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = f"lock file {path}"
        self._fd: int | None = None

    async def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    async def held(self) -> bool:
        """Held unless the file was removed or replaced (then another process could lock
        the new one)."""
        if self._fd is None:
            return False
        try:
            same = os.fstat(self._fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            same = False
        if not same:
            log.warning("the %s was removed or replaced", self.name)
            await self.release()
        return same

    async def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock


class NoLock:
    """For a database only this process can open (SQLite in memory)."""

    name = "no lock (a private database)"

    async def acquire(self) -> bool:
        return True

    async def held(self) -> bool:
        return True

    async def release(self) -> None:
        return None


def sidecar_lock(engine: AsyncEngine) -> Lock:
    """The lock that the process running the sidecar of `engine`'s database holds."""
    if engine.dialect.name == "postgresql":
        return AdvisoryLock(engine)
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        return FileLock(f"{database}.sidecar-lock")
    return NoLock()


class Election:
    """Runs `start` while this process holds `lock` and `stop` when it no longer does."""

    def __init__(
        self,
        lock: Lock,
        start: Callable[[], None],
        stop: Callable[[], Awaitable[None]],
        *,
        what: str = "the sidecar",
        retry: float = RETRY_SECONDS,
    ) -> None:
        self.lock = lock
        self._start = start
        self._stop = stop
        self.what = what
        self.retry = retry
        self.leading = False
        self._task: asyncio.Task[None] | None = None
        self._waiting_logged = False

    def begin(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="election")
        return self._task

    async def _run(self) -> None:
        while True:
            try:
                await self._turn()
            except Exception as exc:  # the database away: try again at the next turn
                log.warning("%s: the %s could not be tried: %s", self.what, self.lock.name, exc)
            await asyncio.sleep(self.retry)

    async def _turn(self) -> None:
        if not self.leading:
            if await self.lock.acquire():
                self.leading = True
                self._waiting_logged = False
                metrics.SIDECAR_LEADER.set(1)
                log.info("this process runs %s (it holds the %s)", self.what, self.lock.name)
                self._start()
            elif not self._waiting_logged:
                self._waiting_logged = True
                log.info(
                    "standing by: another process runs %s (it holds the %s)",
                    self.what,
                    self.lock.name,
                )
        elif not await self.lock.held():
            self.leading = False
            metrics.SIDECAR_LEADER.set(0)
            log.warning("lost the %s: %s stops here and stands by", self.lock.name, self.what)
            await self._stop()
            await self.lock.release()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.leading:
            self.leading = False
            metrics.SIDECAR_LEADER.set(0)
            await self._stop()
        await self.lock.release()


def relay_commits(
    broker: RedisBroker, leading: Callable[[], bool], wake: Callable[[], None]
) -> Callable[[], None]:
    """On SQLite nothing tells a sidecar in another process of this process's commits
    (PostgreSQL's feed LISTENs), so it would only see them at its next poll. The returned
    function, called at each commit, tells the process running the sidecar through Redis
    (once per burst); there `wake` is called. Nothing is sent while this process leads."""
    background: set[asyncio.Task[None]] = set()

    async def heard(_payload: bytes) -> None:
        if leading():
            wake()

    async def send() -> None:
        await asyncio.sleep(RELAY_DELAY)  # the rest of a burst of commits goes with it
        background.clear()
        await broker.send_event(RELAY_EVENT, b"")

    def committed() -> None:
        if not background and not leading():
            task = asyncio.get_running_loop().create_task(send())
            background.add(task)

    broker.on_event(RELAY_EVENT, heard)
    return committed


def compaction_lease(
    broker: RedisBroker, seconds: float = COMPACTION_LEASE_SECONDS
) -> Callable[[str], AbstractAsyncContextManager[bool]]:
    """What the writer holds around a compaction (`Writer.lease`): yields True if this
    process may compact now. While Redis is unreachable it says yes, and the store's check
    of the base snapshot keeps two compactions from both standing."""

    @contextlib.asynccontextmanager
    async def lease(name: str) -> AsyncIterator[bool]:
        got = await broker.lease(name, seconds)
        if not got and broker.state() != "ok":
            yield True
            return
        try:
            yield got
        finally:
            if got:
                await broker.release(name)

    return lease
