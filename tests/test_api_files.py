"""REST API: file uploads, versions and downloads, against a real server process."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from conftest import ServerFactory, ServerProcess
from sqlalchemy import text

from server.persistence.sql import create_engine

MiB = 1024 * 1024


def api(server: ServerProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"{server.http_url}/api", timeout=120)


async def start(make_server: ServerFactory, tmp_path: Path, url: str | None = None, **env: str):
    blob_dir = tmp_path / "blobs"
    server = await make_server(url, TANDEM_BLOB_DIR=str(blob_dir), **env)
    return server, blob_dir


def stored_blobs(blob_dir: Path) -> list[Path]:
    """Every file under the blob folder, temporary ones included."""
    return [path for path in blob_dir.rglob("*") if path.is_file()] if blob_dir.exists() else []


async def count_files(url: str) -> int:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text("SELECT count(*) FROM files"))).scalar_one())
    finally:
        await engine.dispose()


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


async def make_folder(http: httpx.AsyncClient, name: str = "双十一") -> int:
    response = await http.post("/folders", json={"name": name})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def assert_error(response: httpx.Response, status: int, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["message"]
    if field is not None:
        assert error.get("field") == field, error


async def test_200_mb_upload_and_download_stream_through_bounded_memory(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server, blob_dir = await start(make_server, tmp_path)
    assert server.proc is not None
    size, chunk = 200 * MiB, MiB
    sent = hashlib.sha256()

    async def generate() -> AsyncIterator[bytes]:
        # Made on the fly, never stored: a random chunk, then that chunk's hash chained in.
        block = os.urandom(chunk)
        for i in range(size // chunk):
            piece = block[: chunk - 32] + hashlib.sha256(block + i.to_bytes(4, "big")).digest()
            sent.update(piece)
            yield piece

    async with api(server) as http:
        folder = await make_folder(http)
        # Warm up the code paths so that what follows measures only the transfer.
        warm = await http.post(
            "/files", params={"folder_id": folder, "name": "warm.bin"}, content=b"x" * MiB
        )
        assert warm.status_code == 201
        async with http.stream("GET", f"/files/{warm.json()['id']}/content") as response:
            await response.aread()
        before = memory_kib(server.proc.pid)

        started = time.monotonic()
        response = await http.post(
            "/files",
            params={"folder_id": folder, "name": "活动素材.bin", "tags": "素材"},
            content=generate(),
        )
        upload_seconds = time.monotonic() - started
        assert response.status_code == 201, response.text
        stored = response.json()
        assert stored["size"] == size and stored["sha256"] == sent.hexdigest()
        assert stored["content_type"] == "application/octet-stream"
        after_upload = memory_kib(server.proc.pid)

        received = hashlib.sha256()
        received_bytes = 0
        started = time.monotonic()
        async with http.stream("GET", f"/files/{stored['id']}/content") as download:
            assert download.status_code == 200
            assert int(download.headers["content-length"]) == size
            async for piece in download.aiter_raw():
                received.update(piece)
                received_bytes += len(piece)
        download_seconds = time.monotonic() - started
        after_download = memory_kib(server.proc.pid)

    assert received_bytes == size and received.hexdigest() == sent.hexdigest()
    blob = blob_dir / stored["sha256"][:2] / stored["sha256"][2:]
    assert blob.stat().st_size == size
    # The server never held the file: its peak memory grew by far less than 200 MB.
    grown_mb = (max(after_upload["VmHWM"], after_download["VmHWM"]) - before["VmHWM"]) / 1024
    assert grown_mb < 50, (before, after_upload, after_download)
    assert (after_download["VmRSS"] - before["VmRSS"]) / 1024 < 50
    print(
        f"\n200 MiB: upload {upload_seconds:.1f}s, download {download_seconds:.1f}s, "
        f"peak RSS grew {grown_mb:.1f} MB"
    )


async def test_reupload_adds_a_version_and_keeps_the_old_one(
    database_url: str, make_server: ServerFactory, tmp_path: Path
) -> None:
    server, blob_dir = await start(make_server, tmp_path, database_url)
    async with api(server) as http:
        folder = await make_folder(http)
        other_folder = await make_folder(http, "客服")
        name = "双十一 活动方案.pdf"
        first = await http.post(
            "/files",
            params={"folder_id": folder, "name": name, "tags": "方案,marketing", "notes": "初稿"},
            content=b"%PDF-1.7 v1",
        )
        assert first.status_code == 201, first.text
        v1 = first.json()
        assert v1["version"] == 1 and v1["content_type"] == "application/pdf"
        assert v1["tags"] == ["方案", "marketing"] and v1["notes"] == "初稿"
        assert v1["uploaded_by"] == "local"
        assert first.headers["location"] == f"/api/files/{v1['id']}"

        second = await http.post(
            "/files",
            params={"folder_id": folder, "name": name},
            content=b"%PDF-1.7 v2, final",
            headers={"Content-Type": "application/pdf"},
        )
        v2 = second.json()
        assert v2["version"] == 2 and v2["id"] != v1["id"]
        # Tags and notes carry over to the new version unless given again.
        assert v2["tags"] == ["方案", "marketing"] and v2["notes"] == "初稿"
        # The same name elsewhere is another file.
        elsewhere = await http.post(
            "/files", params={"folder_id": other_folder, "name": name}, content=b"%PDF-1.7 v1"
        )
        assert elsewhere.json()["version"] == 1

        versions = (await http.get(f"/files/{v1['id']}/versions")).json()["versions"]
        assert [v["version"] for v in versions] == [2, 1]
        assert (await http.get(f"/files/{v2['id']}/versions")).json()["versions"] == versions

        listed = (await http.get("/files", params={"folder_id": folder})).json()["files"]
        assert [(f["name"], f["version"]) for f in listed] == [(name, 2)]  # the newest only
        assert len((await http.get("/files")).json()["files"]) == 2
        assert [
            f["folder_id"] for f in (await http.get("/files", params={"q": "方案"})).json()["files"]
        ] in (
            [other_folder, folder],
            [folder, other_folder],
        )
        assert (await http.get("/files", params={"tag": "marketing"})).json()["files"][0][
            "id"
        ] == v2["id"]
        assert (await http.get("/files", params={"tag": "mark"})).json()["files"] == []

        old = await http.get(f"/files/{v1['id']}/content")
        assert old.content == b"%PDF-1.7 v1" and old.headers["content-type"] == "application/pdf"
        head = await http.head(f"/files/{v2['id']}/content")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) == v2["size"] == len(b"%PDF-1.7 v2, final")
        assert v2["content_url"] == f"/api/files/{v2['id']}/content"
        new = await http.get(v2["content_url"].removeprefix("/api"))
        assert new.content == b"%PDF-1.7 v2, final"
        disposition = new.headers["content-disposition"]
        assert disposition.startswith("attachment;")
        assert f"filename*=UTF-8''{quote(name, safe='')}" in disposition
        assert (await http.get(f"/files/{v1['id']}")).json()["sha256"] == hashlib.sha256(
            b"%PDF-1.7 v1"
        ).hexdigest()
    # Identical content is stored once.
    assert len(stored_blobs(blob_dir)) == 2


async def test_html_and_svg_download_as_attachments_never_rendered(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server, _ = await start(make_server, tmp_path)
    async with api(server) as http:
        folder = await make_folder(http)
        for name, content_type, body in [
            ("首页设计.html", None, b"<html><script>alert(document.cookie)</script></html>"),
            (
                "logo.svg",
                "image/svg+xml",
                b"<svg xmlns='http://www.w3.org/2000/svg'><script/></svg>",
            ),
            ("feed.xml", "text/xml", b"<?xml version='1.0'?><x/>"),
        ]:
            headers = {"Content-Type": content_type} if content_type else {}
            uploaded = await http.post(
                "/files", params={"folder_id": folder, "name": name}, content=body, headers=headers
            )
            assert uploaded.status_code == 201, uploaded.text
            response = await http.get(f"/files/{uploaded.json()['id']}/content")
            assert response.content == body
            assert response.headers["content-type"] == (content_type or "text/html")
            assert response.headers["content-disposition"].startswith("attachment;")
            assert (
                f"filename*=UTF-8''{quote(name, safe='')}"
                in response.headers["content-disposition"]
            )
            assert response.headers["x-content-type-options"] == "nosniff"
            assert "sandbox" in response.headers["content-security-policy"]


async def test_upload_over_the_limit_is_413_and_leaves_nothing(
    database_url: str, make_server: ServerFactory, tmp_path: Path
) -> None:
    limit = 64 * 1024
    server, blob_dir = await start(
        make_server, tmp_path, database_url, TANDEM_MAX_UPLOAD_BYTES=str(limit)
    )

    async def streamed(total: int) -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for _ in range(total // 4096):
            yield b"\xab" * 4096

    async with api(server) as http:
        folder = await make_folder(http)
        declared = await http.post(
            "/files", params={"folder_id": folder, "name": "big.pdf"}, content=b"x" * (limit + 1)
        )
        assert_error(declared, 413)
        assert str(limit) in declared.json()["error"]["message"]
        chunked = await http.post(
            "/files", params={"folder_id": folder, "name": "big.pdf"}, content=streamed(4 * limit)
        )
        assert_error(chunked, 413)
        assert stored_blobs(blob_dir) == []
        assert (await http.get("/files", params={"folder_id": folder})).json()["files"] == []
        assert await count_files(server.database_url) == 0

        # Exactly at the limit is fine, and the server still serves this connection's peers.
        at_limit = await http.post(
            "/files", params={"folder_id": folder, "name": "ok.pdf"}, content=streamed(limit)
        )
        assert at_limit.status_code == 201 and at_limit.json()["size"] == limit
        assert len(stored_blobs(blob_dir)) == 1 and await count_files(server.database_url) == 1


async def test_file_errors_and_attachments(
    database_url: str, make_server: ServerFactory, tmp_path: Path
) -> None:
    server, blob_dir = await start(make_server, tmp_path, database_url)
    async with api(server) as http:
        folder = await make_folder(http)
        upload: dict[str, Any] = {"content": b"data"}
        assert_error(
            await http.post("/files", params={"name": "a.txt"}, **upload), 422, "folder_id"
        )
        assert_error(await http.post("/files", params={"folder_id": folder}, **upload), 422, "name")
        assert_error(
            await http.post("/files", params={"folder_id": "x", "name": "a"}, **upload),
            422,
            "folder_id",
        )
        assert_error(
            await http.post("/files", params={"folder_id": folder, "name": "../a"}, **upload),
            422,
            "name",
        )
        assert_error(
            await http.post("/files", params={"folder_id": 999, "name": "a.txt"}, **upload),
            404,
            "folder_id",
        )
        assert_error(
            await http.post(
                "/files", params={"folder_id": folder, "name": "a", "colour": "red"}, **upload
            ),
            422,
            "colour",
        )
        assert stored_blobs(blob_dir) == []
        for path in ("/files/999", "/files/999/versions", "/files/999/content", "/files/abc"):
            assert_error(await http.get(path), 404)
        assert_error(await http.post("/files/999/attach", json={"doc_id": "x"}), 404)

        sheet = (
            await http.post(
                "/files",
                params={"folder_id": folder, "name": "库存.xlsx", "tags": ["stock", "ops"]},
                content=b"PK\x03\x04",
            )
        ).json()
        assert sheet["tags"] == ["stock", "ops"]
        assert sheet["content_type"] == (
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        )
        board = (await http.post("/docs", json={"kind": "board", "title": "任务"})).json()
        assert_error(await http.post(f"/files/{sheet['id']}/attach", json={}), 422, "doc_id")
        assert_error(
            await http.post(f"/files/{sheet['id']}/attach", json={"doc_id": "nope"}), 404, "doc_id"
        )
        attached = await http.post(
            f"/files/{sheet['id']}/attach",
            json={"doc_id": board["id"], "task_id": "task-1", "message_id": None},
        )
        assert attached.status_code == 200, attached.text
        assert attached.json()["attached_doc"] == board["id"]
        assert attached.json()["attached_task"] == "task-1"
        on_board = (await http.get("/files", params={"doc_id": board["id"]})).json()["files"]
        assert [f["id"] for f in on_board] == [sheet["id"]]
        # A new version stays attached where the previous one was.
        v2 = await http.post(
            "/files", params={"folder_id": folder, "name": "库存.xlsx"}, content=b"PK\x03\x04 v2"
        )
        assert v2.json()["attached_doc"] == board["id"] and v2.json()["attached_task"] == "task-1"
        assert v2.json()["tags"] == ["stock", "ops"]
        # Files are listed and filtered together with documents.
        both = (await http.get("/docs", params={"tag": "stock", "include_files": "true"})).json()
        assert both["documents"] == [] and [f["version"] for f in both["files"]] == [2]
        assert_error(await http.delete(f"/folders/{folder}"), 409)


async def test_upload_cut_off_midway_leaves_nothing(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server, blob_dir = await start(make_server, tmp_path)

    class Gone(Exception):
        pass

    async def cut_off() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"\x01" * MiB
        raise Gone

    async with api(server) as http:
        folder = await make_folder(http)
        try:
            await http.post(
                "/files", params={"folder_id": folder, "name": "half.psd"}, content=cut_off()
            )
        except (Gone, httpx.HTTPError):
            pass
        deadline = time.monotonic() + 10
        while stored_blobs(blob_dir) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert stored_blobs(blob_dir) == []
        assert (await http.get("/files")).json()["files"] == []


async def test_start_up_removes_uploads_a_killed_process_left_behind(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    """A process killed mid-upload leaves its temporary file; the next start removes it once
    it is a day old, and keeps younger ones (another process may still be writing them)."""
    tmp = tmp_path / "blobs" / "tmp"
    tmp.mkdir(parents=True)
    old, young = tmp / "a1.part", tmp / "b2.part"
    old.write_bytes(b"\x00" * 1000)
    young.write_bytes(b"\x00" * 1000)
    day_and_a_bit = time.time() - 25 * 3600
    os.utime(old, (day_and_a_bit, day_and_a_bit))
    server, blob_dir = await start(make_server, tmp_path)
    assert not old.exists()
    assert young.exists()
    async with api(server) as http:  # and uploads still work beside the survivor
        folder = await make_folder(http)
        response = await http.post(
            "/files", params={"folder_id": folder, "name": "a.txt"}, content=b"hi"
        )
        assert response.status_code == 201, response.text
    assert sorted(p.name for p in stored_blobs(blob_dir) if p.suffix == ".part") == ["b2.part"]
