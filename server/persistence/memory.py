"""MemoryStore: a Store in a dict, for unit tests of the layers above storage."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from server.persistence.store import CompactionConflict, StoredDoc, UpdateRecord


class MemoryStore:
    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[int, UpdateRecord]]] = {}
        self.snapshots: dict[str, tuple[int, bytes]] = {}
        self.fail_appends = False  # tests flip this to simulate an outage
        self.fail_loads = False
        self.keys: set[tuple[str, int]] = set()  # (first row's document, key) of each append
        self._seq = itertools.count(1)

    async def load(self, doc_id: str) -> StoredDoc:
        if self.fail_loads:
            raise ConnectionError("store unavailable")
        rows = self.rows.get(doc_id, [])
        base = self.snapshots.get(doc_id)
        return StoredDoc(
            snapshot_id=base[0] if base else None,
            snapshot=base[1] if base else None,
            seqs=[seq for seq, _ in rows],
            updates=[r.data for _, r in rows],
        )

    async def append(
        self, records: Sequence[UpdateRecord], *, key: int | None = None, again: bool = False
    ) -> None:
        if self.fail_appends:
            raise ConnectionError("store unavailable")
        if records and key is not None:
            if again and (records[0].doc_id, key) in self.keys:
                return  # stored by the earlier attempt
            self.keys.add((records[0].doc_id, key))
        self.append_now(records)

    def append_now(self, records: Sequence[UpdateRecord]) -> bool:
        if self.fail_appends:
            raise ConnectionError("store unavailable")
        for record in records:
            self.rows.setdefault(record.doc_id, []).append((next(self._seq), record))
        return True

    async def replace(
        self,
        doc_id: str,
        base_snapshot_id: int | None,
        state: bytes,
        state_vector: bytes,
        merged_seqs: Sequence[int],
    ) -> int:
        current = self.snapshots.get(doc_id)
        if (current[0] if current else None) != base_snapshot_id:
            raise CompactionConflict(doc_id)
        new_id = next(self._seq)
        self.snapshots[doc_id] = (new_id, state)
        merged = set(merged_seqs)
        self.rows[doc_id] = [(s, r) for s, r in self.rows.get(doc_id, []) if s not in merged]
        return new_id

    async def ping(self) -> None:
        if self.fail_loads:
            raise ConnectionError("store unavailable")

    async def close(self) -> None:
        pass
