"""Three server processes share documents through Redis (real Redis, real PostgreSQL).

Clients of one document are spread over three `tandem serve` processes: stock Yjs clients in
Node and Python clients. They converge, see each other's presence, and the update log holds
each update once. A process killed with SIGKILL mid-edit loses nothing (its clients reconnect
through a balancer to another process); Redis restarted mid-edit is caught up without any
process restarting.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import RedisProcess, ServerProcess, free_port, postgres_database, upgrade_schema
from helpers import query
from pycrdt import Doc, Text, get_state, merge_updates
from yjs_node import NodeYClient

from client.sync import SyncClient

pytestmark = pytest.mark.postgres

TEXT = "text"


class Balancer:
    """A TCP load balancer: each connection goes to the next backend that accepts it."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.port = free_port()
        self._next = itertools.count()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = next(self._next)
        for step in range(len(self.ports)):
            port = self.ports[(first + step) % len(self.ports)]
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            break
        else:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        for task in (
            asyncio.ensure_future(pipe(reader, up_writer)),
            asyncio.ensure_future(pipe(up_reader, writer)),
        ):
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)


@contextlib.asynccontextmanager
async def three_servers(
    tmp_path: Path, redis_env: dict[str, str], **env: str
) -> AsyncIterator[tuple[str, list[ServerProcess]]]:
    async with postgres_database() as url:
        await upgrade_schema(url)
        settings = {
            **redis_env,
            # Rows stay as written, so the log can be checked for duplicates.
            "TANDEM_COMPACT_AFTER_UPDATES": "1000000",
            "TANDEM_COMPACT_AFTER_BYTES": "1000000000",
            **env,
        }
        servers = [ServerProcess(url, tmp_path, settings) for _ in range(3)]
        try:
            await asyncio.gather(*(s.start() for s in servers))
            yield url, servers
        finally:
            for server in servers:
                try:
                    await server.stop()
                except RuntimeError:
                    server.kill()


async def stored_rows(url: str, doc_id: str) -> list[bytes]:
    rows = await query(url, "SELECT data FROM updates WHERE doc_id = :d ORDER BY seq", d=doc_id)
    snapshot = await query(
        url,
        "SELECT s.state FROM snapshots s JOIN documents d ON d.snapshot_id = s.id "
        "WHERE d.id = :d",
        d=doc_id,
    )
    return [bytes(r[0]) for r in snapshot] + [bytes(r[0]) for r in rows]


def stored_text(rows: list[bytes]) -> str:
    doc: Doc = Doc()
    doc.apply_update(merge_updates(*rows) if len(rows) > 1 else rows[0])
    return str(doc.get(TEXT, type=Text))


def duplicates(rows: list[bytes]) -> int:
    """Rows whose structs all appear in other rows as well (the clients here only insert,
    so every row adds structs of its own unless it was stored twice)."""
    count = 0
    for i, row in enumerate(rows):
        others = rows[:i] + rows[i + 1 :]
        if not others:
            continue
        rest = merge_updates(*others)
        if get_state(merge_updates(rest, row)) == get_state(rest):
            count += 1
    return count


async def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


def py_text(client: SyncClient) -> str:
    return str(client.doc.get(TEXT, type=Text))


async def node_text(client: NodeYClient) -> str:
    state = await client.call("state")
    return str(state.get(TEXT, {}).get("text", ""))


