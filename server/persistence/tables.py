"""SQLAlchemy Core tables. The Alembic migrations create them; keep both in step."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only autoincrements a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")

documents = Table(
    "documents",
    metadata,
    Column("id", String(128), primary_key=True),
    # The snapshot that, with the remaining update rows, makes up the current state.
    Column("snapshot_id", BigId, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

updates = Table(
    "updates",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("doc_id", String(128), ForeignKey("documents.id", ondelete="CASCADE"), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("origin", String(16), nullable=False),
    Column("author", String(128), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_updates_doc_id_seq", "doc_id", "seq"),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("doc_id", String(128), ForeignKey("documents.id", ondelete="CASCADE"), nullable=False),
    # The highest update seq merged into this snapshot (0: none).
    Column("upto_seq", BigInteger, nullable=False),
    Column("state", LargeBinary, nullable=False),
    Column("state_vector", LargeBinary, nullable=False),
    Column("kind", String(16), nullable=False),  # "auto" (compaction) or "named"
    Column("name", String(200), nullable=True),
    Column("created_by", String(128), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_snapshots_doc_id_id", "doc_id", "id"),
)
