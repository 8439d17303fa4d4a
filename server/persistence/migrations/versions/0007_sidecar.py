"""The sidecar: feed checkpoints, the task projection, events, notifications, webhooks.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

`feed_checkpoints`: how far each reader has consumed its feed. `task_index`: one row per task
of every board. `message_index` and `edit_bursts`: what the sidecar has seen of discussions
and of editing bursts. `watches`: people watching a document. `events`: what the sidecar
derived, each once (a unique, deterministic key); `notifications`: an event for one person;
`notification_prefs`: per-user preferences. `webhooks` and `webhook_deliveries`: outgoing
webhooks and what each still has to deliver.

On SQLite the `updates` table is rebuilt with AUTOINCREMENT: the sidecar reads the log in
the order of `seq`, and without it SQLite gives the rowid of a deleted newest row (which
compaction deletes) to the next row. Its counter starts above every seq ever given, as far
as the snapshots remember.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _doc_fk(table: str, column: str = "doc_id") -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], ["documents.id"], name=f"fk_{table}_{column}_documents", ondelete="CASCADE"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table(
            "updates", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass
        op.execute("DELETE FROM sqlite_sequence WHERE name = 'updates'")
        op.execute(
            "INSERT INTO sqlite_sequence (name, seq) SELECT 'updates', max(top) FROM ("
            "SELECT coalesce(max(seq), 0) AS top FROM updates "
            "UNION ALL SELECT coalesce(max(upto_seq), 0) FROM snapshots)"
        )
    op.create_table(
        "feed_checkpoints",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_feed_checkpoints"),
    )
    op.create_table(
        "task_index",
        sa.Column("doc_id", sa.String(128), nullable=False),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("assignee", sa.String(128), nullable=True),
        sa.Column("department", sa.String(64), nullable=True),
        sa.Column("due", sa.String(40), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("watchers", sa.JSON(), nullable=True),
        sa.Column("created_by", sa.String(128), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=True),
        _doc_fk("task_index"),
        sa.PrimaryKeyConstraint("doc_id", "task_id", name="pk_task_index"),
    )
    op.create_index("ix_task_index_assignee", "task_index", ["assignee"])
    op.create_index("ix_task_index_due_at", "task_index", ["due_at"])
    op.create_index("ix_task_index_department", "task_index", ["department"])
    op.create_table(
        "message_index",
        sa.Column("doc_id", sa.String(128), nullable=False),
        sa.Column("message_id", sa.String(128), nullable=False),
        sa.Column("author", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        _doc_fk("message_index"),
        sa.PrimaryKeyConstraint("doc_id", "message_id", name="pk_message_index"),
    )
    op.create_table(
        "edit_bursts",
        sa.Column("doc_id", sa.String(128), nullable=False),
        sa.Column("user_name", sa.String(128), nullable=False),
        sa.Column("started_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        _doc_fk("edit_bursts"),
        sa.PrimaryKeyConstraint("doc_id", "user_name", name="pk_edit_bursts"),
    )
    op.create_table(
        "watches",
        sa.Column("user_name", sa.String(128), nullable=False),
        sa.Column("doc_id", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        _doc_fk("watches"),
        sa.PrimaryKeyConstraint("user_name", "doc_id", name="pk_watches"),
    )
    op.create_index("ix_watches_doc_id", "watches", ["doc_id"])
    op.create_table(
        "events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("key", sa.String(400), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("doc_id", sa.String(128), nullable=False),
        sa.Column("task_id", sa.String(128), nullable=True),
        sa.Column("message_id", sa.String(128), nullable=True),
        sa.Column("actor", sa.String(128), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("uq_events_key", "events", ["key"], unique=True)
    op.create_index("ix_events_doc_id_id", "events", ["doc_id", "id"])
    op.create_table(
        "notifications",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("user_name", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("doc_id", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"], ["events.id"], name="fk_notifications_event_id_events", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_notifications"),
    )
    op.create_index(
        "uq_notifications_user_name_event_id",
        "notifications",
        ["user_name", "event_id"],
        unique=True,
    )
    op.create_index("ix_notifications_user_name_id", "notifications", ["user_name", "id"])
    op.create_table(
        "notification_prefs",
        sa.Column("user_name", sa.String(128), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_name", name="pk_notification_prefs"),
    )
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("secret", sa.String(200), nullable=False),
        sa.Column("kinds", sa.JSON(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("created_by", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhooks"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("webhook_id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("doc_id", sa.String(128), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(300), nullable=True),
        sa.ForeignKeyConstraint(
            ["webhook_id"],
            ["webhooks.id"],
            name="fk_webhook_deliveries_webhook_id_webhooks",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["events.id"],
            name="fk_webhook_deliveries_event_id_events",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
    )
    op.create_index(
        "uq_webhook_deliveries_webhook_id_event_id",
        "webhook_deliveries",
        ["webhook_id", "event_id"],
        unique=True,
    )
    op.create_index(
        "ix_webhook_deliveries_webhook_id_delivered_at",
        "webhook_deliveries",
        ["webhook_id", "delivered_at"],
    )


def downgrade() -> None:
    for table in (
        "webhook_deliveries",
        "webhooks",
        "notification_prefs",
        "notifications",
        "events",
        "watches",
        "edit_bursts",
        "message_index",
        "task_index",
        "feed_checkpoints",
    ):
        op.drop_table(table)
