"""Workspace: departments, users, folders, document metadata and uploaded files.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

On SQLite the new `documents` columns are added in place (ALTER TABLE ADD COLUMN), never by
batch mode's copy-and-move: with foreign keys on, dropping the old `documents` table would
cascade and delete every row of `updates` and `snapshots`. That is why the batch below says
recreate="never", and why `folder_id` carries its reference inline on SQLite.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Tags = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# Metadata columns of `documents`, all nullable: rows created by a client that opened an
# unknown id have none of them.
_DOCUMENT_COLUMNS = (
    ("kind", sa.String(16)),
    ("title", sa.String(300)),
    ("department", sa.String(64)),
    ("tags", Tags),
    ("notes", sa.Text()),
    ("created_by", sa.String(128)),
    ("updated_by", sa.String(128)),
    ("deleted_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    op.create_table(
        "departments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_departments"),
        sa.UniqueConstraint("name", name="uq_departments_name"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=True),
        sa.Column("department_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("name", name="uq_users_name"),
        sa.ForeignKeyConstraint(
            ["department_id"],
            ["departments.id"],
            name="fk_users_department_id_departments",
            ondelete="SET NULL",
        ),
    )
    op.create_table(
        "folders",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("department", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_folders"),
        sa.ForeignKeyConstraint(["parent_id"], ["folders.id"], name="fk_folders_parent_id_folders"),
    )
    op.create_index("ix_folders_parent_id", "folders", ["parent_id"])

    with op.batch_alter_table("documents", recreate="never") as batch:
        for name, type_ in _DOCUMENT_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "ALTER TABLE documents ADD COLUMN folder_id INTEGER "
            "REFERENCES folders (id) ON DELETE SET NULL"
        )
    else:
        op.add_column("documents", sa.Column("folder_id", sa.Integer(), nullable=True))
        op.create_foreign_key(
            "fk_documents_folder_id_folders",
            "documents",
            "folders",
            ["folder_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.create_index("ix_documents_folder_id", "documents", ["folder_id"])

    op.create_table(
        "files",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("folder_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("blob_key", sa.String(128), nullable=False),
        sa.Column("uploaded_by", sa.String(128), nullable=True),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tags", Tags, nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("attached_doc", sa.String(128), nullable=True),
        sa.Column("attached_task", sa.String(128), nullable=True),
        sa.Column("attached_message", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_files"),
        sa.ForeignKeyConstraint(["folder_id"], ["folders.id"], name="fk_files_folder_id_folders"),
        sa.ForeignKeyConstraint(
            ["attached_doc"],
            ["documents.id"],
            name="fk_files_attached_doc_documents",
            ondelete="SET NULL",
        ),
        sa.UniqueConstraint("folder_id", "name", "version", name="uq_files_folder_id_name_version"),
    )
    op.create_index("ix_files_attached_doc", "files", ["attached_doc"])
    op.create_index("ix_files_blob_key", "files", ["blob_key"])


def downgrade() -> None:
    op.drop_index("ix_files_blob_key", table_name="files")
    op.drop_index("ix_files_attached_doc", table_name="files")
    op.drop_table("files")
    op.drop_index("ix_documents_folder_id", table_name="documents")
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint("fk_documents_folder_id_folders", "documents", type_="foreignkey")
    # In place again (ALTER TABLE DROP COLUMN, SQLite 3.35+): a copy would cascade.
    with op.batch_alter_table("documents", recreate="never") as batch:
        batch.drop_column("folder_id")
        for name, _ in reversed(_DOCUMENT_COLUMNS):
            batch.drop_column(name)
    op.drop_index("ix_folders_parent_id", table_name="folders")
    op.drop_table("folders")
    op.drop_table("users")
    op.drop_table("departments")
