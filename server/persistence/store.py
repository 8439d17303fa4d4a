"""The Store interface, the records it speaks in, and `open_store(url)`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from pycrdt import merge_updates


class UpdateRecord(NamedTuple):
    """One row for the update log."""

    doc_id: str
    data: bytes
    origin: str
    author: str | None


@dataclass(frozen=True, slots=True)
class StoredDoc:
    """A document as stored: its base snapshot plus every update row not merged into it."""

    snapshot_id: int | None = None
    snapshot: bytes | None = None
    seqs: list[int] = field(default_factory=list)
    updates: list[bytes] = field(default_factory=list)
    # Soft-deleted through the API: the history stays stored, but nobody may open it.
    deleted: bool = False

    @property
    def empty(self) -> bool:
        return self.snapshot is None and not self.updates

    def merged(self) -> bytes:
        """The whole stored state as one update (pending structs included)."""
        parts = ([self.snapshot] if self.snapshot is not None else []) + self.updates
        if not parts:
            return b""
        if len(parts) == 1:
            return parts[0]
        return bytes(merge_updates(*parts))


class CompactionConflict(Exception):
    """Another compaction replaced the base snapshot first; nothing was written."""


class Store(Protocol):
    async def load(self, doc_id: str) -> StoredDoc:
        """The stored state of `doc_id` (empty if unknown). Raises on a storage failure."""
        ...

    async def append(
        self, records: Sequence[UpdateRecord], *, key: int | None = None, again: bool = False
    ) -> None:
        """Durably append all records in one transaction, each row tagged with `key`.

        `again`: an earlier call with the same records and key failed, and may have
        committed all the same (a connection lost during COMMIT); if rows with that key are
        stored, nothing is written, so a retried commit is stored once.
        """
        ...

    def append_now(self, records: Sequence[UpdateRecord]) -> bool:
        """Append as `append` does, on the spot, if that needs no waiting; False when it
        would (the database is busy, or only reachable asynchronously): nothing was written."""
        ...

    async def replace(
        self,
        doc_id: str,
        base_snapshot_id: int | None,
        state: bytes,
        state_vector: bytes,
        merged_seqs: Sequence[int],
    ) -> int:
        """Atomically make `state` the base snapshot and delete exactly `merged_seqs`.

        Raises CompactionConflict if the base snapshot is no longer `base_snapshot_id`.
        Returns the new snapshot's id.
        """
        ...

    async def ping(self) -> None:
        """Raise unless the database answers."""
        ...

    async def close(self) -> None: ...
