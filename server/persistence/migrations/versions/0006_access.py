"""Access rules, share links and the audit log.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05

`grants`: read or write on one folder (inherited beneath it) or one document, for a
department, a user or everyone (server/access.py). `share_links`: read-only, expiring,
revocable tokens for one document; a link's id is its token's jti. `audit_events`: what the
update log does not show (connections, exports, restores, access changes), per document.
New tables only, so nothing is copied on either database.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "grants",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("folder_id", sa.Integer(), nullable=True),
        sa.Column("doc_id", sa.String(128), nullable=True),
        sa.Column("department", sa.String(64), nullable=True),
        sa.Column("user_name", sa.String(128), nullable=True),
        sa.Column("everyone", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("access", sa.String(8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=True),
        sa.ForeignKeyConstraint(
            ["folder_id"],
            ["folders.id"],
            name="fk_grants_folder_id_folders",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["doc_id"],
            ["documents.id"],
            name="fk_grants_doc_id_documents",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_grants"),
    )
    op.create_index("ix_grants_folder_id", "grants", ["folder_id"])
    op.create_index("ix_grants_doc_id", "grants", ["doc_id"])

    op.create_table(
        "share_links",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("doc_id", sa.String(128), nullable=False),
        sa.Column("allow_export", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_by", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["doc_id"],
            ["documents.id"],
            name="fk_share_links_doc_id_documents",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_share_links"),
    )
    op.create_index("ix_share_links_doc_id", "share_links", ["doc_id"])

    op.create_table(
        "audit_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("doc_id", sa.String(128), nullable=False),
        sa.Column("user_name", sa.String(128), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("detail", sa.String(300), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_doc_id_at", "audit_events", ["doc_id", "at"])


def downgrade() -> None:
    op.drop_table("audit_events")
    op.drop_table("share_links")
    op.drop_table("grants")
