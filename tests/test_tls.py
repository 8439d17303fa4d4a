"""TLS end to end: `tandem serve --ssl-certfile --ssl-keyfile`, stock Yjs clients in Node and
the Python client editing one document over wss://, on asyncio's event loop and on uvloop.

The room writes each broadcast frame straight to a peer's socket (fanout.py). Under TLS that
socket carries the encrypted stream, so those writes must go through the transport instead:
the tests check that every client stays connected and converges, and that the server counts
its connections on the path it should (`tandem_ws_write_path_total`).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import ROOT, ServerProcess
from helpers import metric, wait_until
from pycrdt import Text
from websockets.asyncio.client import connect
from yjs_node import NodeYClient

from client.sync import SyncClient

DIRECT = 'tandem_ws_write_path_total{path="direct"}'
TRANSPORT = 'tandem_ws_write_path_total{path="transport"}'
# `auto` is uvloop, a dependency of uvicorn[standard]; the log line names the loop that ran.
LOOPS = [("asyncio", "asyncio"), ("auto", "uvloop")]


@dataclass
class Certificates:
    ca: Path  # the CA's certificate, which clients trust
    chain: Path  # the server's certificate chain (127.0.0.1 and localhost)
    key: Path  # its private key


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    files = Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    ca.cert_pem.write_to_path(str(files.ca))
    issued.private_key_pem.write_to_path(str(files.key))
    with files.chain.open("wb") as chain:
        for blob in issued.cert_chain_pems:
            chain.write(blob.bytes())
    return files


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[list[ServerProcess]]:
    """Servers a test appends and starts; each is stopped with SIGTERM at the end and must
    exit cleanly (the event loop runs on its own thread, the main thread takes the signal)."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        try:
            code = await server.stop()
        except RuntimeError:
            server.kill()
            raise
        assert code == 0, server.log()


async def start(
    servers: list[ServerProcess],
    tmp_path: Path,
    *,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    ca_file: Path | None = None,
) -> ServerProcess:
    server = ServerProcess(
        f"sqlite+aiosqlite:///{tmp_path / 'tandem.db'}",
        tmp_path,
        {"TANDEM_LOG_LEVEL": "debug", **(env or {})},
        args=args or [],
        ca_file=str(ca_file) if ca_file else None,
    )
    servers.append(server)
    await server.start()
    return server


def client_context(certificates: Certificates) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificates.ca))


async def edit_together(server: ServerProcess, node_env: dict[str, str], py_ssl: Any) -> str:
    """Two stock Yjs clients and a SyncClient edit the same text at once, twice; all three
    must end with the same text without losing a connection. Returns that text."""
    doc = "tls-campaign"
    nodes = [
        await NodeYClient.start(server.ws_url, doc, env=node_env),
        await NodeYClient.start(server.ws_url, doc, env=node_env),
    ]
    try:
        async with SyncClient(server.ws_url, doc, reconnect=False, ssl=py_ssl) as py:
            await py.wait_synced()
            for node in nodes:
                await node.wait_synced()
            text = py.doc.get("text", type=Text)
            for round_ in ("one", "two"):
                text.insert(0, f"py-{round_} ")
                await asyncio.gather(
                    *(
                        node.call("insert_text", index=0, value=f"node{i}-{round_} ")
                        for i, node in enumerate(nodes)
                    )
                )
            words = {f"{who}-{r} " for who in ("py", "node0", "node1") for r in ("one", "two")}

            def settled(value: str) -> bool:
                return len(value) == sum(map(len, words)) and all(w in value for w in words)

            await wait_until(lambda: settled(str(text)), timeout=15)
            final = str(text)
            for node in nodes:
                await node.wait_for(lambda s: s["text"]["text"] == final, timeout=15)
            # Convergence alone could come from reconnecting and resyncing; nobody may have.
            assert py.connected.is_set(), "the Python client lost its connection"
            for node in nodes:
                events = (await node.call("events"))["events"]
                broken = [e for e in events if e["type"].startswith("connection-")]
                assert not broken, f"{broken}\n{node.stderr_tail}"
            return final
    finally:
        for node in nodes:
            await node.close()


