"""Documents, the update log and snapshots.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("snapshot_id", BigId, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_documents"),
    )
    op.create_table(
        "updates",
        sa.Column("seq", BigId, autoincrement=True, nullable=False),
        sa.Column("doc_id", sa.String(128), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("author", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_updates"),
        sa.ForeignKeyConstraint(
            ["doc_id"], ["documents.id"], name="fk_updates_doc_id_documents", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_updates_doc_id_seq", "updates", ["doc_id", "seq"])
    op.create_table(
        "snapshots",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("doc_id", sa.String(128), nullable=False),
        sa.Column("upto_seq", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("state_vector", sa.LargeBinary(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("created_by", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_snapshots"),
        sa.ForeignKeyConstraint(
            ["doc_id"], ["documents.id"], name="fk_snapshots_doc_id_documents", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_snapshots_doc_id_id", "snapshots", ["doc_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_snapshots_doc_id_id", table_name="snapshots")
    op.drop_table("snapshots")
    op.drop_index("ix_updates_doc_id_seq", table_name="updates")
    op.drop_table("updates")
    op.drop_table("documents")
