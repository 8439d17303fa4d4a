"""Import tasks from a CSV file into a Tandem board, and wait until the server has stored them.

    PYTHONPATH=. python examples/import_tasks.py --url ws://127.0.0.1:8000/ws d11-board tasks.csv

(or without PYTHONPATH once `pip install ./client` has installed the client). The first row
names the columns: `title` (required), and any of `assignee`, `due` (ISO 8601 date),
`priority` (low, normal, high, urgent), `status` (todo, in_progress, done), `department`,
`description`, `tags` (separated by `;` or `,`) and `id` (a task id: a row whose id the board
already has is skipped, so an import can be run again). Every row is checked before anything
is sent; a bad row stops the import with exit code 2 and its line number.

Progress (tasks stored by the server) goes to stderr: a bar on a terminal, a line per 10%
otherwise. `--store FILE` keeps the edits in an offline store, so an import interrupted by a
network or server outage finishes when the same command runs again; `--token` (or
TANDEM_TOKEN) signs in.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pycrdt import Doc

from client.documents import BoardClient
from client.errors import ClientError
from client.sync import SyncClient

COLUMNS = ("title", "assignee", "due", "priority", "status", "department", "description")


class Progress:
    """A progress bar on a terminal, a line per 10% elsewhere (logs, pipes)."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self._tenth = -1

    def update(self, done: int) -> None:
        fraction = done / self.total if self.total else 1.0
        if self.tty:
            filled = int(fraction * 30)
            bar = "#" * filled + "-" * (30 - filled)
            self.stream.write(f"\r[{bar}] {done}/{self.total} tasks stored")
            if done >= self.total:
                self.stream.write("\n")
        else:
            tenth = int(fraction * 10)
            if tenth > self._tenth:
                self._tenth = tenth
                self.stream.write(f"{tenth * 10}% ({done}/{self.total} tasks stored)\n")
        self.stream.flush()


def read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """The CSV's rows as add_task arguments, with their line numbers; ValueError names the
    line of the first bad row (each row is tried on a scratch document first)."""
    scratch = BoardClient(Doc())
    rows: list[tuple[int, dict[str, Any]]] = []
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames is None or "title" not in reader.fieldnames:
            raise ValueError(f"{path}: the first row must name the columns, `title` among them")
        for row in reader:
            line = reader.line_num
            fields: dict[str, Any] = {}
            for column in COLUMNS:
                value = (row.get(column) or "").strip()
                if value:
                    fields[column] = value
            if "title" not in fields:
                raise ValueError(f"line {line}: the title is empty")
            tags = [t.strip() for t in re.split(r"[;,]", row.get("tags") or "") if t.strip()]
            if tags:
                fields["tags"] = tags
            task_id = (row.get("id") or "").strip()
            if task_id:
                fields["task_id"] = task_id
            try:
                scratch.add(fields.pop("title"), **fields)
            except ValueError as exc:
                raise ValueError(f"line {line}: {exc}") from None
            fields["title"] = row["title"].strip()
            rows.append((line, fields))
    return rows


async def import_tasks(
    url: str,
    board_id: str,
    rows: list[tuple[int, dict[str, Any]]],
    *,
    token: str | None,
    store: Path | None,
    batch: int,
    timeout: float,
) -> int:
    """Add the rows' tasks, a batch at a time, each batch waited for until stored; returns
    how many were added."""
    async with SyncClient(url, board_id, token=token, store=store) as client:
        await client.wait_synced(timeout)
        board = BoardClient(client)
        existing = {task.id for task in board.tasks()}
        todo = [fields for _, fields in rows if fields.get("task_id") not in existing]
        if len(todo) < len(rows):
            print(f"{len(rows) - len(todo)} task(s) already on the board", file=sys.stderr)
        progress = Progress(len(todo))
        progress.update(0)
        for start in range(0, len(todo), batch):
            for fields in todo[start : start + batch]:
                fields = dict(fields)
                board.add(fields.pop("title"), **fields)
            await client.wait_stored(timeout)
            progress.update(min(start + batch, len(todo)))
        await client.wait_stored(timeout)  # also what an earlier, interrupted run left
    return len(todo)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("board", help="the board's document id")
    parser.add_argument("csv", type=Path, help="the CSV file (UTF-8)")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/ws", help="the server's /ws URL")
    parser.add_argument("--token", default=os.environ.get("TANDEM_TOKEN"))
    parser.add_argument("--store", type=Path, help="an offline store file")
    parser.add_argument("--batch", type=int, default=50, help="tasks per stored batch")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per wait")
    args = parser.parse_args(argv)
    try:
        rows = read_rows(args.csv)
    except (OSError, ValueError, csv.Error) as exc:
        print(f"import_tasks: {exc}", file=sys.stderr)
        return 2
    try:
        added = asyncio.run(
            import_tasks(
                args.url,
                args.board,
                rows,
                token=args.token,
                store=args.store,
                batch=max(1, args.batch),
                timeout=args.timeout,
            )
        )
    except ClientError as exc:
        print(f"import_tasks: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print("import_tasks: the server did not confirm in time", file=sys.stderr)
        return 1
    print(f"imported {added} task(s) into {args.board}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