@pytest.mark.interop
@pytest.mark.parametrize(("loop", "loop_used"), LOOPS, ids=[name for name, _ in LOOPS])
async def test_clients_converge_over_wss(
    certificates: Certificates,
    servers: list[ServerProcess],
    tmp_path: Path,
    loop: str,
    loop_used: str,
) -> None:
    args = ["--ssl-certfile", str(certificates.chain), "--ssl-keyfile", str(certificates.key)]
    if loop != "auto":
        args += ["--loop", loop]
    server = await start(servers, tmp_path, args=args, ca_file=certificates.ca)
    assert server.ws_url.startswith("wss://")
    node_env = {"NODE_EXTRA_CA_CERTS": str(certificates.ca)}
    await edit_together(server, node_env, client_context(certificates))

    assert await metric(server, TRANSPORT) == 3
    assert await metric(server, DIRECT) == 0
    log = server.log()
    assert f"https://127.0.0.1:{server.port}" in log and f"wss://127.0.0.1:{server.port}" in log
    assert f"event loop {loop_used}" in log
    assert log.count("writes through the transport (TLS)") == 3


@pytest.mark.interop
@pytest.mark.parametrize(("loop", "loop_used"), LOOPS, ids=[name for name, _ in LOOPS])
async def test_plain_connections_write_direct(
    servers: list[ServerProcess], tmp_path: Path, loop: str, loop_used: str
) -> None:
    server = await start(servers, tmp_path, env={"TANDEM_LOOP": loop})
    await edit_together(server, {}, None)
    assert await metric(server, DIRECT) == 3
    assert await metric(server, TRANSPORT) == 0

    # A TLS-terminating proxy in front says so in X-Forwarded-Proto, and uvicorn then gives
    # the scope the scheme wss; the connection to the server is still plain, so direct.
    async with connect(
        f"{server.ws_url}/behind-proxy", additional_headers={"X-Forwarded-Proto": "https"}
    ) as ws:
        await ws.recv()  # sync step 1: the room has taken the connection on
        await wait_until(lambda: "behind-proxy" in server.log())
    assert await metric(server, DIRECT) == 4
    assert await metric(server, TRANSPORT) == 0
    log = server.log()
    assert f"http://127.0.0.1:{server.port}" in log and "https://" not in log
    assert f"event loop {loop_used}" in log
    assert log.count("writes directly to its socket") == 4


def serve_fails(*args: str, env: dict[str, str] | None = None) -> str:
    """Run `tandem serve` expecting it to refuse at once; its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--port", "1", *args],
        cwd=ROOT,
        env={**os.environ, "TANDEM_DATABASE_URL": "memory://", **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


def test_tls_needs_both_files(certificates: Certificates) -> None:
    message = serve_fails("--ssl-certfile", str(certificates.chain))
    assert "--ssl-keyfile (TANDEM_SSL_KEYFILE) is not" in message
    message = serve_fails(env={"TANDEM_SSL_KEYFILE": str(certificates.key)})
    assert "--ssl-certfile (TANDEM_SSL_CERTFILE) is not" in message


def test_tls_refuses_unreadable_or_mismatched_files(
    certificates: Certificates, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.key"
    message = serve_fails(
        "--ssl-certfile", str(certificates.chain), "--ssl-keyfile", str(missing)
    )
    assert f"cannot read --ssl-keyfile (TANDEM_SSL_KEYFILE) {missing}" in message
    # A key that belongs to another certificate.
    other = tmp_path / "other.key"
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other))
    message = serve_fails(
        env={"TANDEM_SSL_CERTFILE": str(certificates.chain), "TANDEM_SSL_KEYFILE": str(other)}
    )
    assert "are not a PEM certificate chain and its unencrypted private key" in message
