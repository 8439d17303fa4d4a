"""GET /api/tasks against real servers, on rows put straight into the task projection.

Until the sidecar fills `task_index` itself, the tests write its rows (and the boards'
`documents` rows) on a migrated database, then ask a real server running without the
sidecar (which would index the boards' empty documents and drop those rows). The workspace
(`seed`):

- `sales-board` belongs to department Sales, `ops-board` to Ops: only their members read them;
- `open-board` belongs to nobody: everyone reads it;
- `gone-board` is deleted: nobody sees its tasks.

刘洋 is in Ops, alice in Sales. The calendar and progress tests use the same workspace.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from conftest import ServerFactory, ServerProcess, upgrade_schema
from helpers import api, assert_error
from sqlalchemy import insert
from test_login import seed_user

from server.auth import issue_token
from server.persistence.sql import create_engine
from server.persistence.tables import documents, task_index

SECRET = "task-list-tests-secret-with-32-bytes-or-more"
ALICE = "alice"
LIU = "刘洋"
CHANGED = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
# The sidecar would index these boards' (empty) documents and drop the rows written here.
NO_SIDECAR = {"TANDEM_SIDECAR": "0"}


@dataclass(frozen=True)
class Row:
    doc: str
    task: str
    title: str
    status: str
    assignee: str | None
    department: str | None
    due: str | None
    due_at: datetime | None
    priority: str = "normal"


def end_of(day: str) -> datetime:
    """A date-only due's moment as the sidecar stores it: the end of that day (UTC here)."""
    return datetime.fromisoformat(f"{day}T23:59:59.999999+00:00")


ROWS = [
    Row("sales-board", "s1", "准备双十一海报", "todo", ALICE, "Sales", "2099-11-11",
        end_of("2099-11-11"), "high"),
    Row("sales-board", "s2", "Old report", "in_progress", ALICE, "Sales",
        "2020-01-05T09:00:00+08:00", datetime(2020, 1, 5, 1, 0, tzinfo=UTC)),
    Row("sales-board", "s3", "Done thing", "done", ALICE, "Sales", "2020-01-01",
        end_of("2020-01-01")),
    Row("ops-board", "o1", "Ops task for alice", "todo", ALICE, "Ops", "2099-01-01T10:00:00Z",
        datetime(2099, 1, 1, 10, 0, tzinfo=UTC)),
    Row("ops-board", "o2", "盘点库存", "todo", LIU, "Ops", None, None),
    Row("open-board", "p1", "Shared task", "todo", ALICE, None, "2099-06-01",
        end_of("2099-06-01")),
    Row("open-board", "p2", "Sales on the open board", "done", LIU, "Sales", "2099-02-01",
        end_of("2099-02-01")),
    Row("gone-board", "g1", "Deleted board's task", "todo", ALICE, None, "2099-03-01",
        end_of("2099-03-01")),
]  # fmt: skip

BOARDS = {
    "sales-board": ("销售看板", "Sales"),
    "ops-board": ("Ops board", "Ops"),
    "open-board": ("Open board", None),
    "gone-board": ("Gone board", None),
}


def token(user: str, **kwargs: Any) -> str:
    return issue_token(SECRET, user, ttl=3600, **kwargs)


def task_row(row: Row) -> dict[str, Any]:
    return {
        "doc_id": row.doc,
        "task_id": row.task,
        "title": row.title,
        "status": row.status,
        "assignee": row.assignee,
        "department": row.department,
        "due": row.due,
        "due_at": row.due_at,
        "priority": row.priority,
        "watchers": [],
        "created_by": row.assignee,
        "updated_at": CHANGED,
        "updated_by": "editor",
    }


