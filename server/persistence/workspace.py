"""The workspace in SQL: departments, users, folders, document metadata and file versions.

Plain functions over SQLAlchemy Core. Each takes an open connection, so a caller can run
several in one transaction (`async with engine.begin() as conn: ...`). Rows come back as
SQLAlchemy `Row`s with the tables' column names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Row,
    func,
    insert,
    literal,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from server.persistence.tables import departments, documents, files, folders, users

DOCUMENT_FIELDS = ("title", "folder_id", "department", "tags", "notes")
FOLDER_FIELDS = ("name", "parent_id", "department")


def now() -> datetime:
    return datetime.now(UTC)


def _has_tag(conn: AsyncConnection, column: Any, tag: str) -> ColumnElement[bool]:
    """`tag` is one of the strings in the JSON list `column`."""
    if conn.dialect.name == "postgresql":
        return type_coerce(column, JSONB).contains([tag])
    each = func.json_each(column).table_valued("value")
    return select(literal(1)).select_from(each).where(each.c.value == tag).exists()


async def _one(conn: AsyncConnection, stmt: Any) -> Row[Any] | None:
    return (await conn.execute(stmt)).first()


# -- departments and users --------------------------------------------------------------------


async def create_department(conn: AsyncConnection, name: str) -> Row[Any]:
    result = await conn.execute(insert(departments).values(name=name).returning(departments))
    row: Row[Any] = result.one()
    return row


async def get_department(conn: AsyncConnection, name: str) -> Row[Any] | None:
    return await _one(conn, select(departments).where(departments.c.name == name))


async def list_departments(conn: AsyncConnection) -> Sequence[Row[Any]]:
    return (await conn.execute(select(departments).order_by(departments.c.name))).all()


async def create_user(
    conn: AsyncConnection,
    name: str,
    *,
    display_name: str | None = None,
    department_id: int | None = None,
) -> Row[Any]:
    result = await conn.execute(
        insert(users)
        .values(name=name, display_name=display_name, department_id=department_id)
        .returning(users)
    )
    row: Row[Any] = result.one()
    return row


async def get_user(conn: AsyncConnection, name: str) -> Row[Any] | None:
    return await _one(conn, select(users).where(users.c.name == name))


async def list_users(
    conn: AsyncConnection, *, department_id: int | None = None
) -> Sequence[Row[Any]]:
    stmt = select(users).order_by(users.c.name)
    if department_id is not None:
        stmt = stmt.where(users.c.department_id == department_id)
    return (await conn.execute(stmt)).all()


# -- folders ------------------------------------------------------------------------------------


async def create_folder(
    conn: AsyncConnection,
    name: str,
    *,
    parent_id: int | None = None,
    department: str | None = None,
    created_by: str | None = None,
) -> Row[Any]:
    result = await conn.execute(
        insert(folders)
        .values(
            name=name,
            parent_id=parent_id,
            department=department,
            created_at=now(),
            created_by=created_by,
        )
        .returning(folders)
    )
    row: Row[Any] = result.one()
    return row


async def get_folder(conn: AsyncConnection, folder_id: int) -> Row[Any] | None:
    return await _one(conn, select(folders).where(folders.c.id == folder_id))


async def find_folder(conn: AsyncConnection, parent_id: int | None, name: str) -> Row[Any] | None:
    """The folder called `name` directly inside `parent_id` (None: at the top)."""
    parent = (
        folders.c.parent_id.is_(None) if parent_id is None else folders.c.parent_id == parent_id
    )
    return await _one(conn, select(folders).where(parent, folders.c.name == name))


async def list_folders(
    conn: AsyncConnection,
    *,
    parent_id: int | None = None,
    top_level: bool = False,
    department: str | None = None,
) -> Sequence[Row[Any]]:
    """All folders, or those inside `parent_id`, or (top_level) those at the top."""
    stmt = select(folders).order_by(folders.c.name, folders.c.id)
    if top_level:
        stmt = stmt.where(folders.c.parent_id.is_(None))
    elif parent_id is not None:
        stmt = stmt.where(folders.c.parent_id == parent_id)
    if department is not None:
        stmt = stmt.where(folders.c.department == department)
    return (await conn.execute(stmt)).all()


async def folder_ancestors(conn: AsyncConnection, folder_id: int) -> list[int]:
    """The ids from `folder_id` up to its top-level folder, `folder_id` first."""
    chain: list[int] = []
    current: int | None = folder_id
    while current is not None and current not in chain:
        chain.append(current)
        current = (
            await conn.execute(select(folders.c.parent_id).where(folders.c.id == current))
        ).scalar()
    return chain


async def update_folder(
    conn: AsyncConnection, folder_id: int, changes: Mapping[str, Any]
) -> Row[Any] | None:
    """Set any of name, parent_id (a move), department; None if there is no such folder."""
    values = {key: changes[key] for key in FOLDER_FIELDS if key in changes}
    if values:
        await conn.execute(update(folders).where(folders.c.id == folder_id).values(**values))
    return await get_folder(conn, folder_id)


async def folder_contents(conn: AsyncConnection, folder_id: int) -> dict[str, int]:
    """How many subfolders, (live) documents and files a folder holds."""
    subfolders = select(func.count()).where(folders.c.parent_id == folder_id)
    docs = select(func.count()).where(
        documents.c.folder_id == folder_id, documents.c.deleted_at.is_(None)
    )
    versions = select(func.count()).where(files.c.folder_id == folder_id)
    return {
        "folders": int((await conn.execute(subfolders)).scalar_one()),
        "documents": int((await conn.execute(docs)).scalar_one()),
        "files": int((await conn.execute(versions)).scalar_one()),
    }


async def delete_folder(conn: AsyncConnection, folder_id: int) -> bool:
    """Delete a folder (check it is empty first); soft-deleted documents in it lose the link."""
    result = await conn.execute(folders.delete().where(folders.c.id == folder_id))
    return result.rowcount == 1


# -- document metadata ---------------------------------------------------------------------------


async def document_exists(conn: AsyncConnection, doc_id: str) -> bool:
    """Whether any row has this id: live, soft-deleted, or created by a client connecting."""
    found = await conn.execute(select(documents.c.id).where(documents.c.id == doc_id))
    return found.first() is not None


async def create_document(
    conn: AsyncConnection,
    doc_id: str,
    *,
    kind: str,
    title: str,
    folder_id: int | None = None,
    department: str | None = None,
    tags: Sequence[str] = (),
    notes: str | None = None,
    created_by: str | None = None,
) -> Row[Any]:
    """Insert the metadata row; raises IntegrityError if the id exists."""
    stamp = now()
    result = await conn.execute(
        insert(documents)
        .values(
            id=doc_id,
            created_at=stamp,
            updated_at=stamp,
            kind=kind,
            title=title,
            folder_id=folder_id,
            department=department,
            tags=list(tags),
            notes=notes,
            created_by=created_by,
            updated_by=created_by,
        )
        .returning(documents)
    )
    row: Row[Any] = result.one()
    return row


async def get_document(
    conn: AsyncConnection, doc_id: str, *, include_deleted: bool = False
) -> Row[Any] | None:
    stmt = select(documents).where(documents.c.id == doc_id)
    if not include_deleted:
        stmt = stmt.where(documents.c.deleted_at.is_(None))
    return await _one(conn, stmt)


async def list_documents(
    conn: AsyncConnection,
    *,
    kind: str | None = None,
    folder_id: int | None = None,
    department: str | None = None,
    tag: str | None = None,
    text: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Sequence[Row[Any]]:
    """Live documents, most recently changed first; `text` is searched in the title."""
    stmt = select(documents).where(documents.c.deleted_at.is_(None))
    if kind is not None:
        stmt = stmt.where(documents.c.kind == kind)
    if folder_id is not None:
        stmt = stmt.where(documents.c.folder_id == folder_id)
    if department is not None:
        stmt = stmt.where(documents.c.department == department)
    if tag is not None:
        stmt = stmt.where(_has_tag(conn, documents.c.tags, tag))
    if text:
        stmt = stmt.where(documents.c.title.icontains(text, autoescape=True))
    stmt = stmt.order_by(documents.c.updated_at.desc(), documents.c.id).limit(limit).offset(offset)
    return (await conn.execute(stmt)).all()


async def update_document(
    conn: AsyncConnection,
    doc_id: str,
    changes: Mapping[str, Any],
    *,
    updated_by: str | None = None,
) -> Row[Any] | None:
    """Set any of title, folder_id, department, tags, notes on a live document."""
    values = {key: changes[key] for key in DOCUMENT_FIELDS if key in changes}
    if "tags" in values:
        values["tags"] = list(values["tags"] or ())
    result = await conn.execute(
        update(documents)
        .where(documents.c.id == doc_id, documents.c.deleted_at.is_(None))
        .values(**values, updated_by=updated_by, updated_at=now())
    )
    if result.rowcount != 1:
        return None
    return await get_document(conn, doc_id)


async def touch_document(
    conn: AsyncConnection, doc_id: str, *, updated_by: str | None = None
) -> bool:
    """Record that `updated_by` changed a live document's content just now."""
    result = await conn.execute(
        update(documents)
        .where(documents.c.id == doc_id, documents.c.deleted_at.is_(None))
        .values(updated_by=updated_by, updated_at=now())
    )
    return result.rowcount == 1


