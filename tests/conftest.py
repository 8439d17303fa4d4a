"""Shared fixtures: databases (SQLite, and PostgreSQL in CI) and real server processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
# CI sets this so that a missing PostgreSQL fails the run instead of skipping.
REQUIRE_SERVICES = os.environ.get("TANDEM_REQUIRE_SERVICES") == "1"
POSTGRES_URL = os.environ.get(
    "TANDEM_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _postgres_admin() -> object:
    import asyncpg

    url = make_url(POSTGRES_URL)
    return await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database,
        timeout=5,
    )


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    try:
        admin = await _postgres_admin()
    except (TimeoutError, OSError) as exc:
        if REQUIRE_SERVICES:
            pytest.fail(f"PostgreSQL is required but unreachable at {POSTGRES_URL}: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    name = f"tandem_test_{secrets.token_hex(6)}"
    await admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[attr-defined]
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[attr-defined]
        await admin.close()  # type: ignore[attr-defined]


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    async with postgres_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'tandem.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Every persistence test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'tandem.db'}"
        return
    async with postgres_database() as url:
        yield url


async def upgrade_schema(url: str) -> None:
    from server.persistence import migrate
    from server.persistence.sql import create_engine

    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()


class ServerProcess:
    """`tandem serve` in a subprocess on a free port, so tests can SIGKILL and restart it.

    `args` go after `serve`. With `ca_file` (the CA that signed its certificate) the server
    is expected to speak TLS: the URLs are https and wss, and requests trust that CA.
    """

    def __init__(
        self,
        database_url: str,
        workdir: Path,
        env: dict[str, str] | None = None,
        *,
        args: Sequence[str] = (),
        ca_file: str | None = None,
        launcher: Sequence[str] = (),
    ):
        self.database_url = database_url
        self.launcher = list(launcher)  # a command the server runs under (e.g. prlimit)
        self.workdir = workdir
        self.port = free_port()
        self.env = env or {}
        self.args = list(args)
        self.ca_file = ca_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"server-{self.port}.log"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.ca_file else 'ws'}://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.ca_file else 'http'}://127.0.0.1:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What an httpx client needs to trust this server."""
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True

    async def start(self, timeout: float = 30.0) -> None:
        env = {
            **os.environ,
            "TANDEM_DATABASE_URL": self.database_url,
            "TANDEM_PORT": str(self.port),
            "TANDEM_HOST": "127.0.0.1",
            "TANDEM_ROOM_GRACE_SECONDS": "1",
            **self.env,
        }
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.launcher, sys.executable, "-m", "server", "serve", *self.args],
            cwd=self.workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = asyncio.get_running_loop().time() + timeout
        async with httpx.AsyncClient(verify=self.verify) as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited at start-up:\n{self.log()}")
                try:
                    if (await http.get(f"{self.http_url}/readyz", timeout=1)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"server did not become ready:\n{self.log()}")
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    async def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM and wait for a clean exit."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + timeout
        while self.proc.poll() is None:
            if asyncio.get_running_loop().time() > deadline:
                self.proc.kill()
                raise RuntimeError("server did not stop on SIGTERM")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


ServerFactory = Callable[..., Awaitable[ServerProcess]]


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """Start servers: `await make_server(database_url, TANDEM_X="...")`; all stopped at the end."""
    started: list[ServerProcess] = []

    async def factory(database_url: str | None = None, **env: str) -> ServerProcess:
        url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'tandem.db'}"
        if url.startswith("postgresql"):
            await upgrade_schema(url)
        server = ServerProcess(url, tmp_path, env)
        started.append(server)
        await server.start()
        return server

    yield factory
    for server in started:
        try:
            await server.stop()
        except RuntimeError:
            server.kill()


@pytest.fixture
async def server(make_server: ServerFactory) -> ServerProcess:
    """One server on a fresh SQLite database."""
    return await make_server()


REDIS_URL = os.environ.get("TANDEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def require_redis(url: str = REDIS_URL) -> None:
    """Fail (in CI) or skip when Redis does not answer at `url`."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as exc:  # any failure to answer is "unreachable" here
        if REQUIRE_SERVICES:
            pytest.fail(f"Redis is required but unreachable at {url}: {exc}")
        pytest.skip(f"Redis unreachable: {exc}")
    finally:
        await client.aclose()


@pytest.fixture
async def redis_env() -> dict[str, str]:
    """Settings that make servers share documents through the test Redis, under a key
    prefix of their own."""
    await require_redis()
    return {"TANDEM_REDIS_URL": REDIS_URL, "TANDEM_REDIS_PREFIX": f"t{secrets.token_hex(6)}"}


class RedisProcess:
    """A private `redis-server` on a free port, which a test may stop and start again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        import shutil

        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.2
            ):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