async def test_clients_spread_over_three_processes_converge_and_see_presence(
    tmp_path: Path, redis_env: dict[str, str]
) -> None:
    async with three_servers(tmp_path, redis_env) as (url, servers):
        nodes = await asyncio.gather(*(NodeYClient.start(s.ws_url, "plan") for s in servers))
        pys = [SyncClient(s.ws_url, "plan") for s in servers]
        try:
            for py in pys:
                await py.__aenter__()
            await asyncio.gather(*(n.wait_synced() for n in nodes), *(p.wait_synced() for p in pys))

            # Everyone types at once, at random places, for a while.
            rng = random.Random(7)
            typed = 0

            async def node_types(i: int, node: NodeYClient) -> None:
                nonlocal typed
                for _ in range(40):
                    length = len(await node_text(node))
                    await node.call(
                        "insert_text", name=TEXT, index=rng.randint(0, length), value=f"n{i}"
                    )
                    typed += 2

            async def py_types(i: int, py: SyncClient) -> None:
                nonlocal typed
                text = py.doc.get(TEXT, type=Text)
                for _ in range(40):
                    text.insert(rng.randint(0, len(text)), f"p{i}")
                    typed += 2
                    await asyncio.sleep(0.01)

            started = time.perf_counter()
            await asyncio.gather(
                *(node_types(i, n) for i, n in enumerate(nodes)),
                *(py_types(i, p) for i, p in enumerate(pys)),
            )

            async def converged() -> bool:
                texts = [py_text(p) for p in pys] + [await node_text(n) for n in nodes]
                return len(texts[0]) == typed and len(set(texts)) == 1

            await wait_for(converged)
            print(
                f"\n6 clients on 3 processes typed {typed} characters; converged "
                f"{time.perf_counter() - started:.2f} s after the first keystroke"
            )

            # Presence crosses processes: a Node client on the first process is seen by the
            # Node client on the third, and by the Python client on the second.
            await nodes[0].call("awareness_set", value={"cursor": 3, "user": {"color": "#f00"}})
            client_id = str((await nodes[0].call("status"))["client_id"])

            async def seen() -> bool:
                states = (await nodes[2].call("awareness_states"))["states"]
                return states.get(client_id, {}).get("cursor") == 3

            await wait_for(seen, timeout=5)
            await wait_until_py(lambda: int(client_id) in pys[1].presence(), 5)
        finally:
            for py in pys:
                await py.__aexit__(None, None, None)
            for node in nodes:
                await node.close()

        for server in servers:
            await server.stop()
        rows = await stored_rows(url, "plan")
        assert stored_text(rows) == py_text(pys[0])
        assert duplicates(rows) == 0, f"{duplicates(rows)} of {len(rows)} rows stored twice"
        print(f"update log: {len(rows)} rows, no duplicate")


async def wait_until_py(predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_a_process_killed_mid_edit_loses_nothing(
    tmp_path: Path, redis_env: dict[str, str]
) -> None:
    async with three_servers(tmp_path, redis_env) as (url, servers):
        balancer = Balancer([s.port for s in servers])
        await balancer.start()
        clients = [SyncClient(balancer.ws_url, "plan", backoff_initial=0.05) for _ in range(6)]
        try:
            for client in clients:
                await client.__aenter__()
            await asyncio.gather(*(c.wait_synced() for c in clients))
            typed = 0
            stop = asyncio.Event()

            async def types(i: int, client: SyncClient) -> None:
                nonlocal typed
                text = client.doc.get(TEXT, type=Text)
                while not stop.is_set():
                    text.insert(len(text), f"{i}")
                    typed += 1
                    await asyncio.sleep(0.02)

            typing = [asyncio.ensure_future(types(i, c)) for i, c in enumerate(clients)]
            await asyncio.sleep(1.5)
            servers[1].kill()  # mid-edit: its writer's window dies with it
            killed_at = time.perf_counter()
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*typing)

            async def converged() -> bool:
                texts = {py_text(c) for c in clients}
                return len(texts) == 1 and len(next(iter(texts))) == typed

            await wait_for(converged, timeout=30)
            print(
                f"\n{typed} characters typed by 6 clients; process 2 of 3 killed; all "
                f"converged {time.perf_counter() - killed_at:.2f} s after the kill"
            )
            expected = py_text(clients[0])

            # The survivors store what only the dead process had taken (once its heartbeat
            # lapses): the database ends up with every character.
            async def stored_all() -> bool:
                return stored_text(await stored_rows(url, "plan")) == expected

            await wait_for(stored_all, timeout=30)
            print(f"stored in full {time.perf_counter() - killed_at:.2f} s after the kill")
        finally:
            for client in clients:
                await client.__aexit__(None, None, None)
            await balancer.close()


