"""`tandem serve --demo` (TANDEM_DEMO=1): the Double-11 example workspace, through the API, the
update log and `tandem export`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from conftest import ROOT, ServerFactory
from helpers import query

from server import cli
from server.api import routes as api_routes

CAMPAIGN = "双十一大促 2026"
DEPARTMENTS = {"市场部", "运营部", "客服部"}


def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node]
    for child in node.get("content", []):
        found += nodes(child)
    return found


async def snapshot_of_workspace(http: httpx.AsyncClient) -> dict[str, Any]:
    folders = (await http.get("/folders")).json()["folders"]
    documents = (await http.get("/docs")).json()["documents"]
    contents = {d["id"]: (await http.get(f"/docs/{d['id']}/content")).json() for d in documents}
    return {"folders": folders, "documents": documents, "contents": contents}


async def test_demo_seeds_the_double_11_campaign_once_and_exports_cleanly(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await make_server(TANDEM_DEMO="1")
    async with httpx.AsyncClient(base_url=f"{server.http_url}/api", timeout=30) as http:
        seeded = await snapshot_of_workspace(http)
    folders = {f["name"]: f for f in seeded["folders"]}
    campaign = folders[CAMPAIGN]
    assert campaign["parent_id"] is None
    for name in DEPARTMENTS:
        assert folders[name]["parent_id"] == campaign["id"]
        assert folders[name]["department"] == name
    documents = {d["id"]: d for d in seeded["documents"]}
    kinds = sorted(d["kind"] for d in documents.values())
    assert kinds == ["board", "discussion", "discussion", "doc", "doc", "doc"]
    folder_ids = {f["id"] for f in seeded["folders"]}
    assert all(d["folder_id"] in folder_ids for d in documents.values())

    # The board: 15+ tasks across the three columns and departments, each fully described.
    board = next(c for c in seeded["contents"].values() if c["kind"] == "board")
    assert board["problems"] == []
    tasks = board["content"]["tasks"]
    assert len(tasks) >= 15
    assert {t["status"] for t in tasks.values()} == {"todo", "in_progress", "done"}
    assert {t["department"] for t in tasks.values()} == DEPARTMENTS
    assert {t["priority"] for t in tasks.values()} >= {"normal", "high", "urgent"}
    for task in tasks.values():
        assert task["assignee"] and task["title"] and task["tags"]
        assert task["due"] and task["due"].startswith(("2026-10", "2026-11")), task
    assert sum(1 for t in tasks.values() if t["subtasks"]) >= 8
    titles = {t["title"] for t in tasks.values()}
    assert {
        "活动策划方案",
        "预热页面设计",
        "优惠券配置",
        "客服答疑手册",
        "库存核对",
        "直播排期",
    } <= titles

    # The plan has headings, lists and a table; the FAQ exists; nothing is malformed.
    docs = [c for c in seeded["contents"].values() if c["kind"] == "doc"]
    plan = next(c for c in docs if "策划方案" in c["content"]["meta"]["title"])
    types = {n["type"] for n in nodes(plan["content"]["default"])}
    assert {"heading", "bulletList", "orderedList", "table", "taskList"} <= types
    assert any("FAQ" in c["content"]["meta"]["title"] for c in docs)
    assert all(c["problems"] == [] for c in seeded["contents"].values())

    # Two task discussions, between departments, threaded, pointing at board tasks.
    talks = [c for c in seeded["contents"].values() if c["kind"] == "discussion"]
    people = dict(await query(server.database_url, "SELECT name, department_id FROM users"))
    assert len(people) >= 9
    for talk in talks:
        meta, messages = talk["content"]["meta"], talk["content"]["messages"]
        assert meta["subject_task"] in tasks and meta["subject_doc"] == board["id"]
        assert len(messages) >= 3 and any(m["reply_to"] for m in messages)
        assert any(m["mentions"] for m in messages)
        assert len({people[m["author"]] for m in messages}) >= 2

    # Written like any user's edits: origin "rest", the seed users as authors.
    rows = await query(
        server.database_url,
        "SELECT DISTINCT origin, author FROM updates WHERE doc_id = :doc",
        doc=board["id"],
    )
    assert {origin for origin, _ in rows} == {"rest"}
    assert {author for _, author in rows} == {"张伟", "王晓雯", "孙丽华"}
    departments = await query(server.database_url, "SELECT name FROM departments")
    assert {name for (name,) in departments} == DEPARTMENTS

    # The export endpoint (read-only) serves every document in each format.
    if any(getattr(route, "path", "") == "/docs/{doc_id}/export" for route in api_routes):
        async with httpx.AsyncClient(base_url=f"{server.http_url}/api", timeout=30) as http:
            for doc_id in documents:
                for fmt in ("md", "html", "json"):
                    response = await http.get(f"/docs/{doc_id}/export", params={"format": fmt})
                    assert response.status_code == 200, (doc_id, fmt, response.text)

    # A restart with the flag changes nothing.
    log_size = await query(server.database_url, "SELECT count(*), max(seq) FROM updates")
    await server.stop()
    again = await make_server(TANDEM_DEMO="1")
    async with httpx.AsyncClient(base_url=f"{again.http_url}/api", timeout=30) as http:
        reseeded = await snapshot_of_workspace(http)
    assert sorted(map(json.dumps, reseeded["folders"])) == sorted(
        map(json.dumps, seeded["folders"])
    )
    assert reseeded["contents"] == seeded["contents"]
    assert {d["id"] for d in reseeded["documents"]} == set(documents)
    assert await query(again.database_url, "SELECT count(*), max(seq) FROM updates") == log_size
    await again.stop()

    # Every document exports cleanly in each format, with the server stopped.
    url = again.database_url
    out = tmp_path / "one-by-one"
    for doc_id, row in documents.items():
        for fmt in ("md", "html", "json"):
            target = out / f"{doc_id}.{fmt}"
            argv = ["export", doc_id, "--format", fmt, "-o", str(target), "--database-url", url]
            assert await asyncio.to_thread(cli.main, argv) == 0
            body = target.read_text("utf-8")
            assert row["title"] in body or json.dumps(row["title"])[1:-1] in body
            if fmt == "json":
                assert json.loads(body)["problems"] == []
            if fmt == "html":
                assert body.lstrip().lower().startswith("<!doctype html")

    # The whole campaign folder in one command: one file per document, sub-folders kept; no
    # progress bar on a stderr that is not a terminal, just the summary.
    done = subprocess.run(
        [sys.executable, "-m", "server", "export", "--folder", CAMPAIGN, "--out", "campaign"],
        cwd=tmp_path,
        env={**os.environ, "TANDEM_DATABASE_URL": url, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.decode().strip().splitlines() == ["exported 6 documents (md) to campaign"]
    written = sorted(
        p.relative_to(tmp_path / "campaign") for p in (tmp_path / "campaign").rglob("*.md")
    )
    assert len(written) == len(documents)
    assert {p.parts[0] for p in written if len(p.parts) == 2} == DEPARTMENTS
    assert Path("双十一大促任务板.md") in written
    by_id = subprocess.run(
        [sys.executable, "-m", "server", "export", "--folder", str(folders["客服部"]["id"]),
         "--out", "faq", "--format", "json"],
        cwd=tmp_path,
        env={**os.environ, "TANDEM_DATABASE_URL": url, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    assert by_id.returncode == 0, by_id.stderr
    faq_files = list((tmp_path / "faq").iterdir())
    assert len(faq_files) == 1 and faq_files[0].suffix == ".json"
    assert json.loads(faq_files[0].read_text("utf-8"))["problems"] == []


async def test_diff_between_two_versions_of_the_demo_board_names_tasks_and_fields(
    make_server: ServerFactory,
) -> None:
    server = await make_server(TANDEM_DEMO="1")
    async with httpx.AsyncClient(base_url=f"{server.http_url}/api", timeout=30) as http:
        board = (await http.get("/docs/d11-board/content")).json()
        tasks = board["content"]["tasks"]  # task id -> task
        todo = sorted(task_id for task_id, t in tasks.items() if t["status"] == "todo")
        moved = {"id": todo[0], **tasks[todo[0]]}
        reassigned = {"id": todo[1], **tasks[todo[1]]}
        before = await http.post("/docs/d11-board/versions", json={"name": "发给运营部审核"})
        assert before.status_code == 201, before.text
        owner = "张伟" if reassigned.get("assignee") == "吴浩" else "吴浩"
        priority = "low" if reassigned.get("priority") != "low" else "urgent"
        changes = [
            (moved["id"], {"status": "in_progress"}),
            (reassigned["id"], {"assignee": owner, "priority": priority}),
        ]
        for task_id, fields in changes:
            changed = await http.patch(f"/docs/d11-board/tasks/{task_id}", json=fields)
            assert changed.status_code == 200, changed.text
        added = await http.post("/docs/d11-board/tasks", json={"title": "直播间补货提醒"})
        assert added.status_code == 201, added.text
        after = await http.post("/docs/d11-board/versions", json={"name": "运营部已改"})
        assert after.status_code == 201, after.text
        diff = await http.get(
            "/docs/d11-board/diff",
            params={"from": before.json()["number"], "to": after.json()["number"]},
        )
    assert diff.status_code == 200, diff.text
    text_of_diff = json.dumps(diff.json(), ensure_ascii=False)
    for title in (moved["title"], reassigned["title"], "直播间补货提醒"):
        assert title in text_of_diff
    for field in ("status", "assignee", "priority"):
        assert f'"{field}"' in text_of_diff
    assert owner in text_of_diff and "in_progress" in text_of_diff
