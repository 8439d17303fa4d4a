"""The client's offline store: a document's updates in a local SQLite file.

One file may hold several documents, keyed by document id only, so use one file per server
(two servers' documents of the same id would be merged into one). Per document it keeps:

- `updates`: every update the client's document went through, local and remote, appended as
  it happens in its own small transaction (WAL, synchronous=NORMAL: a killed process loses
  nothing committed). Loading merges them into one row when there are several, and the
  client merges them again past `COMPACT_AFTER` rows, so the log stays short.
- `stored`: the newest state vector the server acknowledged as committed to its database
  (MSG_STORED), so a restarted client knows which of its edits the server may still lack.
- `writers`: the client ids this store's documents wrote with whose edits the server has not
  yet acknowledged (each process edits with a fresh client id); an id leaves the set once the
  server has stored all of its edits.

Every method is one short synchronous transaction and may be called from any thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from pycrdt import merge_updates

from client.statevector import StateVector

__all__ = ["COMPACT_AFTER", "OfflineStore"]

COMPACT_AFTER = 200
"""Rows of one document past which the client merges them into one."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS updates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS updates_by_doc ON updates (doc_id, id);
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY,
    stored TEXT NOT NULL DEFAULT '{}',
    writers TEXT NOT NULL DEFAULT '[]'
);
"""


class OfflineStore:
    """A SQLite file of document updates (see the module's docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # Autocommit mode: each statement, or each explicit BEGIN…COMMIT, is one transaction.
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=10.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> OfflineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, doc_id: str, update: bytes) -> int:
        """Append one update; returns how many rows the document now has."""
        with self._lock:
            self._db.execute("INSERT INTO updates (doc_id, data) VALUES (?, ?)", (doc_id, update))
            (count,) = self._db.execute(
                "SELECT count(*) FROM updates WHERE doc_id = ?", (doc_id,)
            ).fetchone()
        return int(count)

    def load(self, doc_id: str) -> bytes | None:
        """The document's updates merged into one (compacting the rows), None if it has none."""
        return self.compact(doc_id)

    def compact(self, doc_id: str) -> bytes | None:
        """Replace the document's rows by their merge; return it (None: no rows)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT id, data FROM updates WHERE doc_id = ? ORDER BY id", (doc_id,)
                ).fetchall()
                if not rows:
                    self._db.execute("COMMIT")
                    return None
                if len(rows) == 1:
                    self._db.execute("COMMIT")
                    return bytes(rows[0][1])
                # merge_updates keeps updates whose dependencies are missing, unlike a
                # document's own state, so nothing the log holds is dropped.
                update: bytes = merge_updates(*[bytes(data) for _, data in rows])
                self._db.execute(
                    "DELETE FROM updates WHERE doc_id = ? AND id <= ?", (doc_id, rows[-1][0])
                )
                self._db.execute(
                    "INSERT INTO updates (doc_id, data) VALUES (?, ?)", (doc_id, update)
                )
                self._db.execute("COMMIT")
                return update
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def count(self, doc_id: str) -> int:
        with self._lock:
            (count,) = self._db.execute(
                "SELECT count(*) FROM updates WHERE doc_id = ?", (doc_id,)
            ).fetchone()
        return int(count)

    def stored(self, doc_id: str) -> StateVector:
        """The server's last acknowledged stored state vector ({} when none)."""
        stored, _ = self._row(doc_id)
        return stored

    def writers(self, doc_id: str) -> set[int]:
        """Client ids whose edits the server has not acknowledged as stored (as recorded)."""
        _, writers = self._row(doc_id)
        return writers

    def save_progress(self, doc_id: str, stored: StateVector, writers: set[int]) -> None:
        """Record the server's stored state vector and the still unconfirmed writers."""
        stored_text = json.dumps({str(k): v for k, v in stored.items()})
        writers_text = json.dumps(sorted(writers))
        with self._lock:
            self._db.execute(
                "INSERT INTO documents (doc_id, stored, writers) VALUES (?, ?, ?) "
                "ON CONFLICT (doc_id) DO UPDATE SET stored = excluded.stored, "
                "writers = excluded.writers",
                (doc_id, stored_text, writers_text),
            )

    def _row(self, doc_id: str) -> tuple[StateVector, set[int]]:
        with self._lock:
            row = self._db.execute(
                "SELECT stored, writers FROM documents WHERE doc_id = ?", (doc_id,)
            ).fetchone()
        if row is None:
            return {}, set()
        stored = {int(k): int(v) for k, v in json.loads(row[0]).items()}
        return stored, {int(w) for w in json.loads(row[1])}
