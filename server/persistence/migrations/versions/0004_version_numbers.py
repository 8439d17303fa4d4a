"""Per-document version numbers on `snapshots`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

A document's versions are numbered 1, 2, 3… in the order they were made, the number stored
with the row and never reused, so that pruning old automatic snapshots leaves every other
number as it was. Existing rows are numbered per document in id order. The column is added in
place on SQLite (no table copy, see 0002) and left nullable there; the unique index on
(doc_id, number) is what keeps two concurrent inserts from taking the same number. On
PostgreSQL the column is also made NOT NULL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("snapshots", sa.Column("number", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE snapshots SET number = (SELECT count(*) FROM snapshots AS earlier "
        "WHERE earlier.doc_id = snapshots.doc_id AND earlier.id <= snapshots.id)"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("snapshots", "number", nullable=False)
    op.create_index(
        "uq_snapshots_doc_id_number", "snapshots", ["doc_id", "number"], unique=True
    )


def downgrade() -> None:
    op.drop_index("uq_snapshots_doc_id_number", table_name="snapshots")
    op.drop_column("snapshots", "number")