async def move_document(
    conn: AsyncConnection, doc_id: str, folder_id: int | None, *, updated_by: str | None = None
) -> Row[Any] | None:
    """Put a document into `folder_id` (None: at the top)."""
    return await update_document(conn, doc_id, {"folder_id": folder_id}, updated_by=updated_by)


async def soft_delete_document(
    conn: AsyncConnection, doc_id: str, *, deleted_by: str | None = None
) -> bool:
    """Hide a document from the workspace; its content and history stay stored."""
    stamp = now()
    result = await conn.execute(
        update(documents)
        .where(documents.c.id == doc_id, documents.c.deleted_at.is_(None))
        .values(deleted_at=stamp, updated_at=stamp, updated_by=deleted_by)
    )
    return result.rowcount == 1


async def discard_document(conn: AsyncConnection, doc_id: str) -> None:
    """Remove a row whose creation failed before it got any content."""
    await conn.execute(documents.delete().where(documents.c.id == doc_id))


# -- files ------------------------------------------------------------------------------------


async def create_file_version(
    conn: AsyncConnection,
    *,
    folder_id: int,
    name: str,
    content_type: str,
    size: int,
    sha256: str,
    blob_key: str,
    uploaded_by: str | None = None,
    tags: Sequence[str] | None = None,
    notes: str | None = None,
) -> Row[Any]:
    """Add the next version of `name` in `folder_id` (1 for a new name).

    A new version keeps the previous one's tags, notes and attachments unless given new tags
    or notes. Two uploads racing for the same number make one of them raise IntegrityError:
    retry it in a new transaction.
    """
    previous = await _one(
        conn,
        select(files)
        .where(files.c.folder_id == folder_id, files.c.name == name)
        .order_by(files.c.version.desc())
        .limit(1),
    )
    values: dict[str, Any] = {
        "folder_id": folder_id,
        "name": name,
        "version": previous.version + 1 if previous else 1,
        "content_type": content_type,
        "size": size,
        "sha256": sha256,
        "blob_key": blob_key,
        "uploaded_by": uploaded_by,
        "uploaded_at": now(),
        "tags": list(tags) if tags is not None else (previous.tags if previous else []),
        "notes": notes if notes is not None else (previous.notes if previous else None),
    }
    if previous is not None:
        values["attached_doc"] = previous.attached_doc
        values["attached_task"] = previous.attached_task
        values["attached_message"] = previous.attached_message
    result = await conn.execute(insert(files).values(**values).returning(files))
    row: Row[Any] = result.one()
    return row


