"""Prometheus metrics, defined once per process and served at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ROOMS = Gauge("tandem_rooms", "Documents loaded in memory")
CONNECTIONS = Gauge("tandem_connections", "Open WebSocket connections")
CONNECTIONS_TOTAL = Counter("tandem_connections_opened", "WebSocket connections accepted")
FRAMES_IN = Counter("tandem_frames_in", "WebSocket frames received")
BYTES_IN = Counter("tandem_bytes_in", "Bytes received in WebSocket frames")
FRAMES_OUT = Counter("tandem_frames_out", "Frames written to peers")
BYTES_OUT = Counter("tandem_bytes_out", "Bytes written to peers")
UPDATES_APPLIED = Counter("tandem_updates_applied", "Updates that changed a document")
REJECTED_FRAMES = Counter("tandem_rejected_frames", "Frames that closed their connection", ["code"])
READ_ONLY_WRITES_DROPPED = Counter(
    "tandem_read_only_writes_dropped", "Updates from read-only connections that were ignored"
)
SLOW_PEERS_DROPPED = Counter("tandem_slow_peers_dropped", "Peers cut off for not reading")
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
COMPACTIONS = Counter("tandem_compactions", "Snapshots written by compaction")
