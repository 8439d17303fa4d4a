"""The Python client offline: a local store, reconnecting, durable acknowledgements, refusals.

Every test runs real server processes (killed and restarted where the test says so) and real
SQLite stores in tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, ServerFactory, ServerProcess
from helpers import api, wait_until
from pycrdt import Doc, Map, Text, TransactionEvent

from client.documents import BoardClient
from client.errors import AccessRefused, DocumentDeleted
from client.store import COMPACT_AFTER, OfflineStore
from client.sync import SyncClient, backoff_delay

SECRET = "s" * 40


async def titles_on_server(server: ServerProcess, doc_id: str) -> set[str]:
    """The task titles of a board as a fresh client reads it from the server."""
    async with SyncClient(server.ws_url, doc_id, reconnect=False) as reader:
        await reader.wait_synced()
        return {task.title for task in BoardClient(reader).tasks()}


def record_states(client: SyncClient) -> list[str]:
    seen: list[str] = []

    def recorder(event: str) -> Callable[[], None]:
        return lambda: seen.append(event)

    for event in ("connecting", "connected", "synced", "offline", "closed", "stored"):
        client.on(event, recorder(event))
    return seen


# -- no server needed ------------------------------------------------------------------------


def test_backoff_is_full_jitter_capped() -> None:
    delays = [backoff_delay(attempt, 0.2, 30.0) for attempt in range(40) for _ in range(20)]
    assert all(0.0 <= d <= 30.0 for d in delays)
    assert all(backoff_delay(0, 0.2, 30.0) <= 0.2 for _ in range(100))
    assert max(backoff_delay(20, 0.2, 30.0) for _ in range(200)) > 15.0  # reaches the cap


def test_the_store_reopens_the_document_and_compacts_it(tmp_path: Path) -> None:
    path = tmp_path / "offline.db"
    with OfflineStore(path) as store:
        doc: Doc[Any] = Doc()

        def keep(event: TransactionEvent) -> None:
            store.append("notes", event.update)

        doc.observe(keep)
        text = doc.get("text", type=Text)
        for i in range(COMPACT_AFTER + 5):
            text += str(i % 10)
        store.append("other", Doc().get_update())  # another document in the same file
        assert store.count("notes") == COMPACT_AFTER + 5
        merged = store.load("notes")
        assert merged is not None
        assert store.count("notes") == 1 and store.count("other") == 1
    with OfflineStore(path) as store:
        again: Doc[Any] = Doc()
        saved = store.load("notes")
        assert saved == merged
        again.apply_update(saved)
        assert str(again.get("text", type=Text)) == str(text)
        assert store.load("missing") is None


async def test_a_client_with_a_store_opens_and_edits_with_no_server(tmp_path: Path) -> None:
    from conftest import free_port

    url = f"ws://127.0.0.1:{free_port()}/ws"
    store = tmp_path / "offline.db"
    first = SyncClient(url, "plan", store=store, backoff_max=0.5)
    first.start()
    BoardClient(first).add("离线任务", task_id="t1")
    assert await first.close(timeout=0.5) is False  # nobody confirmed it
    second = SyncClient(url, "plan", store=store)
    assert [t.title for t in BoardClient(second).tasks()] == ["离线任务"]
    assert second.unconfirmed_writers == {first.doc.client_id}
    assert not second.all_stored


def test_content_a_document_came_with_is_kept_in_the_store(tmp_path: Path) -> None:
    doc: Doc[Any] = Doc()
    doc.get("text", type=Text).insert(0, "带来的")
    SyncClient("ws://127.0.0.1:9/ws", "given", doc, store=tmp_path / "s.db")
    again = SyncClient("ws://127.0.0.1:9/ws", "given", store=tmp_path / "s.db")
    assert str(again.doc.get("text", type=Text)) == "带来的"


# -- with a server ---------------------------------------------------------------------------


async def test_edits_made_while_the_server_is_down_arrive_when_it_is_back(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await make_server()
    server.kill()
    client = SyncClient(server.ws_url, "offline-board", store=tmp_path / "c.db", backoff_max=0.5)
    seen = record_states(client)
    async with client:
        board = BoardClient(client)
        first = board.add("双十一 价格巡检", assignee="刘洋", priority="high")
        board.set_due(first, "2026-11-08")
        await wait_until(lambda: "offline" in seen)
        assert client.state in ("connecting", "offline")
        with pytest.raises(TimeoutError):
            await client.wait_synced(timeout=0.3)
        await server.start()
        await client.wait_synced(timeout=15)
        board.add("客服 FAQ")
        await client.wait_stored(timeout=15)
        assert client.all_stored and "stored" in seen
    assert seen[-1] == "closed"
    assert await titles_on_server(server, "offline-board") == {"双十一 价格巡检", "客服 FAQ"}
    # The store knows the server has everything: nothing unconfirmed after a restart.
    reopened = SyncClient(server.ws_url, "offline-board", store=tmp_path / "c.db")
    assert reopened.all_stored and reopened.unconfirmed_writers == set()


async def test_a_server_restart_is_survived_without_the_caller_doing_anything(
    make_server: ServerFactory,
) -> None:
    server = await make_server()
    async with SyncClient(server.ws_url, "restart", backoff_max=0.5) as client:
        await client.wait_synced()
        text = client.doc.get("text", type=Text)
        text += "before "
        server.kill()  # SIGKILL: what was not committed yet is lost on the server
        await wait_until(lambda: client.state != "synced")
        text += "during "
        await server.start()
        await client.wait_synced(timeout=15)
        text += "after"
        await client.wait_stored(timeout=15)
    async with SyncClient(server.ws_url, "restart", reconnect=False) as reader:
        await reader.wait_synced()
        assert str(reader.doc.get("text", type=Text)) == "before during after"


async def test_what_wait_stored_confirmed_survives_a_kill_of_the_server(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    # A long group-commit window: the edits are applied at once, stored only at its end.
    server = await make_server(TANDEM_COMMIT_DELAY_MS="1500")
    async with SyncClient(server.ws_url, "durable", store=tmp_path / "d.db") as client:
        await client.wait_synced()
        numbers = client.doc.get("map", type=Map)
        for i in range(20):  # a stream, so that the writer waits for its window
            numbers[f"n{i}"] = i
        await client.wait_stored(timeout=20)
        assert client.all_stored
        server.kill()  # no clean shutdown: only what was committed is there
    assert OfflineStore(tmp_path / "d.db").writers("durable") == set()
    await server.start()
    async with SyncClient(server.ws_url, "durable", reconnect=False) as reader:
        await reader.wait_synced()
        assert dict(reader.doc.get("map", type=Map)) == {f"n{i}": i for i in range(20)}


async def test_a_killed_process_edits_reach_the_server_from_its_store(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await make_server()
    server.kill()
    store = tmp_path / "proc.db"
    offline = textwrap.dedent(
        f"""
        import sys, time
        from client.documents import BoardClient
        from client.sync_client import open_document

        handle = open_document({server.ws_url!r}, "proc-board", store={str(store)!r},
                               sync_timeout=0.5)
        with handle.transaction() as doc:
            BoardClient(doc).add("进程一 离线", task_id="p1")
        print("edited", flush=True)
        time.sleep(600)
        """
    )
    online = textwrap.dedent(
        f"""
        from client.documents import BoardClient
        from client.sync_client import open_document

        with open_document({server.ws_url!r}, "proc-board", store={str(store)!r},
                           sync_timeout=20) as handle:
            handle.wait_stored(timeout=20)
            print(sorted(t.title for t in handle.read(lambda d: BoardClient(d).tasks())))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(
        [sys.executable, "-c", offline], stdout=subprocess.PIPE, env=env, cwd=tmp_path
    )
    try:
        assert first.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(first.stdout.readline), 20)
        assert line.strip() == b"edited"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        if first.stdout is not None:
            first.stdout.close()
    await server.start()
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", online],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert "进程一 离线" in done.stdout.decode()
    assert await titles_on_server(server, "proc-board") == {"进程一 离线"}