async def insert_rows(
    url: str,
    boards: dict[str, tuple[str, str | None]],
    rows: list[Row],
    *,
    kind: str = "board",
    deleted: tuple[str, ...] = (),
) -> None:
    """Documents rows for `boards` (title, department) and the projection's `rows`."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            if boards:
                await conn.execute(
                    insert(documents),
                    [
                        {
                            "id": doc_id,
                            "created_at": CHANGED,
                            "updated_at": CHANGED,
                            "kind": kind,
                            "title": title,
                            "department": department,
                            "tags": [],
                            "deleted_at": CHANGED if doc_id in deleted else None,
                        }
                        for doc_id, (title, department) in boards.items()
                    ],
                )
            if rows:
                await conn.execute(insert(task_index), [task_row(row) for row in rows])
    finally:
        await engine.dispose()


async def seed(url: str) -> None:
    """The workspace of this module's docstring, on a migrated database."""
    await upgrade_schema(url)
    await seed_user(url, ALICE, None, department="Sales")
    await seed_user(url, LIU, None, department="Ops")
    await insert_rows(url, BOARDS, ROWS, deleted=("gone-board",))


@pytest.fixture
async def workspace(database_url: str, make_server: ServerFactory) -> ServerProcess:
    await seed(database_url)
    return await make_server(database_url, TANDEM_SECRET=SECRET, **NO_SIDECAR)