async def test_redis_restarted_mid_edit_every_process_catches_up(tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path)
    await redis.start()
    env = {"TANDEM_REDIS_URL": redis.url, "TANDEM_REDIS_PREFIX": "restart"}
    try:
        async with three_servers(tmp_path, env) as (url, servers):
            clients = [SyncClient(s.ws_url, "plan") for s in servers for _ in range(2)]
            try:
                for client in clients:
                    await client.__aenter__()
                await asyncio.gather(*(c.wait_synced() for c in clients))
                typed = 0
                stop = asyncio.Event()

                async def types(i: int, client: SyncClient) -> None:
                    nonlocal typed
                    text = client.doc.get(TEXT, type=Text)
                    while not stop.is_set():
                        text.insert(len(text), f"{i}")
                        typed += 1
                        await asyncio.sleep(0.02)

                typing = [asyncio.ensure_future(types(i, c)) for i, c in enumerate(clients)]
                await asyncio.sleep(1.0)
                redis.stop()
                down_at = time.perf_counter()
                await asyncio.sleep(2.0)
                await redis.start()
                back_at = time.perf_counter()
                stop.set()  # what was typed during the outage is all there is to catch up
                await asyncio.gather(*typing)

                async def converged() -> bool:
                    texts = {py_text(c) for c in clients}
                    return len(texts) == 1 and len(next(iter(texts))) == typed

                await wait_for(converged, timeout=30)
                done = time.perf_counter()
                print(
                    f"\nRedis down {back_at - down_at:.2f} s while 6 clients on 3 processes "
                    f"typed ({typed} characters in all); every client converged "
                    f"{done - back_at:.2f} s after Redis was back"
                )
            finally:
                for client in clients:
                    await client.__aexit__(None, None, None)
            for server in servers:
                await server.stop()
            rows = await stored_rows(url, "plan")
            assert stored_text(rows) == py_text(clients[0])
    finally:
        redis.stop()


async def test_versions_restores_and_deletion_work_from_any_process(
    tmp_path: Path, redis_env: dict[str, str]
) -> None:
    from helpers import api

    async with three_servers(tmp_path, redis_env) as (_url, servers):
        async with api(servers[0]) as http:
            created = await http.post("/docs", json={"kind": "doc", "id": "faq", "title": "FAQ"})
            assert created.status_code == 201, created.text
        writer = SyncClient(servers[0].ws_url, "faq")
        reader = SyncClient(servers[2].ws_url, "faq")
        async with writer, reader:
            await writer.wait_synced()
            await reader.wait_synced()
            writer.doc.get(TEXT, type=Text).insert(0, "第一版")
            await writer.wait_stored()
            # A named version taken on another process than the editor's holds the edit.
            async with api(servers[1]) as http:
                created = await http.post("/docs/faq/versions", json={"name": "v1"})
                assert created.status_code == 201, created.text
                number = created.json()["number"]
            text = writer.doc.get(TEXT, type=Text)
            text.insert(len(text), "，改过")
            await wait_until_py(lambda: py_text(reader) == "第一版，改过", 5)
            # Restored on the process nobody edits on: both clients see it.
            async with api(servers[1]) as http:
                restored = await http.post(f"/docs/faq/versions/{number}/restore")
                assert restored.status_code == 200, restored.text
            await wait_until_py(lambda: py_text(writer) == "第一版", 5)
            await wait_until_py(lambda: py_text(reader) == "第一版", 5)

        # Deleted through one process: connections on the others are closed with 4404.
        node = await NodeYClient.start(servers[2].ws_url, "faq")
        try:
            await node.wait_synced()
            async with api(servers[0]) as http:
                assert (await http.delete("/docs/faq")).status_code == 204

            async def closed() -> bool:
                events = (await node.call("events"))["events"]
                return any(e.get("code") == 4404 for e in events if isinstance(e, dict))

            await wait_for(closed, timeout=5)
        finally:
            await node.close()
