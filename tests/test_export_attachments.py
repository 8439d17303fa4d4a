"""Board exports list the files attached to the board and its tasks, with download links."""

from __future__ import annotations

import asyncio
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
from conftest import ServerFactory, ServerProcess
from helpers import api
from pycrdt import Doc

from server import cli
from server.export import FORMATS, export_document
from server.export.common import Attachment, human_size
from shared import board as boards
from shared import richtext
from shared.documents import initialize
from shared.richtext import TextRun

HOSTILE = "a*b<script>.pdf"
V1 = b"%PDF-1.7 first draft"
V2 = b"%PDF-1.7 second draft, longer"
BRIEF = b"brief for the whole board\n" * 60  # 1.5 KiB


class Links(HTMLParser):
    """Every <a>: (href, text inside it), and every tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self.tags: list[str] = []
        self._open: list[tuple[str, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "a":
            self._open.append((dict(attrs).get("href") or "", []))

    def handle_data(self, data: str) -> None:
        for _, text in self._open:
            text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open:
            href, text = self._open.pop()
            self.links.append((href, "".join(text)))


def html_links(page: str) -> Links:
    parser = Links()
    parser.feed(page)
    return parser


def markdown_links(body: str) -> list[tuple[str, str]]:
    """(href, text) of every link a Markdown reader finds in `body`."""
    found: list[tuple[str, str]] = []
    for item in richtext.iter_nodes(richtext.parse_markdown(body)):
        if isinstance(item, TextRun):
            for mark in item.marks:
                if mark.type == "link":
                    found.append((mark.href or "", item.text))
    return found


async def upload(http: httpx.AsyncClient, folder: int, name: str, body: bytes) -> dict[str, Any]:
    response = await http.post("/files", params={"folder_id": folder, "name": name}, content=body)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


async def attach(http: httpx.AsyncClient, file_id: int, doc_id: str, task: str | None) -> None:
    response = await http.post(f"/files/{file_id}/attach", json={"doc_id": doc_id, "task_id": task})
    assert response.status_code == 200, response.text


async def export(http: httpx.AsyncClient, doc_id: str, fmt: str, **params: Any) -> str:
    response = await http.get(f"/docs/{doc_id}/export", params={"format": fmt, **params})
    assert response.status_code == 200, response.text
    return response.text


async def setup_board(server: ServerProcess) -> dict[str, Any]:
    """A board with one task; v1 of a two-version file on the task, a brief on the board, and
    a sheet on a task id the board does not have."""
    async with api(server) as http:
        folder = (await http.post("/folders", json={"name": "双十一"})).json()["id"]
        board = (await http.post("/docs", json={"kind": "board", "title": "大促任务板"})).json()
        task = await http.post(f"/docs/{board['id']}/tasks", json={"title": "首页 *Banner*"})
        assert task.status_code == 201, task.text
        v1 = await upload(http, folder, HOSTILE, V1)
        v2 = await upload(http, folder, HOSTILE, V2)
        assert (v1["version"], v2["version"]) == (1, 2)
        brief = await upload(http, folder, "brief.txt", BRIEF)
        ghost = await upload(http, folder, "库存.xlsx", b"PK\x03\x04")
        await attach(http, v1["id"], board["id"], task.json()["id"])
        await attach(http, brief["id"], board["id"], None)
        await attach(http, ghost["id"], board["id"], "task-gone")
        plain = (await http.post("/docs", json={"kind": "board", "title": "空板"})).json()
    return {
        "board": board["id"],
        "plain": plain["id"],
        "task": task.json()["id"],
        "v1": v1,
        "v2": v2,
        "brief": brief,
        "ghost": ghost,
    }


def link(file: dict[str, Any]) -> str:
    return f"/api/files/{file['id']}/content"


def check_markdown(body: str, made: dict[str, Any]) -> None:
    assert body.count("## Attachments") == 1
    section = body.split("## Attachments", 1)[1]
    assert "relative to the Tandem server" in section
    # A Markdown reader finds exactly the three links, with the names as written.
    found = {href: text for href, text in markdown_links(section)}
    assert found == {
        link(made["v1"]): HOSTILE,
        link(made["brief"]): "brief.txt",
        link(made["ghost"]): "库存.xlsx",
    }
    assert link(made["v2"]) not in body  # v2 was uploaded before v1 was attached
    lines = [ln for ln in section.splitlines() if ln.startswith("- ")]
    assert len(lines) == 3
    # The board's own file first, then by task id.
    brief_line, hostile_line, ghost_line = lines
    assert brief_line == f"- [brief.txt]({link(made['brief'])}) · version 1 · 1.5 KiB"
    assert hostile_line == (
        f"- [a\\*b\\<script\\>.pdf]({link(made['v1'])}) · version 1 · {len(V1)} bytes"
        " · task: 首页 \\*Banner\\*"
    )
    assert ghost_line.endswith(" · task `task-gone`")
    assert not re.search(r"(?<!\\)<script", body)


def check_html(page: str, made: dict[str, Any]) -> None:
    parsed = html_links(page)
    assert "<script>" not in page and "script" not in parsed.tags
    assert 'id="attachments"' in page and page.count("<h2>Attachments</h2>") == 1
    assert "relative to the Tandem server" in page
    files = [(href, text) for href, text in parsed.links if href.startswith("/api/files/")]
    assert files == [
        (link(made["brief"]), "brief.txt"),
        (link(made["v1"]), HOSTILE),
        (link(made["ghost"]), "库存.xlsx"),
    ]
    assert (f"#task-{made['task']}", "首页 *Banner*") in parsed.links
    assert f"{len(V1)} bytes" in page and "version 1" in page
    assert "task <code>task-gone</code>" in page


def check_json(body: str, made: dict[str, Any]) -> None:
    data = json.loads(body)
    assert list(data)[-2:] == ["attachments", "problems"]
    by_name = {a["name"]: a for a in data["attachments"]}
    assert [a["name"] for a in data["attachments"]] == ["brief.txt", HOSTILE, "库存.xlsx"]
    hostile = by_name[HOSTILE]
    assert hostile["file_id"] == made["v1"]["id"] and hostile["version"] == 1
    assert hostile["size"] == len(V1) and hostile["content_type"] == "application/pdf"
    assert hostile["task_id"] == made["task"] and hostile["url"] == link(made["v1"])
    assert hostile["uploaded_by"] == "local" and hostile["uploaded_at"].endswith("+00:00")
    assert by_name["brief.txt"]["task_id"] is None
    assert by_name["库存.xlsx"]["task_id"] == "task-gone"


CHECKS = {"md": check_markdown, "html": check_html, "json": check_json}


async def test_exports_list_attachments_with_download_links(
    database_url: str, make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await make_server(database_url, TANDEM_BLOB_DIR=str(tmp_path / "blobs"))
    made = await setup_board(server)
    async with api(server) as http:
        for fmt in FORMATS:
            CHECKS[fmt](await export(http, made["board"], fmt), made)
        # Each link downloads that version's bytes.
        async with httpx.AsyncClient(base_url=server.http_url, timeout=30) as root:
            for key, body in (("v1", V1), ("brief", BRIEF)):
                response = await root.get(link(made[key]))
                assert response.status_code == 200 and response.content == body
        # A version lists the files attached now, too.
        saved = await http.post(f"/docs/{made['board']}/versions", json={"name": "定稿"})
        assert saved.status_code == 201, saved.text
        number = saved.json()["number"]
        for fmt in FORMATS:
            CHECKS[fmt](await export(http, made["board"], fmt, version=number), made)
        response = await http.get(f"/docs/{made['board']}/export", params={"format": "html"})
        csp = response.headers["content-security-policy"]
        assert "sandbox allow-downloads" in csp and "script" not in csp
        # A board without attachments has no section.
        for fmt in FORMATS:
            body = await export(http, made["plain"], fmt)
            assert "Attachments" not in body and "attachments" not in body
            assert "/api/files/" not in body

    # `tandem export` reads the same from the database.
    for fmt in FORMATS:
        target = tmp_path / f"board.{fmt}"
        argv = ["export", made["board"], "--format", fmt, "-o", str(target)]
        done = await asyncio.to_thread(cli.main, [*argv, "--database-url", server.database_url])
        assert done == 0
        CHECKS[fmt](target.read_text("utf-8"), made)
        plain = tmp_path / f"plain.{fmt}"
        argv = ["export", made["plain"], "--format", fmt, "-o", str(plain)]
        assert (
            await asyncio.to_thread(cli.main, [*argv, "--database-url", server.database_url]) == 0
        )
        assert "ttachments" not in plain.read_text("utf-8")


def test_attachments_only_on_boards_and_untitled_tasks() -> None:
    doc: Doc[Any] = Doc()
    with doc.transaction():
        initialize(doc, "board", title="板")
        boards.add_task(doc, "   ", task_id="t-1")
    files = (
        Attachment(7, "x](javascript:alert(1))", 3, 1, "text/plain", task_id="t-1"),
        Attachment(8, "<img src=x onerror=alert(1)>", 1, 2048, "image/png"),
    )
    body = export_document(doc, "board", "md", attachments=files)[0].decode()
    assert markdown_links(body) == [
        ("/api/files/7/content", "x](javascript:alert(1))"),
        ("/api/files/8/content", "<img src=x onerror=alert(1)>"),
    ]
    assert "version 3 · 1 byte · task: *(untitled)*" in body and "2 KiB" in body
    page = export_document(doc, "board", "html", attachments=files)[0].decode()
    assert "img" not in html_links(page).tags and "&lt;img src=x" in page
    # Other kinds ignore attachments.
    text_doc: Doc[Any] = Doc()
    with text_doc.transaction():
        initialize(text_doc, "doc", title="文档")
    for fmt in FORMATS:
        out = export_document(text_doc, "doc", fmt, attachments=files)[0].decode()
        assert "/api/files/" not in out


def test_human_size() -> None:
    sizes = [0, 1, 1023, 1024, 1536, 1024 * 1024 - 1, 5 * 1024**3]
    assert [human_size(s) for s in sizes] == [
        "0 bytes",
        "1 byte",
        "1023 bytes",
        "1 KiB",
        "1.5 KiB",
        "1 MiB",
        "5 GiB",
    ]
