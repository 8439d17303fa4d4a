"""Compaction: fold a document's update rows into a new base snapshot, losing nothing.

The snapshot is built by merging the stored bytes (`merge_updates`), never from a live
`Doc.get_update()`, which leaves out updates still waiting for their dependencies. The store
then deletes exactly the rows that were merged, in the same transaction that moves the base,
so rows appended meanwhile stay, and a racing compaction fails instead of overwriting.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from pycrdt import get_state, merge_updates

from server import metrics
from server.persistence.store import CompactionConflict, Store, StoredDoc

log = logging.getLogger("tandem.persistence")


@dataclass(frozen=True, slots=True)
class CompactionResult:
    snapshot_id: int
    merged_rows: int
    state_bytes: int


def build_snapshot(stored: StoredDoc) -> tuple[bytes, bytes]:
    """(state, state vector) of everything stored; pure bytes, safe in a worker thread."""
    parts = ([stored.snapshot] if stored.snapshot is not None else []) + stored.updates
    state = bytes(merge_updates(*parts)) if len(parts) > 1 else parts[0]
    return state, bytes(get_state(state))


async def compact(store: Store, doc_id: str) -> CompactionResult | None:
    """Compact `doc_id` if it has update rows. Returns None if there was nothing to do or
    another compaction won the race."""
    stored = await store.load(doc_id)
    if not stored.updates:
        return None
    state, state_vector = await asyncio.to_thread(build_snapshot, stored)
    try:
        snapshot_id = await store.replace(
            doc_id, stored.snapshot_id, state, state_vector, stored.seqs
        )
    except CompactionConflict:
        log.info("compaction of %s lost a race; the other one stands", doc_id)
        return None
    metrics.COMPACTIONS.inc()
    log.info(
        "compacted %s: %d rows into snapshot %d (%d bytes)",
        doc_id,
        len(stored.seqs),
        snapshot_id,
        len(state),
    )
    return CompactionResult(snapshot_id, len(stored.seqs), len(state))