async def get_file(conn: AsyncConnection, file_id: int) -> Row[Any] | None:
    return await _one(conn, select(files).where(files.c.id == file_id))


async def list_files(
    conn: AsyncConnection,
    *,
    folder_id: int | None = None,
    department: str | None = None,
    tag: str | None = None,
    text: str | None = None,
    attached_doc: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Sequence[Row[Any]]:
    """The newest version of each file, newest upload first; `text` is searched in the name.

    `department` matches files in folders of that department.
    """
    newer = files.alias("newer")
    is_latest = ~(
        select(literal(1))
        .select_from(newer)
        .where(
            newer.c.folder_id == files.c.folder_id,
            newer.c.name == files.c.name,
            newer.c.version > files.c.version,
        )
        .exists()
    )
    stmt = select(files).where(is_latest)
    if folder_id is not None:
        stmt = stmt.where(files.c.folder_id == folder_id)
    if department is not None:
        stmt = stmt.where(
            files.c.folder_id.in_(select(folders.c.id).where(folders.c.department == department))
        )
    if tag is not None:
        stmt = stmt.where(_has_tag(conn, files.c.tags, tag))
    if text:
        stmt = stmt.where(files.c.name.icontains(text, autoescape=True))
    if attached_doc is not None:
        stmt = stmt.where(files.c.attached_doc == attached_doc)
    stmt = stmt.order_by(files.c.uploaded_at.desc(), files.c.id.desc()).limit(limit).offset(offset)
    return (await conn.execute(stmt)).all()


async def list_file_versions(conn: AsyncConnection, file_id: int) -> Sequence[Row[Any]]:
    """Every version of the file that `file_id` is one version of, newest first."""
    row = await get_file(conn, file_id)
    if row is None:
        return []
    stmt = (
        select(files)
        .where(files.c.folder_id == row.folder_id, files.c.name == row.name)
        .order_by(files.c.version.desc())
    )
    return (await conn.execute(stmt)).all()


async def attach_file(
    conn: AsyncConnection,
    file_id: int,
    *,
    doc_id: str | None,
    task_id: str | None = None,
    message_id: str | None = None,
) -> Row[Any] | None:
    """Attach one file version to a document, optionally to a task or message in it."""
    result = await conn.execute(
        update(files)
        .where(files.c.id == file_id)
        .values(attached_doc=doc_id, attached_task=task_id, attached_message=message_id)
    )
    if result.rowcount != 1:
        return None
    return await get_file(conn, file_id)


async def blob_in_use(conn: AsyncConnection, blob_key: str) -> bool:
    """Whether any file version stores its content in `blob_key`."""
    found = await conn.execute(select(files.c.id).where(files.c.blob_key == blob_key).limit(1))
    return found.first() is not None


async def list_attachments(conn: AsyncConnection, doc_id: str) -> Sequence[Row[Any]]:
    """Every file version attached to `doc_id` (an older version attached on its own is
    listed too, not only the newest of each file), by task (the document's own attachments
    first), then name and version."""
    stmt = (
        select(files)
        .where(files.c.attached_doc == doc_id)
        .order_by(
            files.c.attached_task.is_not(None),
            files.c.attached_task,
            files.c.name,
            files.c.version,
            files.c.id,
        )
    )
    return (await conn.execute(stmt)).all()
