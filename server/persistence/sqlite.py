"""The settings every SQLite connection of Tandem runs with, and how durable a commit is.

Two kinds of connection write the database: SQLAlchemy's (schema, workspace, compaction) and
the update log's own sqlite3 connections (server/persistence/append.py). Both open here, so
they cannot disagree on how far a commit is synced.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

# How far a commit is synced before it returns, in WAL mode:
# normal: the log is synced at checkpoints only. A process crash (kill -9, segfault, OOM)
#   loses nothing committed; a power cut or OS crash can lose the newest commits (never
#   corrupt the file).
# full: the log is synced at every commit, so those survive a power cut too, at the cost of
#   one fsync per commit.
SqliteSynchronous = Literal["normal", "full"]
DEFAULT_SYNCHRONOUS: SqliteSynchronous = "normal"
# What `PRAGMA synchronous` reads back for each.
SYNCHRONOUS_LEVELS: dict[SqliteSynchronous, int] = {"normal": 1, "full": 2}


class Connection(Protocol):
    """A DB-API connection: sqlite3's own, or SQLAlchemy's adapter around aiosqlite."""

    def cursor(self) -> Any: ...


def apply_pragmas(conn: Connection, synchronous: SqliteSynchronous) -> None:
    """WAL (readers run beside the writer), the durability level, and foreign keys."""
    if synchronous not in SYNCHRONOUS_LEVELS:
        raise ValueError(f"unknown SQLite synchronous level {synchronous!r}")
    cursor = conn.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        # Not a bound parameter: PRAGMA takes none; the value was checked above.
        cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def synchronous_of(conn: Connection) -> int:
    """What `PRAGMA synchronous` reads back on this connection (1 NORMAL, 2 FULL)."""
    cursor = conn.cursor()
    try:
        cursor.execute("PRAGMA synchronous")
        return int(cursor.fetchone()[0])
    finally:
        cursor.close()
