"""Prometheus metrics, defined once per process and served at /metrics."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class Tally:
    """The counts bumped for every frame, in the event loop's thread only.

    A prometheus_client Counter takes a lock on each `inc` (about 0.7 µs, and the per-update
    path made five of them); these are plain integers, read when /metrics is scraped.
    """

    __slots__ = ("frames_in", "bytes_in", "frames_out", "bytes_out", "updates_applied")

    def __init__(self) -> None:
        self.frames_in = 0
        self.bytes_in = 0
        self.frames_out = 0
        self.bytes_out = 0
        self.updates_applied = 0


TALLY = Tally()

_TALLIED = (
    ("frames_in", "tandem_frames_in", "WebSocket frames received"),
    ("bytes_in", "tandem_bytes_in", "Bytes received in WebSocket frames"),
    ("frames_out", "tandem_frames_out", "Frames written to peers"),
    ("bytes_out", "tandem_bytes_out", "Bytes written to peers"),
    ("updates_applied", "tandem_updates_applied", "Updates that changed a document"),
)


class _TallyCollector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily]:
        for attr, name, help_text in _TALLIED:
            yield CounterMetricFamily(name, help_text, value=getattr(TALLY, attr))


REGISTRY.register(_TallyCollector())


ROOMS = Gauge("tandem_rooms", "Documents loaded in memory")
CONNECTIONS = Gauge("tandem_connections", "Open WebSocket connections")
CONNECTIONS_TOTAL = Counter("tandem_connections_opened", "WebSocket connections accepted")
# How the room writes to each connection: `direct` (os.write on a duplicate of its socket) or
# `transport` (the event loop's transport: under TLS, which encrypts, or without a socket).
WRITE_PATH = Counter(
    "tandem_ws_write_path", "WebSocket connections by the path of the room's writes", ["path"]
)
WRITE_DIRECT = WRITE_PATH.labels(path="direct")
WRITE_TRANSPORT = WRITE_PATH.labels(path="transport")
REJECTED_FRAMES = Counter("tandem_rejected_frames", "Frames that closed their connection", ["code"])
READ_ONLY_WRITES_DROPPED = Counter(
    "tandem_read_only_writes_dropped", "Updates from read-only connections that were ignored"
)
SLOW_PEERS_DROPPED = Counter("tandem_slow_peers_dropped", "Peers cut off for not reading")
THROTTLED = Counter(
    "tandem_ws_throttled", "Pauses in reading a connection that sent past its allowance"
)
LOAD_SECONDS = Histogram("tandem_load_seconds", "Time to load a document from the store")
LOAD_FAILURES = Counter("tandem_load_failures", "Document loads that failed")
PERSIST_BATCH_UPDATES = Histogram(
    "tandem_persist_batch_updates",
    "Updates per group commit",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000),
)
PERSIST_SECONDS = Histogram("tandem_persist_seconds", "Time to commit one batch of updates")
PERSIST_FAILURES = Counter("tandem_persist_failures", "Group commits that failed and were retried")
PERSIST_PENDING = Gauge("tandem_persist_pending", "Updates waiting to be committed")
PERSIST_PENDING_BYTES = Gauge(
    "tandem_persist_pending_bytes", "Bytes of the updates waiting to be committed"
)
COMPACTIONS = Counter("tandem_compactions", "Snapshots written by compaction")
COMPACTIONS_SKIPPED = Counter(
    "tandem_compactions_skipped", "Compactions left to another process that held the lease"
)
# 1 in the process that runs the sidecar (server/leases.py), 0 in those standing by.
SIDECAR_LEADER = Gauge("tandem_sidecar_leader", "Whether this process runs the sidecar")
# Scale-out through Redis (server/rooms/broker.py).
BROKER_PUBLISHED = Counter("tandem_broker_published", "Room changes appended to Redis")
BROKER_RECEIVED = Counter("tandem_broker_received", "Changes of other processes received")
BROKER_OUTAGES = Counter("tandem_broker_outages", "Times Redis became unreachable")
# Which process answered a scrape: each serves its own /metrics (`tandem serve --workers N`,
# or several servers sharing documents through Redis).
PROCESS_INFO = Gauge(
    "tandem_process_info",
    "This process: its id among those sharing documents through Redis, and its OS pid",
    ["process", "pid"],
)
