"""Blob storage for uploaded files: streamed in, hashed on the way, addressed by content.

A blob's key is the SHA-256 of its bytes, so the same content uploaded twice is stored once.
Neither direction ever holds a whole file in memory: `put` writes each chunk as it arrives,
`open` yields the file a chunk at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

_KEY = re.compile(r"[0-9a-f]{64}")
_WRITE_BUFFER = 1024 * 1024  # bytes gathered before one write (and hash update) in a thread
_READ_CHUNK = 256 * 1024
# An upload's temporary file older than this was left by a process that died mid-upload;
# younger ones may belong to an upload in progress in another server process.
STALE_UPLOAD_SECONDS = 24 * 3600


class BlobTooLarge(Exception):
    """The stream went past the size limit; nothing was stored."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


class BlobMissing(Exception):
    """No blob has this key."""


@dataclass(frozen=True, slots=True)
class StoredBlob:
    key: str
    size: int
    sha256: str


class BlobStore(Protocol):
    async def put(self, chunks: AsyncIterable[bytes], limit: int | None = None) -> StoredBlob:
        """Store a stream; raise BlobTooLarge past `limit` bytes, leaving nothing behind."""
        ...

    async def open(self, key: str) -> AsyncIterator[bytes]:
        """The blob's bytes, a chunk at a time; raise BlobMissing if there is none."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the blob; no error if it is gone already."""
        ...


class FileBlobStore:
    """Blobs as files: `<root>/ab/cdef…` for the key `abcdef…`.

    An upload goes to `<root>/tmp/` while it is hashed, is flushed to disk and is then renamed
    into place, so a blob path only ever holds complete content. A failed, cancelled or
    over-limit upload removes its temporary file.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"

    def sweep_stale_uploads(self, older_than: float = STALE_UPLOAD_SECONDS) -> int:
        """Remove temporary upload files older than `older_than` seconds, which a process
        that was killed mid-upload left behind; return how many. Blocking: run in a thread."""
        cutoff = time.time() - older_than
        removed = 0
        try:
            leftovers = list(self.tmp.glob("*.part"))
        except OSError:
            return 0
        for leftover in leftovers:
            with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
                    removed += 1
        return removed

    def path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise BlobMissing(f"not a blob key: {key!r}")
        return self.root / key[:2] / key[2:]

    async def put(self, chunks: AsyncIterable[bytes], limit: int | None = None) -> StoredBlob:
        await asyncio.to_thread(self.tmp.mkdir, parents=True, exist_ok=True)
        temp = self.tmp / f"{secrets.token_hex(16)}.part"
        digest = hashlib.sha256()
        size = 0
        file = await asyncio.to_thread(temp.open, "xb")
        try:
            try:
                pending = bytearray()
                async for chunk in chunks:
                    size += len(chunk)
                    if limit is not None and size > limit:
                        raise BlobTooLarge(limit)
                    pending += chunk
                    if len(pending) >= _WRITE_BUFFER:
                        await asyncio.to_thread(_write, file, digest, bytes(pending))
                        pending.clear()
                if pending:
                    await asyncio.to_thread(_write, file, digest, bytes(pending))
                await asyncio.to_thread(_sync, file)
            finally:
                file.close()
            key = digest.hexdigest()
            await asyncio.to_thread(self._move_into_place, temp, self.path(key))
        except BaseException:
            # Synchronous on purpose: it must happen even when the task is being cancelled.
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            raise
        return StoredBlob(key=key, size=size, sha256=key)

    @staticmethod
    def _move_into_place(temp: Path, final: Path) -> None:
        if final.exists():  # the same content is stored already
            temp.unlink()
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)
        _sync_dir(final.parent)

    async def open(self, key: str) -> AsyncIterator[bytes]:
        path = self.path(key)
        try:
            file = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError as exc:
            raise BlobMissing(key) from exc
        return _chunks(file)

    async def delete(self, key: str) -> None:
        path = self.path(key)
        await asyncio.to_thread(path.unlink, missing_ok=True)


async def _chunks(file: IO[bytes]) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(file.read, _READ_CHUNK):
            yield chunk
    finally:
        file.close()


def _write(file: IO[bytes], digest: hashlib._Hash, data: bytes) -> None:
    # Both release the GIL for large buffers, so the event loop keeps serving meanwhile.
    digest.update(data)
    file.write(data)


def _sync(file: IO[bytes]) -> None:
    file.flush()
    os.fsync(file.fileno())


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