async def test_a_refused_token_stops_reconnecting_with_access_refused(
    make_server: ServerFactory,
) -> None:
    server = await make_server(TANDEM_SECRET=SECRET)
    client = SyncClient(server.ws_url, "secret-board", token="not-a-token", backoff_max=0.2)
    seen = record_states(client)
    client.start()
    with pytest.raises(AccessRefused) as refused:
        await client.wait_synced(timeout=10)
    assert refused.value.code == 4401
    assert client.state == "closed" and seen[-1] == "closed"
    await asyncio.sleep(1.0)  # would be several attempts at this backoff
    assert server.log().count("ws refused") == 1
    with pytest.raises(AccessRefused):
        await client.wait_stored(timeout=1)
    with pytest.raises(AccessRefused):
        await client.close()

    with pytest.raises(AccessRefused):
        async with SyncClient(server.ws_url, "secret-board", token="bad") as again:
            await again.wait_synced()


async def test_a_deleted_document_stops_the_client_with_document_deleted(
    server: ServerProcess,
) -> None:
    async with api(server) as http:
        created = await http.post("/docs", json={"kind": "board", "title": "短命"})
        assert created.status_code == 201, created.text
        doc_id = created.json()["id"]
        client = SyncClient(server.ws_url, doc_id, backoff_max=0.2)
        client.start()
        await client.wait_synced()
        assert (await http.delete(f"/docs/{doc_id}")).status_code in (200, 204)
    await wait_until(lambda: client.state == "closed")
    assert isinstance(client.error, DocumentDeleted) and client.error.code == 4404
    with pytest.raises(DocumentDeleted):
        await client.wait_synced(timeout=1)
    with pytest.raises(DocumentDeleted):
        await client.wait_stored(timeout=1)
    with pytest.raises(DocumentDeleted):
        await client.close()


