"""The writer's commit key on update rows, so that a retried commit is stored once.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

A commit whose connection drops during COMMIT may or may not have been stored. The writer
retries it under the same key, and the retry writes nothing if rows with that key are
there. The column is nullable (old rows have none) and added in place on SQLite as well: no
table copy, so foreign keys and the rows' sequence numbers are untouched. It has no index:
the retry looks among one document's rows, through `ix_updates_doc_id_seq`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("updates", sa.Column("batch_key", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("updates", "batch_key")
