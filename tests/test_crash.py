"""What the server has applied is stored by the server alone, whatever the clients do next.

The kill test in test_durability.py keeps its clients alive, and they send their edits again
when the server comes back, which would hide a server that lost them. Here every client is a
stock Yjs client in its own Node process, and the server and all the clients die by SIGKILL
at the same moment: nothing can be sent again, so the database holds only what the server
committed by itself.

The server runs with the default commit window. Run this test with TANDEM_COMMIT_DELAY_MS
far above the wait (e.g. 60000) and it fails: that is how it shows it can see such a loss.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from typing import Any

import pytest
from conftest import ServerFactory, ServerProcess
from pycrdt import Doc, Text
from yjs_node import NodeYClient

from client.sync import SyncClient
from server.persistence.sql import SqlStore, create_engine
from server.settings import Settings

pytestmark = [pytest.mark.chaos, pytest.mark.interop]

DOCS = ("crash-a", "crash-b")
TYPISTS_PER_DOC = 2
EDITS_PER_TYPIST = 40
# The promise under test: an update the server applied is committed within the default
# window. Half a second more covers a slow commit on a busy machine.
WINDOW = Settings.model_fields["commit_delay_ms"].default / 1000
WAIT_AFTER_TYPING = WINDOW + 0.5
TOKEN = re.compile(r"\[[^\[\]]+\]")


def token(doc_id: str, typist: int, n: int) -> str:
    return f"[{doc_id}/{typist}/{n:03d}]"


async def type_edits(client: NodeYClient, doc_id: str, typist: int) -> list[str]:
    """One keystroke-sized insertion at a time, paced like a person typing fast."""
    typed = []
    for n in range(EDITS_PER_TYPIST):
        value = token(doc_id, typist, n)
        await client.call("insert_text", name="text", index=0, value=value)
        typed.append(value)
        await asyncio.sleep(0.01)
    return typed


async def wait_seen(client: NodeYClient, expected: set[str]) -> None:
    """Until `client` holds every token: edits only reach it through the server, so then the
    server has applied them all."""
    await client.wait_for(
        lambda reply: set(TOKEN.findall(reply["text"]["text"])) >= expected, timeout=30
    )


def sigkill_all(server: ServerProcess, clients: list[NodeYClient]) -> None:
    """SIGKILL the server and every client back to back, before anyone can react."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGKILL)
    for client in clients:
        os.kill(client.pid, signal.SIGKILL)


async def stored_tokens(url: str, doc_id: str) -> list[str]:
    """The tokens in what the database holds for one document (update log and snapshot)."""
    store = SqlStore(create_engine(url))
    try:
        stored = await store.load(doc_id)
    finally:
        await store.close()
    doc: Doc[Any] = Doc()
    state = stored.merged()
    if state:
        doc.apply_update(state)
    return TOKEN.findall(str(doc.get("text", type=Text)))


async def test_edits_the_server_applied_survive_killing_it_with_every_client(
    database_url: str, make_server: ServerFactory
) -> None:
    server = await make_server(database_url)
    clients: dict[str, list[NodeYClient]] = {doc_id: [] for doc_id in DOCS}
    try:
        for doc_id in DOCS:
            for _ in range(TYPISTS_PER_DOC):
                client = await NodeYClient.start(server.ws_url, doc_id)
                clients[doc_id].append(client)
                await client.wait_synced()

        typing = [
            type_edits(client, doc_id, typist)
            for doc_id in DOCS
            for typist, client in enumerate(clients[doc_id])
        ]
        typed = await asyncio.gather(*typing)
        expected: dict[str, set[str]] = {doc_id: set() for doc_id in DOCS}
        for doc_id, tokens in zip(
            [d for d in DOCS for _ in range(TYPISTS_PER_DOC)], typed, strict=True
        ):
            expected[doc_id].update(tokens)
        # Every client sees every edit of its document, its partner's through the server.
        await asyncio.gather(
            *(wait_seen(c, expected[doc_id]) for doc_id in DOCS for c in clients[doc_id])
        )

        # Typing has stopped and the server has applied everything: one window later, it
        # must have committed everything on its own.
        await asyncio.sleep(WAIT_AFTER_TYPING)
        everyone = [c for doc_id in DOCS for c in clients[doc_id]]
        sigkill_all(server, everyone)
    finally:
        server.kill()  # reaps it (and kills it, should the test have failed before)
        for client in (c for doc_id in DOCS for c in clients[doc_id]):
            await client.kill()

    # The database alone, before any server touches it again.
    for doc_id in DOCS:
        stored = await stored_tokens(database_url, doc_id)
        lost = expected[doc_id] - set(stored)
        assert not lost, (
            f"{doc_id}: the database lacks {len(lost)} of the {len(expected[doc_id])} edits "
            f"the server had applied {WAIT_AFTER_TYPING:.2f}s before it was killed"
        )
        assert len(stored) == len(expected[doc_id]), f"{doc_id}: an edit is stored twice"

    # A restarted server on the same database gives a fresh client every edit.
    await server.start()
    for doc_id in DOCS:
        async with SyncClient(server.ws_url, doc_id, reconnect=False) as fresh:
            await fresh.wait_synced()
            seen = TOKEN.findall(str(fresh.doc.get("text", type=Text)))
        assert set(seen) == expected[doc_id]
        assert len(seen) == len(expected[doc_id])
