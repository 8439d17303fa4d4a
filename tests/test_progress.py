"""Progress per board and per department, over REST and as server-sent events, against real
servers: on the workspace of tests/test_task_list.py, and on a board built through the REST
API whose figures must match a count made directly from its stored CRDT document."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from typing import Any

import httpx
import pytest
from conftest import ServerFactory, ServerProcess
from helpers import api, assert_error
from pycrdt import Doc
from sqlalchemy import select, update
from test_task_list import (
    ALICE,
    LIU,
    NO_SIDECAR,
    SECRET,
    Row,
    insert_rows,
    seed,
    token,
)

from server.persistence.sql import create_engine
from server.persistence.tables import documents, snapshots, task_index, updates
from shared.board import Task, read_board
from shared.documents import parse_timestamp

ZERO = {"todo": 0, "in_progress": 0, "done": 0}


@pytest.fixture
async def workspace(database_url: str, make_server: ServerFactory) -> ServerProcess:
    await seed(database_url)
    # A text document, and a board with no tasks yet.
    await insert_rows(database_url, {"notes": ("Notes", None)}, [], kind="doc")
    await insert_rows(database_url, {"empty-board": ("Empty board", None)}, [])
    return await make_server(database_url, TANDEM_SECRET=SECRET, **NO_SIDECAR)


async def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def deadline_ids(figures: dict[str, Any]) -> list[str]:
    return [item["task_id"] for item in figures["next_deadlines"]]


def counts(figures: dict[str, Any]) -> tuple[int, dict[str, int], float, int]:
    return (
        figures["total"],
        figures["by_status"],
        figures["percent_done"],
        figures["overdue"],
    )


async def test_figures_overall_per_department_and_board(workspace: ServerProcess) -> None:
    async with api(workspace, token(ALICE)) as http:
        report = await ok(await http.get("/progress"))
        overall = report["overall"]
        assert counts(overall) == (5, {"todo": 2, "in_progress": 1, "done": 2}, 40.0, 1)
        assert deadline_ids(overall) == ["s2", "p1", "s1"]
        assert overall["next_deadlines"][0] == {
            "board": "sales-board",
            "board_title": "销售看板",
            "task_id": "s2",
            "title": "Old report",
            "status": "in_progress",
            "assignee": ALICE,
            "department": "Sales",
            "due": "2020-01-05T09:00:00+08:00",
            "due_at": "2020-01-05T01:00:00Z",
            "overdue": True,
        }
        assert overall["next_deadlines"][1]["overdue"] is False
        # Departments by name, tasks of none last.
        departments = report["departments"]
        assert [d["department"] for d in departments] == ["Sales", None]
        assert counts(departments[0]) == (4, {"todo": 1, "in_progress": 1, "done": 2}, 50.0, 1)
        assert deadline_ids(departments[0]) == ["s2", "s1"]
        assert counts(departments[1]) == (1, {**ZERO, "todo": 1}, 0.0, 0)
        # Boards by title; boards alice may not read (ops) or that are deleted are absent.
        boards = report["boards"]
        assert [(b["board"], b["title"]) for b in boards] == [
            ("open-board", "Open board"),
            ("sales-board", "销售看板"),
        ]
        assert counts(boards[0]) == (2, {**ZERO, "todo": 1, "done": 1}, 50.0, 0)
        assert counts(boards[1]) == (3, {"todo": 1, "in_progress": 1, "done": 1}, 33.3, 1)

        sales = await ok(await http.get("/progress", params={"department": "Sales"}))
        assert counts(sales["overall"]) == counts(departments[0])
        assert [d["department"] for d in sales["departments"]] == ["Sales"]
        assert [(b["board"], b["total"]) for b in sales["boards"]] == [
            ("open-board", 1),
            ("sales-board", 3),
        ]
        one = await ok(await http.get("/progress", params={"board": "open-board"}))
        assert counts(one["overall"]) == counts(boards[0])
        nothing = await ok(await http.get("/progress", params={"department": "Legal"}))
        assert nothing == {
            "overall": {
                "total": 0,
                "by_status": ZERO,
                "percent_done": 0.0,
                "overdue": 0,
                "next_deadlines": [],
            },
            "departments": [],
            "boards": [],
        }

        board = await ok(await http.get("/docs/sales-board/progress"))
        assert board == boards[1]  # the same figures as in the report
        assert deadline_ids(board) == ["s2", "s1"]
        empty = await ok(await http.get("/docs/empty-board/progress"))
        assert empty == {"board": "empty-board", "title": "Empty board", **nothing["overall"]}

        assert_error(await http.get("/docs/ops-board/progress"), 403)
        assert_error(await http.get("/progress", params={"board": "ops-board"}), 403)
        assert_error(await http.get("/docs/gone-board/progress"), 404)
        assert_error(await http.get("/docs/no-such-board/progress"), 404)
        assert_error(await http.get("/docs/notes/progress"), 409)
        assert_error(await http.get("/docs/bad%20id/progress"), 422, "doc_id")
        assert_error(await http.get("/progress", params={"colour": "red"}), 422, "colour")

    async with api(workspace, token(LIU)) as http:
        report = await ok(await http.get("/progress"))
        assert counts(report["overall"]) == (4, {"todo": 3, "in_progress": 0, "done": 1}, 25.0, 0)
        assert deadline_ids(report["overall"]) == ["o1", "p1"]
        assert [b["board"] for b in report["boards"]] == ["open-board", "ops-board"]

    # A token limited to one board reads that board's progress only.
    async with api(workspace, token(ALICE, doc="open-board")) as http:
        assert (await ok(await http.get("/docs/open-board/progress")))["total"] == 2
        assert_error(await http.get("/progress"), 403)
        assert_error(await http.get("/docs/sales-board/progress"), 403)
    async with api(workspace) as http:
        assert_error(await http.get("/progress"), 401)


# -- live -----------------------------------------------------------------------------------------


async def sse(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """Events of a text/event-stream as (name, data); comments are skipped."""
    name, data = "message", ""
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield name, json.loads(data)
            name, data = "message", ""
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()


async def execute(url: str, statement: Any) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(statement)
    finally:
        await engine.dispose()


async def test_progress_is_pushed_when_it_changes(
    workspace: ServerProcess, database_url: str
) -> None:
    async with api(workspace, token(ALICE)) as http:
        whole = await ok(await http.get("/progress"))
        async with http.stream("GET", "/progress/stream") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            name, data = await anext(sse(response))
            assert (name, data) == ("progress", whole)

        async with http.stream("GET", "/docs/sales-board/progress/stream") as response:
            assert response.status_code == 200
            events = sse(response)
            async with asyncio.timeout(10):
                name, first = await anext(events)
                assert name == "progress"
                assert counts(first) == (3, {"todo": 1, "in_progress": 1, "done": 1}, 33.3, 1)

                # The projection changes (as the sidecar would write it): a new event.
                started = asyncio.get_running_loop().time()
                await execute(
                    database_url,
                    update(task_index)
                    .where(task_index.c.task_id == "s1")
                    .values(status="done", updated_at=datetime.now(UTC)),
                )
                name, second = await anext(events)
                assert name == "progress"
                assert counts(second) == (3, {**ZERO, "in_progress": 1, "done": 2}, 66.7, 1)
                assert deadline_ids(second) == ["s2"]
                assert asyncio.get_running_loop().time() - started < 5

                # The board is deleted: `gone`, and the stream ends.
                await execute(
                    database_url,
                    update(documents)
                    .where(documents.c.id == "sales-board")
                    .values(deleted_at=datetime.now(UTC)),
                )
                assert await anext(events) == ("gone", {})
                assert [event async for event in events] == []

        assert_error(await http.get("/docs/ops-board/progress/stream"), 403)
        assert_error(await http.get("/docs/notes/progress/stream"), 409)


# -- against the document -------------------------------------------------------------------------


async def stored_board(url: str, doc_id: str) -> Doc[Any]:
    """The board as stored: its snapshot, then the updates after it."""
    engine = create_engine(url)
    doc: Doc[Any] = Doc()
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    select(snapshots.c.state, snapshots.c.upto_seq)
                    .join(documents, documents.c.snapshot_id == snapshots.c.id)
                    .where(documents.c.id == doc_id)
                )
            ).first()
            after = 0
            if row is not None:
                doc.apply_update(row.state)
                after = row.upto_seq
            stored = await conn.execute(
                select(updates.c.data)
                .where(updates.c.doc_id == doc_id, updates.c.seq > after)
                .order_by(updates.c.seq)
            )
            for (data,) in stored:
                doc.apply_update(data)
    finally:
        await engine.dispose()
    return doc


def due_at(due: str | None) -> datetime | None:
    """The moment a due is, as the sidecar reads it (a date: the end of that day, UTC)."""
    if due is None:
        return None
    parsed = parse_timestamp(due)
    if isinstance(parsed, datetime):
        return parsed.astimezone(UTC)
    return datetime.combine(parsed + timedelta(days=1), time(), tzinfo=UTC) - timedelta(
        microseconds=1
    )


async def test_figures_match_a_count_from_the_document(
    database_url: str, make_server: ServerFactory
) -> None:
    server = await make_server(database_url, **NO_SIDECAR)
    async with api(server) as http:
        created = await http.post(
            "/docs", json={"kind": "board", "title": "双十一看板", "department": "运营部"}
        )
        assert created.status_code == 201, created.text
        doc_id = created.json()["id"]
        ids: dict[str, str] = {}
        for key, body in (
            ("a", {"title": "写文案", "due": "2020-03-01", "assignee": ALICE}),
            ("b", {"title": "设计海报", "due": "2099-01-01T12:00:00+08:00"}),
            ("c", {"title": "审批", "status": "in_progress", "due": "2099-02-02"}),
            ("d", {"title": "上线", "due": "2020-01-01"}),
            ("e", {"title": "复盘"}),
            ("f", {"title": "草稿", "due": "2020-02-02"}),
            ("g", {"title": "采购", "status": "done", "department": "采购部"}),
        ):
            response = await http.post(f"/docs/{doc_id}/tasks", json=body)
            assert response.status_code == 201, response.text
            ids[key] = response.json()["id"]
        tasks = f"/docs/{doc_id}/tasks"
        assert (await http.post(f"{tasks}/{ids['d']}/complete")).status_code == 200
        moved = await http.patch(f"{tasks}/{ids['e']}", json={"status": "in_progress"})
        assert moved.status_code == 200
        assert (await http.delete(f"{tasks}/{ids['f']}")).status_code == 204

        # Count straight from the stored CRDT document.
        board, _ = read_board(await stored_board(database_url, doc_id))
        by_status = Counter(task.status for task in board.tasks)
        assert sum(by_status.values()) == 6  # a-g without the deleted f
        now = datetime.now(UTC)

        def late(task: Task) -> bool:
            moment = due_at(task.due)
            return moment is not None and moment < now and task.status != "done"

        open_dated = sorted(
            (t for t in board.tasks if t.status != "done" and t.due is not None),
            key=lambda t: (due_at(t.due), t.id),
        )

        # The projection of that document, as the sidecar keeps it.
        rows = [
            Row(
                doc_id,
                task.id,
                task.title,
                task.status,
                task.assignee,
                task.department or board.meta.department,
                task.due,
                due_at(task.due),
                task.priority,
            )
            for task in board.tasks
        ]
        await insert_rows(database_url, {}, rows)

        figures = await ok(await http.get(f"/docs/{doc_id}/progress"))
        assert figures["total"] == len(board.tasks)
        assert figures["by_status"] == {s: by_status[s] for s in ("todo", "in_progress", "done")}
        assert figures["by_status"] == {"todo": 2, "in_progress": 2, "done": 2}
        done = by_status["done"] * 100 / len(board.tasks)
        assert figures["percent_done"] == round(done, 1) == 33.3
        assert figures["overdue"] == sum(1 for task in board.tasks if late(task)) == 1
        assert deadline_ids(figures) == [task.id for task in open_dated][:5]
        assert deadline_ids(figures) == [ids["a"], ids["b"], ids["c"]]
        assert figures["title"] == "双十一看板"

        report = await ok(await http.get("/progress", params={"board": doc_id}))
        assert counts(report["overall"]) == counts(figures)
        per_department = Counter(task.department or board.meta.department for task in board.tasks)
        assert {d["department"]: d["total"] for d in report["departments"]} == dict(per_department)
        assert dict(per_department) == {"运营部": 5, "采购部": 1}


async def test_figures_follow_the_sidecar(database_url: str, make_server: ServerFactory) -> None:
    """End to end: the sidecar fills the projection from the board's edits; the figures
    follow each change and match a count from the stored document."""
    server = await make_server(database_url, TANDEM_SIDECAR_POLL_MS="50")
    async with api(server) as http:
        created = await http.post("/docs", json={"kind": "board", "title": "e2e"})
        assert created.status_code == 201, created.text
        doc_id = created.json()["id"]
        task_ids = []
        for body in (
            {"title": "one", "due": "2020-01-01"},
            {"title": "two", "status": "in_progress", "due": "2099-01-01"},
            {"title": "three", "status": "done"},
        ):
            response = await http.post(f"/docs/{doc_id}/tasks", json=body)
            assert response.status_code == 201, response.text
            task_ids.append(response.json()["id"])
        assert (await http.post(f"/docs/{doc_id}/tasks/{task_ids[1]}/complete")).status_code == 200

        board, _ = read_board(await stored_board(database_url, doc_id))
        by_status = Counter(task.status for task in board.tasks)
        expected = {s: by_status[s] for s in ("todo", "in_progress", "done")}
        assert expected == {"todo": 1, "in_progress": 0, "done": 2}
        figures: dict[str, Any] = {}
        async with asyncio.timeout(15):
            while figures.get("by_status") != expected:
                await asyncio.sleep(0.1)
                figures = await ok(await http.get(f"/docs/{doc_id}/progress"))
        assert figures["total"] == len(board.tasks) == 3
        assert figures["percent_done"] == 66.7
        assert figures["overdue"] == 1 and deadline_ids(figures) == [task_ids[0]]
