"""Exports straight from the database, for `tandem export` (no server needed).

    engine = await open_database(url)
    exported = await export_one(engine, "campaign-plan", "md")            # the newest state
    exported = await export_one(engine, "campaign-plan", "md", version=7)  # its 7th version
    entries = await folder_documents(engine, "双十一大促 2026")              # a folder's tree

The newest state is what the update log has committed; with a server running that is at most
one group-commit window (TANDEM_COMMIT_DELAY_MS) behind its rooms. A version is a row of the
`snapshots` table (automatic or named), given by its id.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from pycrdt import Doc
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from server.export import EXTENSIONS, Format, export_document
from server.export.common import attachment_from_row
from server.persistence import migrate, workspace
from server.persistence.sql import SqlStore, create_engine
from server.persistence.tables import snapshots
from shared.documents import AnyKind, call_with_deep_stack, known_kind
from shared.roots import recognise

__all__ = [
    "ExportError",
    "Exported",
    "FolderEntry",
    "Progress",
    "export_one",
    "file_name",
    "folder_documents",
    "open_database",
    "relative_paths",
    "write_file",
]

_PAGE = 500
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


class ExportError(Exception):
    """Something the user has to fix (unknown document, no such version, no database)."""


@dataclass(frozen=True, slots=True)
class Exported:
    doc_id: str
    title: str | None
    kind: AnyKind
    body: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class FolderEntry:
    """A document of the exported tree, and the folder path it has below the exported one."""

    doc_id: str
    title: str | None
    folder: PurePosixPath


def _check_url(url: str) -> None:
    if url == "memory://":
        raise ExportError("memory:// keeps documents in a server's memory; nothing to export")
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ExportError(f"not a database URL: {url!r} ({exc})") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:" or not Path(database).expanduser().is_file():
            raise ExportError(f"no database at {database or url}")


async def open_database(url: str) -> AsyncEngine:
    """An engine on an existing, migrated Tandem database (ExportError otherwise)."""
    _check_url(url)
    engine = create_engine(url)
    try:
        revision = await migrate.current(engine)
    except Exception as exc:
        await engine.dispose()
        raise ExportError(f"cannot read the database: {str(exc).splitlines()[0]}") from None
    if revision is None:
        await engine.dispose()
        raise ExportError("the database has no Tandem schema (run `tandem db upgrade` first)")
    return engine


async def _snapshot_state(engine: AsyncEngine, doc_id: str, version: int) -> bytes:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(snapshots.c.state).where(
                    snapshots.c.number == version, snapshots.c.doc_id == doc_id
                )
            )
        ).first()
    if row is None:
        raise ExportError(f"document {doc_id} has no version {version}")
    return bytes(row.state)


async def export_one(
    engine: AsyncEngine, doc_id: str, fmt: Format, *, version: int | None = None
) -> Exported:
    """Export one live document (its newest state, or its version number `version`).

    A board lists the files attached to it now (attachments have no history), with download
    links relative to the Tandem server."""
    async with engine.connect() as conn:
        row = await workspace.get_document(conn, doc_id)
        attached = [attachment_from_row(r) for r in await workspace.list_attachments(conn, doc_id)]
    if row is None:
        raise ExportError(f"no document {doc_id}")
    if version is None:
        state = (await SqlStore(engine).load(doc_id)).merged()
    else:
        state = await _snapshot_state(engine, doc_id, version)
    try:
        # pycrdt decodes nested values recursively: apply on a big-stack thread.
        doc = call_with_deep_stack(lambda: _doc_from(state))
    except Exception as exc:
        raise ExportError(f"the stored state of {doc_id} does not decode: {exc}") from None
    recorded = known_kind(row.kind)
    kind: AnyKind = (
        recorded if recorded is not None else call_with_deep_stack(lambda: recognise(doc))
    )
    body, content_type = export_document(doc, kind, fmt, attachments=attached)
    return Exported(doc_id, row.title, kind, body, content_type)


def _doc_from(state: bytes) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    if state:
        doc.apply_update(state)
    return doc


def _folder_name(name: str, folder_id: int) -> str:
    cleaned = _UNSAFE.sub("_", name).strip().strip(".")
    return cleaned[:100] or f"folder-{folder_id}"


async def _resolve_folder(conn: Any, folder: str) -> Any:
    if folder.isdigit():
        row = await workspace.get_folder(conn, int(folder))
        if row is not None:
            return row
    named = [row for row in await workspace.list_folders(conn) if row.name == folder]
    if not named:
        raise ExportError(f"no folder {folder}")
    if len(named) > 1:
        ids = ", ".join(str(row.id) for row in named)
        raise ExportError(f"several folders are named {folder!r} (ids {ids}); give the id")
    return named[0]


async def folder_documents(engine: AsyncEngine, folder: str) -> list[FolderEntry]:
    """The live documents of `folder` (an id or a name) and of its subfolders, the tree order
    kept: each folder's documents by title, then its subfolders by name."""
    async with engine.connect() as conn:
        top = await _resolve_folder(conn, folder)
        children: dict[int | None, list[Any]] = {}
        for row in await workspace.list_folders(conn):
            children.setdefault(row.parent_id, []).append(row)
        entries: list[FolderEntry] = []
        queue: list[tuple[Any, PurePosixPath]] = [(top, PurePosixPath("."))]
        seen: set[int] = set()
        while queue:
            current, path = queue.pop(0)
            if current.id in seen:
                continue
            seen.add(current.id)
            rows: list[Any] = []
            while True:
                page = await workspace.list_documents(
                    conn, folder_id=current.id, limit=_PAGE, offset=len(rows)
                )
                rows.extend(page)
                if len(page) < _PAGE:
                    break
            rows.sort(key=lambda r: (r.title or "", r.id))
            entries.extend(FolderEntry(r.id, r.title, path) for r in rows)
            used: set[str] = set()
            for child in sorted(children.get(current.id, []), key=lambda r: (r.name, r.id)):
                name = _folder_name(child.name, child.id)
                if name in used:
                    name = f"{name}-{child.id}"
                used.add(name)
                queue.append((child, path / name))
    return entries