async def test_a_protocol_error_is_logged_and_the_connection_retried(
    server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    async with SyncClient(server.ws_url, "garbled", backoff_max=0.2) as client:
        await client.wait_synced()
        ws = client._ws
        assert ws is not None
        with caplog.at_level("ERROR", logger="tandem.client"):
            await ws.send(b"\x07garbage")  # the server closes with 1002
            await wait_until(lambda: "1002" in caplog.text)
            await client.wait_synced(timeout=10)  # and the client is back
        client.doc.get("text", type=Text).insert(0, "still here")
        await client.wait_stored(timeout=10)
    assert "reconnecting" in caplog.text


async def test_presence_is_shared_renewed_on_reconnect_and_removed_on_close(
    server: ServerProcess,
) -> None:
    async with (
        SyncClient(server.ws_url, "people", backoff_max=0.2) as a,
        SyncClient(server.ws_url, "people") as b,
    ):
        await a.wait_synced()
        await b.wait_synced()
        changes: list[int] = []
        b.on("presence", lambda: changes.append(1))
        a.set_presence({"user": {"name": "刘洋", "color": "#f00"}, "role": "运营"})
        await wait_until(lambda: a.doc.client_id in b.presence())
        assert b.presence()[a.doc.client_id]["role"] == "运营"
        assert changes and a.presence() == {}  # a does not list itself
        # a reconnects: its state comes back for b (the server told b it had left).
        await a.disconnect()
        await wait_until(lambda: a.doc.client_id not in b.presence())
        a.start()
        await wait_until(lambda: a.doc.client_id in b.presence())
        await a.close()
        await wait_until(lambda: a.doc.client_id not in b.presence(), timeout=5)


async def test_two_offline_clients_in_one_store_file_keep_their_documents_apart(
    server: ServerProcess, tmp_path: Path
) -> None:
    shared = OfflineStore(tmp_path / "many.db")
    with contextlib.closing(shared):
        async with (
            SyncClient(server.ws_url, "one", store=shared) as one,
            SyncClient(server.ws_url, "two", store=shared) as two,
        ):
            one.doc.get("text", type=Text).insert(0, "一")
            two.doc.get("text", type=Text).insert(0, "二")
            await one.wait_stored(timeout=10)
            await two.wait_stored(timeout=10)
        again = SyncClient(server.ws_url, "two", store=shared)
        assert str(again.doc.get("text", type=Text)) == "二"
        assert again.all_stored
