"""SQLAlchemy Core tables. The Alembic migrations create them; keep both in step."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB

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
# A list of strings (tags); JSONB on PostgreSQL so that containment (@>) can filter by tag.
Tags = JSON().with_variant(JSONB(), "postgresql")

departments = Table(
    "departments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),  # the name tokens carry
    Column("display_name", String(200), nullable=True),
    Column(
        "department_id",
        Integer,
        ForeignKey("departments.id", ondelete="SET NULL"),
        nullable=True,
    ),
    # Sign-in (migration 0005). E-mail addresses are stored in lower case.
    Column("email", String(254), nullable=True),
    Column("role", String(16), nullable=False, server_default="member"),  # member|lead|admin
    Column("active", Boolean, nullable=False, server_default=true()),
    # An argon2id hash; None for a user who signs in elsewhere (or not yet).
    Column("password_hash", String(200), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=True),
    Index("uq_users_email", "email", unique=True),
)

# Tokens signed out before they expire, by id (the JWT's jti); a row may go once expired.
revoked_tokens = Table(
    "revoked_tokens",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("user", String(128), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=False),
)

folders = Table(
    "folders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("parent_id", Integer, ForeignKey("folders.id"), nullable=True),
    Column("department", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(128), nullable=True),
    Index("ix_folders_parent_id", "parent_id"),
)

documents = Table(
    "documents",
    metadata,
    Column("id", String(128), primary_key=True),
    # The snapshot that, with the remaining update rows, makes up the current state.
    Column("snapshot_id", BigId, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Workspace metadata. A client that opens an unknown id creates a row with none of it,
    # so every one of these is nullable.
    Column("kind", String(16), nullable=True),
    Column("title", String(300), nullable=True),
    Column("folder_id", Integer, ForeignKey("folders.id", ondelete="SET NULL"), nullable=True),
    Column("department", String(64), nullable=True),
    Column("tags", Tags, nullable=True),
    Column("notes", Text, nullable=True),
    Column("created_by", String(128), nullable=True),
    Column("updated_by", String(128), nullable=True),
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    Index("ix_documents_folder_id", "folder_id"),
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
    # The writer's key for the commit that stored the row, the same on every attempt: a retry
    # of a commit whose answer was lost checks for it first (migration 0003). Null for rows
    # committed on the spot (their outcome is always known) and rows from before 0003.
    Column("batch_key", BigInteger, nullable=True),
    Index("ix_updates_doc_id_seq", "doc_id", "seq"),
    # A seq is never given twice, even after compaction deleted the newest rows (without
    # AUTOINCREMENT SQLite would reuse their rowids): the sidecar reads the log by seq
    # (migration 0007).
    sqlite_autoincrement=True,
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
    # The version number within the document (1, 2, 3…), assigned at insert and never reused
    # (migration 0004); unique per document, so two concurrent inserts cannot share one.
    Column("number", Integer, nullable=False),
    Index("ix_snapshots_doc_id_id", "doc_id", "id"),
    Index("uq_snapshots_doc_id_number", "doc_id", "number", unique=True),
)

files = Table(
    "files",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("folder_id", Integer, ForeignKey("folders.id"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("blob_key", String(128), nullable=False),
    Column("uploaded_by", String(128), nullable=True),
    Column("uploaded_at", DateTime(timezone=True), nullable=False),
    Column("tags", Tags, nullable=True),
    Column("notes", Text, nullable=True),
    Column(
        "attached_doc",
        String(128),
        ForeignKey("documents.id", ondelete="SET NULL"),
        nullable=True,
    ),
    Column("attached_task", String(128), nullable=True),
    Column("attached_message", String(128), nullable=True),
    UniqueConstraint("folder_id", "name", "version"),
    Index("ix_files_attached_doc", "attached_doc"),
    Index("ix_files_blob_key", "blob_key"),
)

# Access rules (migration 0006, server/access.py): each row gives `read` or `write` on one
# folder (inherited beneath it) or one document to a department, a user, or everyone.
grants = Table(
    "grants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("folder_id", Integer, ForeignKey("folders.id", ondelete="CASCADE"), nullable=True),
    Column(
        "doc_id", String(128), ForeignKey("documents.id", ondelete="CASCADE"), nullable=True
    ),
    Column("department", String(64), nullable=True),
    Column("user_name", String(128), nullable=True),
    Column("everyone", Boolean, nullable=False, server_default=false()),
    Column("access", String(8), nullable=False),  # read | write
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(128), nullable=True),
    Index("ix_grants_folder_id", "folder_id"),
    Index("ix_grants_doc_id", "doc_id"),
)

# Share links (migration 0006): read-only, expiring, revocable tokens for one document. The
# link's token carries `id` as its token id (jti).
share_links = Table(
    "share_links",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("doc_id", String(128), ForeignKey("documents.id", ondelete="CASCADE"), nullable=False),
    Column("allow_export", Boolean, nullable=False, server_default=false()),
    Column("created_by", String(128), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Index("ix_share_links_doc_id", "doc_id"),
)

# What people did with a document that the update log does not show (migration 0006):
# connections, exports, restores, access changes.
audit_events = Table(
    "audit_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("doc_id", String(128), nullable=False),
    Column("user_name", String(128), nullable=True),
    Column("action", String(32), nullable=False),
    Column("detail", String(300), nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_audit_events_doc_id_at", "doc_id", "at"),
)

# --- the sidecar (migration 0007, server/sidecar/) ------------------------------------------

# How far each reader of a feed has consumed it: the update log ("updates", by seq), the
# events for webhooks ("webhooks", by event id), the notifications for e-mail ("email").
feed_checkpoints = Table(
    "feed_checkpoints",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# The task projection: one row per task of every board, kept in step by the sidecar.
task_index = Table(
    "task_index",
    metadata,
    Column("doc_id", String(128), ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True),
    Column("task_id", String(128), primary_key=True),
    Column("title", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("assignee", String(128), nullable=True),
    Column("department", String(64), nullable=True),  # the task's, else the board's
    Column("due", String(40), nullable=True),  # as written in the board
    Column("due_at", DateTime(timezone=True), nullable=True),  # the moment it is due, UTC
    Column("priority", String(16), nullable=False),
    Column("watchers", JSON, nullable=True),
    Column("created_by", String(128), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("updated_by", String(128), nullable=True),
    Index("ix_task_index_assignee", "assignee"),
    Index("ix_task_index_due_at", "due_at"),
    Index("ix_task_index_department", "department"),
)

# The messages of discussions the sidecar has seen: who takes part, what is new.
message_index = Table(
    "message_index",
    metadata,
    Column("doc_id", String(128), ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True),
    Column("message_id", String(128), primary_key=True),
    Column("author", String(128), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# The editing bursts of documents, per editor: a change notification goes out once a burst.
edit_bursts = Table(
    "edit_bursts",
    metadata,
    Column("doc_id", String(128), ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True),
    Column("user_name", String(128), primary_key=True),
    Column("started_seq", BigInteger, nullable=False),
    Column("last_at", DateTime(timezone=True), nullable=False),
)

# People watching a document or a folder's files (task watchers live in the board).
watches = Table(
    "watches",
    metadata,
    Column("user_name", String(128), primary_key=True),
    Column("doc_id", String(128), ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_watches_doc_id", "doc_id"),
)

# Everything the sidecar derived, once: `key` is deterministic, so a change processed again
# after a crash finds its event already there.
events = Table(
    "events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("key", String(400), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("doc_id", String(128), nullable=False),
    Column("task_id", String(128), nullable=True),
    Column("message_id", String(128), nullable=True),
    Column("actor", String(128), nullable=True),
    Column("data", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("uq_events_key", "key", unique=True),
    Index("ix_events_doc_id_id", "doc_id", "id"),
)

# An event for one person.
notifications = Table(
    "notifications",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("event_id", BigInteger, ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
    Column("user_name", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("doc_id", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("read_at", DateTime(timezone=True), nullable=True),
    Index("uq_notifications_user_name_event_id", "user_name", "event_id", unique=True),
    Index("ix_notifications_user_name_id", "user_name", "id"),
)

# Per user: muted documents, events turned off, e-mail (off | each | digest).
notification_prefs = Table(
    "notification_prefs",
    metadata,
    Column("user_name", String(128), primary_key=True),
    Column("data", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Outgoing webhooks: every event (or the kinds listed), signed with `secret`.
webhooks = Table(
    "webhooks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("url", String(2000), nullable=False),
    Column("secret", String(200), nullable=False),
    Column("kinds", JSON, nullable=True),
    Column("active", Boolean, nullable=False, server_default=true()),
    Column("created_by", String(128), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# One event for one webhook, until the receiver acknowledges it.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("webhook_id", Integer, ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    Column("event_id", BigInteger, ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
    Column("doc_id", String(128), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    Column("last_error", String(300), nullable=True),
    Index("uq_webhook_deliveries_webhook_id_event_id", "webhook_id", "event_id", unique=True),
    Index("ix_webhook_deliveries_webhook_id_delivered_at", "webhook_id", "delivered_at"),
)