async def tasks(http: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await http.get("/tasks", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ids(body: dict[str, Any]) -> list[str]:
    return [item["task_id"] for item in body["tasks"]]


async def test_mine_across_every_readable_board(workspace: ServerProcess) -> None:
    async with api(workspace, token(ALICE)) as http:
        mine = await tasks(http, assignee="me")
        # Soonest first; o1 is on a board alice may not read, g1 on a deleted one.
        assert ids(mine) == ["s3", "s2", "p1", "s1"]
        assert mine["total"] == 4 and mine["limit"] == 100 and mine["offset"] == 0
        s2 = mine["tasks"][1]
        assert s2 == {
            "board": "sales-board",
            "board_title": "销售看板",
            "task_id": "s2",
            "title": "Old report",
            "status": "in_progress",
            "assignee": ALICE,
            "department": "Sales",
            "due": "2020-01-05T09:00:00+08:00",
            "due_at": "2020-01-05T01:00:00Z",
            "priority": "normal",
            "overdue": True,
            "updated_at": "2026-12-01T08:30:00Z",
            "updated_by": "editor",
            "url": f"{workspace.http_url}/api/docs/sales-board/tasks/s2",
        }
        by_id = {item["task_id"]: item for item in mine["tasks"]}
        assert by_id["s3"]["overdue"] is False  # past due, but done
        assert by_id["s1"]["overdue"] is False and by_id["s1"]["title"] == "准备双十一海报"
        assert by_id["p1"]["department"] is None and by_id["p1"]["board_title"] == "Open board"
        # Everything alice may read, whoever owns it; tasks without a due date come last.
        everything = await tasks(http)
        assert ids(everything) == ["s3", "s2", "p2", "p1", "s1"]

    async with api(workspace, token(LIU)) as http:
        assert ids(await tasks(http, assignee="me")) == ["p2", "o2"]
        # Someone else's tasks, only on boards 刘洋 may read: not alice's sales board.
        assert ids(await tasks(http, assignee=ALICE)) == ["o1", "p1"]
        assert ids(await tasks(http, assignee="nobody")) == []


async def test_filters(workspace: ServerProcess) -> None:
    async with api(workspace, token(ALICE)) as http:
        assert ids(await tasks(http, department="Sales")) == ["s3", "s2", "p2", "s1"]
        assert ids(await tasks(http, department="Ops")) == []
        assert ids(await tasks(http, status="todo")) == ["p1", "s1"]
        assert ids(await tasks(http, status="todo,in_progress")) == ["s2", "p1", "s1"]
        assert ids(await tasks(http, status=["done", "in_progress"])) == ["s3", "s2", "p2"]
        assert ids(await tasks(http, assignee="me", status="done")) == ["s3"]
        # A date bound is its whole day, in the server's time zone (UTC here).
        assert ids(await tasks(http, due_before="2020-01-01")) == ["s3"]
        assert ids(await tasks(http, due_before="2020-12-31")) == ["s3", "s2"]
        assert ids(await tasks(http, due_after="2099-06-01")) == ["p1", "s1"]
        assert ids(await tasks(http, due_after="2099-01-01", due_before="2099-06-01")) == [
            "p2",
            "p1",
        ]
        # A date-time bound is inclusive, with its offset or in the server's zone.
        assert ids(await tasks(http, due_before="2020-01-05T01:00:00Z")) == ["s3", "s2"]
        assert ids(await tasks(http, due_before="2020-01-05T08:59:59+08:00")) == ["s3"]
        assert ids(await tasks(http, due_after="2020-01-05T01:00:00")) == ["s2", "p2", "p1", "s1"]
        assert ids(await tasks(http, overdue="true")) == ["s2"]
        assert ids(await tasks(http, overdue="false")) == ["s3", "p2", "p1", "s1"]
        assert ids(await tasks(http, board="open-board")) == ["p2", "p1"]
        assert ids(await tasks(http, board="open-board", assignee="me")) == ["p1"]

        # Pages: limit and offset over the same order; total counts every page.
        page = await tasks(http, limit=2, offset=1)
        assert ids(page) == ["s2", "p2"] and page["total"] == 5
        assert page["limit"] == 2 and page["offset"] == 1
        assert ids(await tasks(http, limit=2, offset=4)) == ["s1"]
        assert (await tasks(http, offset=10))["tasks"] == []

        for params, field in (
            ({"status": "open"}, "status"),
            ({"status": "todo,later"}, "status"),
            ({"due_before": "next week"}, "due_before"),
            ({"due_after": "2026-13-01"}, "due_after"),
            ({"limit": "0"}, "limit"),
            ({"limit": "1001"}, "limit"),
            ({"offset": "-1"}, "offset"),
            ({"overdue": "perhaps"}, "overdue"),
            ({"board": "no/such"}, "board"),
            ({"colour": "red"}, "colour"),
        ):
            assert_error(await http.get("/tasks", params=params), 422, field)
        # A board the caller may not read is refused, not silently empty.
        assert_error(await http.get("/tasks", params={"board": "ops-board"}), 403)


async def test_who_may_ask(workspace: ServerProcess) -> None:
    async with api(workspace) as http:
        assert_error(await http.get("/tasks"), 401)
    # A token limited to one document lists that board only when asked for it.
    scoped = token(ALICE, doc="open-board")
    async with api(workspace, scoped) as http:
        assert_error(await http.get("/tasks"), 403)
        assert ids(await tasks(http, board="open-board")) == ["p2", "p1"]
        assert_error(await http.get("/tasks", params={"board": "sales-board"}), 403)
    # A share link opens its document's content and nothing else.
    async with api(workspace, token(ALICE)) as http:
        shared = await http.post("/docs/open-board/share", json={})
        assert shared.status_code == 201, shared.text
        link = shared.json()["token"]
    async with api(workspace) as http:
        assert_error(await http.get("/tasks", params={"token": link}), 403)
        assert_error(await http.get("/tasks", params={"board": "open-board", "token": link}), 403)
        # The token may come as ?token= (a calendar or a browser link cannot send a header).
        assert ids(await tasks(http, token=token(ALICE), assignee="me")) == ["s3", "s2", "p1", "s1"]


async def test_public_url_and_no_sign_in(database_url: str, make_server: ServerFactory) -> None:
    """Without sign-in every board is open (to the local user); links start with public_url."""
    await seed(database_url)
    server = await make_server(
        database_url, TANDEM_PUBLIC_URL="https://tandem.example.com/", **NO_SIDECAR
    )
    async with api(server) as http:
        body = await tasks(http, assignee=ALICE)
        assert ids(body) == ["s3", "s2", "o1", "p1", "s1"]
        assert body["tasks"][0]["url"] == "https://tandem.example.com/api/docs/sales-board/tasks/s3"
