"""Sign-in: e-mail, role, active flag and password hash on `users`; revoked tokens.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

The new `users` columns are added in place on both databases (ALTER TABLE ADD COLUMN, no table
copy, see 0002). Existing users become active members without a password: they sign in once
an admin sets one (`tandem user passwd`). E-mail addresses are unique through a unique index,
which SQLite can add to an existing table where it cannot add a constraint; NULLs (users
without an address) do not collide on either database.

`revoked_tokens` holds the ids (jti) of tokens signed out before they expire; a row can go
once its token has expired.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("email", sa.String(254), nullable=True))
    op.add_column(
        "users",
        sa.Column("role", sa.String(16), nullable=False, server_default="member"),
    )
    op.add_column(
        "users", sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true())
    )
    op.add_column("users", sa.Column("password_hash", sa.String(200), nullable=True))
    op.add_column("users", sa.Column("created_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("uq_users_email", "users", ["email"], unique=True)

    op.create_table(
        "revoked_tokens",
        sa.Column("jti", sa.String(64), nullable=False),
        sa.Column("user", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("jti", name="pk_revoked_tokens"),
    )


def downgrade() -> None:
    op.drop_table("revoked_tokens")
    op.drop_index("uq_users_email", table_name="users")
    # In place again (ALTER TABLE DROP COLUMN, SQLite 3.35+): a copy would cascade.
    with op.batch_alter_table("users", recreate="never") as batch:
        for name in ("created_at", "password_hash", "active", "role", "email"):
            batch.drop_column(name)
