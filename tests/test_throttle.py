"""A client that sends faster than its allowance is slowed down, not disconnected.

The server stops reading the socket of a connection whose token buckets are empty until they
have refilled, so TCP holds the sender back: an import script or a provider replaying an
offline session loses nothing and costs the room no more than its share.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import threading
import time

from conftest import ServerFactory
from pycrdt import Doc, Map
from rawws import (
    OP_BINARY,
    OP_CLOSE,
    Frame,
    RawWebSocket,
    client_frame,
    handshake,
    parse_frames,
    take_frames,
)

from client.sync import SyncClient
from shared.protocol import (
    AwarenessEntry,
    encode_awareness,
    encode_awareness_update,
    encode_update,
    read_varuint,
)


class Typist(threading.Thread):
    """Makes an edit every 50 ms on a blocking socket, noting when each was sent (by the
    clock of the edit's item, which counts from 0)."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(daemon=True)
        self.sock, _ = handshake(port, path)
        self.doc: Doc = Doc()
        self.sent: dict[int, float] = {}
        self._done = threading.Event()
        self.start()

    @property
    def client_id(self) -> int:
        return int(self.doc.client_id)

    def run(self) -> None:
        typed = self.doc.get("typed", type=Map)
        updates: list[bytes] = []
        self.doc.observe(lambda event: updates.append(encode_update(event.update)))
        n = 0
        while not self._done.wait(0.05):
            typed[str(n)] = n
            self.sent[n] = time.monotonic()
            self.sock.sendall(client_frame(OP_BINARY, updates.pop()))
            n += 1

    def stop(self) -> None:
        self._done.set()
        self.join(5)


class Watcher(threading.Thread):
    """Reads every frame of a connection on a blocking socket and notes when each update of
    any client arrived, by (client id, clock) of its first item; applies none."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(daemon=True)
        self.sock, self.buffer = handshake(port, path)
        self.sock.settimeout(0.2)
        self.arrivals: dict[tuple[int, int], float] = {}
        self.clocks: dict[int, list[int]] = {}  # each client's first clocks, as they came
        self._done = threading.Event()
        self.start()

    def run(self) -> None:
        data = bytearray(self.buffer)
        while not self._done.is_set():
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not chunk:
                return
            now = time.monotonic()
            data += chunk
            for frame in take_frames(data):
                payload = frame.payload
                if frame.opcode != OP_BINARY or payload[:2] != b"\x00\x02":
                    continue
                _, pos = read_varuint(payload, 2)  # the update's length
                _, pos = read_varuint(payload, pos)  # groups
                _, pos = read_varuint(payload, pos)  # items in the first group
                client, pos = read_varuint(payload, pos)
                clock, pos = read_varuint(payload, pos)
                self.arrivals.setdefault((client, clock), now)
                self.clocks.setdefault(client, []).append(clock)

    def stop(self) -> None:
        self._done.set()
        self.join(5)
        self.sock.close()


def send_all_blocking(
    port: int, path: str, frames: list[bytes], done: threading.Event
) -> tuple[float, bytes]:
    """Send each update as one WebSocket frame on a blocking socket, as fast as the socket
    takes them, then keep the connection open (reading what comes) until `done`. Returns the
    seconds the sending took and every byte the server sent after its handshake response."""
    sock, rest = handshake(port, path)
    with sock:
        received = bytearray(rest)
        started = time.monotonic()
        for frame in frames:
            sock.sendall(client_frame(OP_BINARY, frame))
        took = time.monotonic() - started
        sock.settimeout(0.1)
        while not done.is_set():
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            received += chunk
    return took, bytes(received)


RATE = 2000  # messages a second in these tests: bursts of 4,000 pass, the rest is paced


async def test_a_fast_writer_is_slowed_down_and_loses_nothing(make_server: ServerFactory) -> None:
    """20,000 updates sent as fast as one raw client can: every one is applied and seen by a
    second client, the writer is never closed, and a third client's edits still reach the
    second quickly meanwhile."""
    server = await make_server(TANDEM_MAX_MESSAGES_PER_SECOND=str(RATE))
    doc_id = "fast-writer"
    count = 20_000
    writer_doc: Doc = Doc()
    log = writer_doc.get("log", type=Map)
    frames: list[bytes] = []
    writer_doc.observe(lambda event: frames.append(encode_update(event.update)))
    for i in range(count):
        log[f"k{i}"] = i
    assert len(frames) == count

    path = f"/ws/{doc_id}"
    # The writer, the typist and the reader are threads with blocking sockets, so that the
    # writer's speed does not count in the typist's latency; the reader times each update as
    # it arrives at its socket (applying 20,000 updates in this process meanwhile would).
    reader = Watcher(server.port, path)
    typist = Typist(server.port, path)
    writer_id = int(writer_doc.client_id)
    started = time.monotonic()
    done = threading.Event()
    sending = asyncio.create_task(
        asyncio.to_thread(send_all_blocking, server.port, path, frames, done)
    )
    try:
        async with asyncio.timeout(120):
            while (writer_id, count - 1) not in reader.arrivals:
                await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started
    finally:
        typist.stop()
        done.set()
    sent_in, received = await sending
    await asyncio.sleep(0.5)  # the typist's last edit arrives
    reader.stop()
    closes = [f for f in parse_frames(received) if f.opcode == OP_CLOSE]
    assert not closes, f"the writer was closed: {closes[0].close_code} {closes[0].close_reason}"
    # Every update reached the reader, once each, in order; and the room holds them all.
    assert reader.clocks[writer_id] == list(range(count))
    async with SyncClient(server.ws_url, doc_id) as fresh:
        await fresh.wait_synced()
        assert dict(fresh.doc.get("log", type=Map)) == dict(log)
    latencies = [
        reader.arrivals[(typist.client_id, clock)] - at for clock, at in typist.sent.items()
    ]
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000
    print(
        f"\n20,000 updates at full speed: the writer's socket took them in {sent_in:.1f} s,"
        f" the room applied them in {elapsed:.1f} s (allowance {RATE}/s, bursts of"
        f" {RATE * 2}); meanwhile {len(latencies)} edits of another client: median"
        f" {statistics.median(latencies) * 1000:.1f} ms, p99 {p99:.1f} ms"
    )
    # Paced, not refused: after the burst the rest came in at about the allowed rate.
    assert elapsed > (count - RATE * 2) / RATE * 0.8
    assert p99 < 100, f"the other client's edits took {p99:.0f} ms at p99"


async def test_a_presence_flood_is_still_closed(make_server: ServerFactory) -> None:
    """Presence has no honest reason to come faster than the allowance: past it, 1008."""
    server = await make_server(TANDEM_MAX_MESSAGES_PER_SECOND="50")
    ws = await RawWebSocket.connect(server.port, "/ws/presence-flood")
    try:
        with contextlib.suppress(OSError):
            for clock in range(2000):
                entry = AwarenessEntry(4242, clock + 1, '{"cursor":' + str(clock) + "}")
                ws.send(encode_awareness(encode_awareness_update([entry])))
                await ws.drain()
        frames = await ws.read_to_end(20)
    finally:
        ws.abort()
    assert frames[-1].opcode == OP_CLOSE, frames[-1]
    assert frames[-1].close_code == 1008
    assert all(f.opcode in (OP_BINARY, OP_CLOSE) for f in frames)


async def test_a_writer_over_its_budget_for_too_long_is_closed(make_server: ServerFactory) -> None:
    """Pacing bounds the rate; `TANDEM_MAX_THROTTLED_SECONDS` bounds how long a connection
    may keep pushing past it before it is closed (1008)."""
    server = await make_server(
        TANDEM_MAX_MESSAGES_PER_SECOND="100", TANDEM_MAX_THROTTLED_SECONDS="2"
    )
    doc: Doc = Doc()
    counter = doc.get("c", type=Map)
    frames: list[bytes] = []
    doc.observe(lambda event: frames.append(encode_update(event.update)))
    for i in range(200_000):
        counter["n"] = i
    # Blocking sockets in threads: a failed send must not hide what can still be read.
    sock, rest = handshake(server.port, "/ws/too-long")
    stop = threading.Event()

    def push() -> None:
        with contextlib.suppress(OSError):
            for frame in frames:
                if stop.is_set():
                    return
                sock.sendall(client_frame(OP_BINARY, frame))

    def read() -> list[Frame]:
        data = bytearray(rest)
        got: list[Frame] = []
        sock.settimeout(30)
        with contextlib.suppress(OSError):
            while not any(f.opcode == OP_CLOSE for f in got):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                got += take_frames(data)
        return got

    started = time.monotonic()
    pusher = threading.Thread(target=push, daemon=True)
    pusher.start()
    try:
        got = await asyncio.to_thread(read)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        sock.close()
        pusher.join(5)
    closes = [f for f in got if f.opcode == OP_CLOSE]
    assert closes and closes[0].close_code == 1008, got[-3:]
    # The burst (200) goes at once; then about 2 s of pacing, not an instant close.
    assert elapsed > 2
