"""New versions of uploaded files: news to the people who uploaded its earlier versions and
to the owner and watchers of the document it is attached to.

Files are not in the update log; the sidecar follows the `files` table by id from its own
checkpoint (`feed_checkpoints`, name `files`), written in the same transaction as the rest
of a step.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from server.persistence.tables import documents, feed_checkpoints, files, watches
from server.sidecar.derive import NewEvent

CHECKPOINT = "files"
BATCH = 200


async def checkpoint(conn: AsyncConnection) -> int | None:
    found = (
        await conn.execute(
            select(feed_checkpoints.c.position).where(feed_checkpoints.c.name == CHECKPOINT)
        )
    ).scalar()
    return None if found is None else int(found)


async def newest(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.max(files.c.id)))).scalar() or 0)


async def file_events(
    conn: AsyncConnection, after: int, base_url: str
) -> tuple[list[NewEvent], int]:
    """Events for the file versions uploaded after `after`, and the id read up to."""
    rows = (
        await conn.execute(
            select(files).where(files.c.id > after).order_by(files.c.id).limit(BATCH)
        )
    ).all()
    found: list[NewEvent] = []
    for row in rows:
        if row.version <= 1:
            continue
        earlier = await conn.execute(
            select(files.c.uploaded_by).where(
                files.c.folder_id == row.folder_id,
                files.c.name == row.name,
                files.c.version < row.version,
            )
        )
        people = {r.uploaded_by for r in earlier if r.uploaded_by}
        if row.attached_doc is not None:
            people.update(
                r.user_name
                for r in await conn.execute(
                    select(watches.c.user_name).where(watches.c.doc_id == row.attached_doc)
                )
            )
            owner = (
                await conn.execute(
                    select(documents.c.created_by).where(documents.c.id == row.attached_doc)
                )
            ).scalar()
            if owner:
                people.add(owner)
        people.discard(row.uploaded_by or "")
        uploaded = row.uploaded_at
        if uploaded.tzinfo is None:
            uploaded = uploaded.replace(tzinfo=UTC)
        found.append(
            NewEvent(
                key=f"file_changed:{row.id}",
                kind="file_changed",
                doc_id=row.attached_doc or "",
                folder_id=row.folder_id,
                task_id=row.attached_task,
                message_id=row.attached_message,
                actor=row.uploaded_by,
                created_at=uploaded if isinstance(uploaded, datetime) else datetime.now(UTC),
                recipients=people,
                data={
                    "title": row.name,
                    "file_id": row.id,
                    "folder_id": row.folder_id,
                    "version": row.version,
                    "size": row.size,
                    "summary": f"{row.uploaded_by or 'someone'} uploaded version "
                    f"{row.version} of {row.name}",
                    "url": f"{base_url}/api/files/{row.id}",
                },
            )
        )
    return found, (rows[-1].id if rows else after)
