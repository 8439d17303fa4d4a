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
from typing import Any

from pycrdt import Doc, get_state, get_update, merge_updates

from server import metrics
from server.persistence.store import CompactionConflict, Store, StoredDoc
from shared.documents import call_with_deep_stack
from shared.protocol import read_varuint

log = logging.getLogger("tandem.persistence")


@dataclass(frozen=True, slots=True)
class CompactionResult:
    snapshot_id: int
    merged_rows: int
    state_bytes: int


def build_snapshot(stored: StoredDoc) -> tuple[bytes, bytes]:
    """(state, state vector) of everything stored. Runs in a worker thread.

    Merged update bytes keep every deleted item's content, so a document that is rewritten
    often would grow without bound. When the merge leaves nothing pending, the state is
    re-encoded from a document, which garbage-collects deleted content the way Yjs servers
    do; otherwise the merged bytes are kept as they are, so nothing is lost.
    """
    parts = ([stored.snapshot] if stored.snapshot is not None else []) + stored.updates
    merged = bytes(merge_updates(*parts)) if len(parts) > 1 else parts[0]
    doc: Doc[Any] = Doc()
    doc.apply_update(merged)
    state_vector = bytes(doc.get_state())
    if _fully_integrated(merged, state_vector):
        return bytes(doc.get_update()), state_vector
    return merged, bytes(get_state(merged))


def _fully_integrated(merged: bytes, state_vector: bytes) -> bool:
    """True if a document holding `state_vector` integrated every struct and every delete of
    `merged`, so that re-encoding it loses nothing still pending."""
    # The diff against the document's state: a v1 update, struct section then delete set.
    leftover = bytes(get_update(merged, state_vector))
    structs, pos = read_varuint(leftover, 0)
    if structs:
        return False  # structs waiting for a dependency
    clocks = _read_state_vector(state_vector)
    clients, pos = read_varuint(leftover, pos)
    for _ in range(clients):
        client, pos = read_varuint(leftover, pos)
        ranges, pos = read_varuint(leftover, pos)
        for _ in range(ranges):
            clock, pos = read_varuint(leftover, pos)
            length, pos = read_varuint(leftover, pos)
            if clock + length > clocks.get(client, 0):
                return False  # a delete of content the document does not have yet
    return True


def _read_state_vector(data: bytes) -> dict[int, int]:
    count, pos = read_varuint(data, 0)
    clocks: dict[int, int] = {}
    for _ in range(count):
        client, pos = read_varuint(data, pos)
        clocks[client], pos = read_varuint(data, pos)
    return clocks


async def compact(store: Store, doc_id: str) -> CompactionResult | None:
    """Compact `doc_id` if it has update rows. Returns None if there was nothing to do or
    another compaction won the race."""
    stored = await store.load(doc_id)
    if not stored.updates:
        return None
    state, state_vector = await asyncio.to_thread(
        call_with_deep_stack, lambda: build_snapshot(stored)
    )
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