def file_name(title: str | None, doc_id: str, fmt: Format, taken: set[str]) -> str:
    """A file name for a document: its title made safe, its id where titles repeat."""
    stem = _UNSAFE.sub("_", title or "").strip().strip(".")[:120] or doc_id
    name = stem + EXTENSIONS[fmt]
    if name.casefold() in taken:
        name = f"{stem}-{doc_id}{EXTENSIONS[fmt]}"
    taken.add(name.casefold())
    return name


class Progress:
    """A one-line progress bar on a terminal; silent when the stream is not a terminal."""

    def __init__(self, total: int, stream: TextIO | None = None, *, every: float = 0.1) -> None:
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.live = _is_terminal(self.stream)
        self._every = every
        self._drawn = 0.0

    def advance(self, label: str = "") -> None:
        self.done += 1
        now = time.monotonic()
        if self.live and (self.done >= self.total or now - self._drawn >= self._every):
            self._drawn = now
            self._draw(label)

    def _draw(self, label: str) -> None:
        columns = shutil.get_terminal_size((80, 20)).columns
        count = f" {self.done}/{self.total} "
        width = max(10, min(30, columns // 3))
        filled = width * self.done // self.total if self.total else width
        bar = "[" + "#" * filled + "-" * (width - filled) + "]" + count
        room = max(0, columns - len(bar) - 1)
        shown = label if len(label) <= room else label[: max(0, room - 1)] + "…"
        self.stream.write("\r\x1b[2K" + bar + shown)
        self.stream.flush()

    def close(self) -> None:
        if self.live and self.done:
            self.stream.write("\n")
            self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def write_file(path: Path, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)


def relative_paths(entries: Sequence[FolderEntry], fmt: Format) -> list[PurePosixPath]:
    """Where each entry goes below the output folder (unique names per folder)."""
    taken: dict[PurePosixPath, set[str]] = {}
    out: list[PurePosixPath] = []
    for entry in entries:
        names = taken.setdefault(entry.folder, set())
        out.append(entry.folder / file_name(entry.title, entry.doc_id, fmt, names))
    return out
