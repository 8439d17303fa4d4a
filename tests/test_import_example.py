"""examples/import_tasks.py, run as a script against a live server, checked over REST."""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import io
import os
import sys
from pathlib import Path

from conftest import ROOT, ServerProcess
from helpers import api

SCRIPT = ROOT / "examples" / "import_tasks.py"


async def run_import(*args: str, cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        *args,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


async def new_board(server: ServerProcess) -> str:
    async with api(server) as http:
        created = await http.post("/docs", json={"kind": "board", "title": "导入"})
        assert created.status_code == 201, created.text
        return str(created.json()["id"])


async def board_tasks(server: ServerProcess, board_id: str) -> dict[str, dict[str, object]]:
    async with api(server) as http:
        content = await http.get(f"/docs/{board_id}/content")
        assert content.status_code == 200, content.text
        tasks: dict[str, dict[str, object]] = content.json()["content"]["tasks"]
        return tasks


async def test_the_import_example_adds_every_row_and_waits_until_stored(
    server: ServerProcess, tmp_path: Path
) -> None:
    board_id = await new_board(server)
    rows = [
        {
            "id": f"row-{i}",
            "title": f"双十一 任务 {i} 🎉",
            "assignee": ["刘洋", "王芳", ""][i % 3],
            "due": f"2026-11-{1 + i % 11:02d}",
            "priority": ["low", "normal", "high", "urgent"][i % 4],
            "status": ["todo", "in_progress", "done"][i % 3],
            "tags": "promo;客服" if i % 2 else "",
        }
        for i in range(25)
    ]
    write_csv(tmp_path / "tasks.csv", rows)

    code, out, err = await run_import(
        "--url", server.ws_url, "--batch", "5", board_id, "tasks.csv", cwd=tmp_path
    )
    assert code == 0, err
    assert "imported 25 task(s)" in out
    # Not a terminal: a line per 10% of the tasks stored, ending at 100%.
    assert err.splitlines()[0].startswith("0% ") and err.splitlines()[-1].startswith("100% ")

    tasks = await board_tasks(server, board_id)
    assert set(tasks) == {row["id"] for row in rows}
    seven = tasks["row-7"]
    assert seven["title"] == "双十一 任务 7 🎉" and seven["assignee"] == "王芳"
    assert seven["due"] == "2026-11-08" and seven["priority"] == "urgent"
    assert seven["status"] == "in_progress" and seven["tags"] == ["promo", "客服"]
    assert tasks["row-2"]["assignee"] is None

    # Running it again adds nothing: the ids are on the board already.
    code, out, err = await run_import("--url", server.ws_url, board_id, "tasks.csv", cwd=tmp_path)
    assert code == 0, err
    assert "imported 0 task(s)" in out and "25 task(s) already on the board" in err
    assert len(await board_tasks(server, board_id)) == 25


async def test_a_bad_row_stops_the_import_before_anything_is_sent(
    server: ServerProcess, tmp_path: Path
) -> None:
    board_id = await new_board(server)
    write_csv(
        tmp_path / "bad.csv",
        [
            {"title": "好的", "priority": "high"},
            {"title": "坏的", "priority": "someday"},
        ],
    )
    code, _, err = await run_import("--url", server.ws_url, board_id, "bad.csv", cwd=tmp_path)
    assert code == 2
    assert "line 3" in err and "someday" in err
    assert await board_tasks(server, board_id) == {}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_redraws_one_line_on_a_terminal() -> None:
    spec = importlib.util.spec_from_file_location("import_tasks", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    terminal, log = Terminal(), io.StringIO()
    on_terminal, in_log = module.Progress(40, terminal), module.Progress(40, log)
    for done in range(41):
        on_terminal.update(done)
        in_log.update(done)
    assert terminal.getvalue().count("\r") == 41 and terminal.getvalue().endswith(
        "40/40 tasks stored\n"
    )
    assert terminal.getvalue().count("\n") == 1
    assert [line.split()[0] for line in log.getvalue().splitlines()] == [
        f"{p}%" for p in range(0, 101, 10)
    ]
