"""Boards: typed reading and writing of the `board` kind (shared/schema/board.schema.json).

Shape: root Map `meta` (title, department, project, kind, schema) and root Map `tasks`, task id ->
Map (title, description, status, assignee, department, due, priority, tags, subtasks, order,
watchers, created_by, created_at).

`read_board` never raises on a document's content: what does not fit is skipped or replaced by a
default and listed as a `Problem`. The writers take trusted arguments, validate them (ValueError)
and change the document in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from functools import partial
from typing import Any, Literal, get_args

from pycrdt import Array, Doc, Map

from shared.documents import (
    Fields,
    JsonValue,
    Problem,
    ProblemLog,
    call_with_deep_stack,
    describe,
    guarded,
    new_id,
    pointer,
    read_meta,
    read_root,
    timestamp_text,
    utc_now,
)
from shared.schema import PRIORITIES, STATUSES

__all__ = [
    "Board",
    "BoardMeta",
    "Priority",
    "Status",
    "Subtask",
    "Task",
    "add_subtask",
    "add_task",
    "assign_task",
    "complete_task",
    "delete_task",
    "move_task",
    "read_board",
    "read_task",
    "set_due",
    "set_priority",
    "set_subtask_done",
    "update_task",
]

Status = Literal["todo", "in_progress", "done"]
Priority = Literal["low", "normal", "high", "urgent"]

if set(get_args(Status)) != set(STATUSES) or set(get_args(Priority)) != set(PRIORITIES):
    raise RuntimeError("shared/board.py and board.schema.json disagree on statuses or priorities")


@dataclass(frozen=True, slots=True)
class Subtask:
    id: str
    title: str
    done: bool = False

    def to_json(self) -> dict[str, JsonValue]:
        return {"id": self.id, "title": self.title, "done": self.done}


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    title: str
    status: Status = "todo"
    description: str = ""
    assignee: str | None = None
    department: str | None = None
    due: str | None = None
    """ISO 8601 date or date-time, as stored (see shared.documents.parse_timestamp)."""
    priority: Priority = "normal"
    tags: tuple[str, ...] = ()
    subtasks: tuple[Subtask, ...] = ()
    order: float | None = None
    watchers: tuple[str, ...] = ()
    created_by: str | None = None
    created_at: str | None = None

    @property
    def subtasks_done(self) -> int:
        return sum(1 for s in self.subtasks if s.done)

    def to_json(self) -> dict[str, JsonValue]:
        """The task as in the schema's JSON view (without its id, which is the key)."""
        order: JsonValue = self.order
        if self.order is not None and self.order.is_integer() and abs(self.order) < 2**53:
            order = int(self.order)
        return {
            "title": self.title,
            "description": self.description,
            "status": self.status,
            "assignee": self.assignee,
            "department": self.department,
            "due": self.due,
            "priority": self.priority,
            "tags": list(self.tags),
            "subtasks": [s.to_json() for s in self.subtasks],
            "order": order,
            "watchers": list(self.watchers),
            "created_by": self.created_by,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class BoardMeta:
    title: str = ""
    department: str | None = None
    project: str | None = None
    kind: str | None = "board"
    schema: int | None = None

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "title": self.title,
            "department": self.department,
            "project": self.project,
            "kind": self.kind,
            "schema": self.schema,
        }


@dataclass(frozen=True, slots=True)
class Board:
    meta: BoardMeta
    tasks: tuple[Task, ...]
    """All readable tasks, in board order: by status column, then order, creation time, id."""

    def column(self, status: str) -> tuple[Task, ...]:
        return tuple(t for t in self.tasks if t.status == status)

    def task(self, task_id: str) -> Task | None:
        for task in self.tasks:
            if task.id == task_id:
                return task
        return None

    def to_json(self) -> dict[str, JsonValue]:
        """The board as in the schema's JSON view; tasks keyed by id, in board order."""
        return {
            "meta": self.meta.to_json(),
            "tasks": {t.id: t.to_json() for t in self.tasks},
        }


# --- reading --------------------------------------------------------------------------------


def _sort_key(task: Task) -> tuple[int, int, float, str, str]:
    return (
        STATUSES.index(task.status),
        1 if task.order is None else 0,
        task.order or 0.0,
        task.created_at or "",
        task.id,
    )


def _read_meta(doc: Doc[Any], log: ProblemLog) -> BoardMeta:
    fields = read_meta(doc, log, "board")
    if fields is None:
        return BoardMeta()
    return BoardMeta(
        title=fields.string("title", required=True) or "",
        department=fields.string("department"),
        project=fields.string("project"),
        kind="board",
        schema=fields.integer("schema"),
    )


def _read_subtasks(fields: Fields) -> tuple[Subtask, ...]:
    items = fields.sequence("subtasks")
    if items is None:
        return ()
    out: list[Subtask] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        path = pointer(fields.path, "subtasks", index)
        sub = Fields.of(item, path, fields.log, what="subtask")
        if sub is None:
            continue
        sub_id = sub.string("id", required=True)
        if sub_id is None or sub_id == "":
            continue
        if sub_id in seen:
            fields.log.add(pointer(path, "id"), f"duplicate subtask id {sub_id!r}; skipped")
            continue
        seen.add(sub_id)
        out.append(
            Subtask(
                id=sub_id,
                title=sub.string("title", required=True) or "",
                done=sub.boolean("done"),
            )
        )
    return tuple(out)


def _read_task(task_id: str, value: object, log: ProblemLog) -> Task | None:
    path = pointer("/tasks", task_id)
    fields = Fields.of(value, path, log, what="task")
    if fields is None:
        return None
    status = fields.choice("status", STATUSES, "todo")
    priority = "normal"
    if "priority" in fields.values:
        priority = fields.choice("priority", PRIORITIES, "normal")
    return Task(
        id=task_id,
        title=fields.string("title", required=True) or "",
        status=status,  # type: ignore[arg-type]
        description=fields.string("description") or "",
        assignee=fields.string("assignee"),
        department=fields.string("department"),
        due=fields.timestamp("due"),
        priority=priority,  # type: ignore[arg-type]
        tags=fields.strings("tags"),
        subtasks=_read_subtasks(fields),
        order=fields.number("order"),
        watchers=fields.strings("watchers"),
        created_by=fields.string("created_by"),
        created_at=fields.timestamp("created_at"),
    )


def _read_tasks(doc: Doc[Any], log: ProblemLog) -> list[Task]:
    tasks_root = read_root(doc, "tasks", Map, log)
    if tasks_root is None:
        # An empty root is not sent in updates: no tasks yet.
        return []
    tasks: list[Task] = []
    for task_id in sorted(tasks_root.keys()):
        read = partial(_read_task, task_id, tasks_root.get(task_id), log)
        task = guarded(log, pointer("/tasks", task_id), "task", read, None)
        if task is not None:
            tasks.append(task)
    tasks.sort(key=_sort_key)
    return tasks


def read_board(doc: Doc[Any]) -> tuple[Board, list[Problem]]:
    """Read a board. Never raises because of the document's content (and runs on a deep
    stack, see shared.documents.call_with_deep_stack)."""
    return call_with_deep_stack(lambda: _read_board(doc))


def _read_board(doc: Doc[Any]) -> tuple[Board, list[Problem]]:
    log = ProblemLog()
    with doc.transaction():
        meta = guarded(log, "/meta", "meta", lambda: _read_meta(doc, log), BoardMeta())
        no_tasks: list[Task] = []
        tasks = guarded(log, "/tasks", "tasks", lambda: _read_tasks(doc, log), no_tasks)
    return Board(meta=meta, tasks=tuple(tasks)), log.problems()


def read_task(doc: Doc[Any], task_id: str) -> Task | None:
    """One task of a board, read as `read_board` reads it (None when it is not there or not
    readable). Never raises because of the document's content."""

    def read() -> Task | None:
        log = ProblemLog()
        with doc.transaction():
            tasks_root = guarded(
                log, "/tasks", "tasks", lambda: read_root(doc, "tasks", Map, log), None
            )
            if tasks_root is None or task_id not in tasks_root:
                return None
            value = tasks_root.get(task_id)
            return guarded(
                log,
                pointer("/tasks", task_id),
                "task",
                partial(_read_task, task_id, value, log),
                None,
            )

    return call_with_deep_stack(read)


# --- writing --------------------------------------------------------------------------------

_TEXT_FIELDS = ("title", "description")
_OPTIONAL_TEXT_FIELDS = ("assignee", "department", "created_by")
_UPDATABLE = frozenset(
    {
        "title",
        "description",
        "status",
        "assignee",
        "department",
        "due",
        "priority",
        "tags",
        "subtasks",
        "order",
        "watchers",
    }
)


def _tasks(doc: Doc[Any]) -> Map[Any]:
    tasks: Map[Any] = doc.get("tasks", type=Map)
    return tasks


def _task_map(doc: Doc[Any], task_id: str) -> Map[Any]:
    tasks = _tasks(doc)
    if task_id not in tasks:
        raise KeyError(task_id)
    task = tasks[task_id]
    if not isinstance(task, Map):
        raise ValueError(f"task {task_id!r} is {describe(task)}, not a Map")
    return task


def _check_status(status: str) -> str:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    return status


def _check_priority(priority: str) -> str:
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, not {priority!r}")
    return priority


def _check_text(name: str, value: object, *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string{' or None' if optional else ''}, not {value!r}")
    return value


def _check_strings(name: str, values: Iterable[str]) -> list[str]:
    if isinstance(values, str):
        raise ValueError(f"{name} must be a collection of strings, not a string")
    out: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"{name} must hold strings, not {value!r}")
        if value not in out:
            out.append(value)
    return out


def _due(due: str | date | datetime | None) -> str | None:
    return None if due is None else timestamp_text(due)


def _subtask_map(item: str | Subtask) -> Map[Any]:
    if isinstance(item, str):
        return Map({"id": new_id(), "title": item, "done": False})
    if isinstance(item, Subtask):
        return Map({"id": item.id or new_id(), "title": item.title, "done": bool(item.done)})
    raise ValueError(f"a subtask must be a title or a Subtask, not {item!r}")


def _end_of_column(doc: Doc[Any], status: str, *, exclude: str | None = None) -> float:
    """An order value after every task in column `status`."""
    highest: float | None = None
    for task_id, task in _tasks(doc).items():
        if task_id == exclude or not isinstance(task, Map):
            continue
        if task.get("status") != status:
            continue
        order = task.get("order")
        if isinstance(order, int | float) and not isinstance(order, bool):
            if highest is None or order > highest:
                highest = float(order)
    return 0.0 if highest is None else float(int(highest) + 1)


def add_task(
    doc: Doc[Any],
    title: str,
    *,
    status: str = "todo",
    assignee: str | None = None,
    department: str | None = None,
    due: str | date | datetime | None = None,
    priority: str = "normal",
    tags: Iterable[str] = (),
    subtasks: Iterable[str | Subtask] = (),
    created_by: str | None = None,
    description: str = "",
    watchers: Iterable[str] = (),
    order: float | None = None,
    task_id: str | None = None,
    created_at: str | date | datetime | None = None,
) -> str:
    """Add a task at the end of its status column; returns its id (random unless given)."""
    _check_text("title", title, optional=False)
    _check_text("description", description, optional=False)
    _check_status(status)
    _check_priority(priority)
    for name, value in (("assignee", assignee), ("department", department)):
        _check_text(name, value, optional=True)
    _check_text("created_by", created_by, optional=True)
    tag_list = _check_strings("tags", tags)
    watcher_list = _check_strings("watchers", watchers)
    due_text = _due(due)
    created = utc_now() if created_at is None else timestamp_text(created_at)
    if task_id is not None and (not isinstance(task_id, str) or not task_id):
        raise ValueError("task_id must be a non-empty string")
    subtask_maps = [_subtask_map(s) for s in subtasks]
    with doc.transaction():
        tasks = _tasks(doc)
        new = task_id or new_id()
        if new in tasks:
            raise ValueError(f"task {new!r} already exists")
        position = _end_of_column(doc, status) if order is None else float(order)
        tasks[new] = Map(
            {
                "title": title,
                "description": description,
                "status": status,
                "assignee": assignee,
                "department": department,
                "due": due_text,
                "priority": priority,
                "tags": Array(tag_list),
                "subtasks": Array(subtask_maps),
                "order": position,
                "watchers": Array(watcher_list),
                "created_by": created_by,
                "created_at": created,
            }
        )
    return new


def move_task(doc: Doc[Any], task_id: str, status: str, order: float | None = None) -> None:
    """Set a task's status; at `order` in the column, or after its last task."""
    _check_status(status)
    with doc.transaction():
        task = _task_map(doc, task_id)
        position = _end_of_column(doc, status, exclude=task_id) if order is None else float(order)
        task["status"] = status
        task["order"] = position


def complete_task(doc: Doc[Any], task_id: str) -> None:
    """Move a task to the end of the done column (subtasks are left as they are)."""
    with doc.transaction():
        task = _task_map(doc, task_id)
        if task.get("status") != "done":
            move_task(doc, task_id, "done")


def assign_task(doc: Doc[Any], task_id: str, assignee: str | None) -> None:
    """Set the task's owner (None: unassigned)."""
    _check_text("assignee", assignee, optional=True)
    with doc.transaction():
        _task_map(doc, task_id)["assignee"] = assignee


def set_due(doc: Doc[Any], task_id: str, due: str | date | datetime | None) -> None:
    """Set the due date (ISO 8601 string, date or datetime; None clears it)."""
    text = _due(due)
    with doc.transaction():
        _task_map(doc, task_id)["due"] = text


def set_priority(doc: Doc[Any], task_id: str, priority: str) -> None:
    _check_priority(priority)
    with doc.transaction():
        _task_map(doc, task_id)["priority"] = priority


def update_task(doc: Doc[Any], task_id: str, **fields: Any) -> None:
    """Set several fields at once: title, description, status, assignee, department, due,
    priority, tags, subtasks (replaced), order, watchers. Unknown names raise ValueError."""
    unknown = set(fields) - _UPDATABLE
    if unknown:
        raise ValueError(f"unknown task fields: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for name, value in fields.items():
        if name in _TEXT_FIELDS:
            values[name] = _check_text(name, value, optional=False)
        elif name in _OPTIONAL_TEXT_FIELDS:
            values[name] = _check_text(name, value, optional=True)
        elif name == "status":
            values[name] = _check_status(value)
        elif name == "priority":
            values[name] = _check_priority(value)
        elif name == "due":
            values[name] = _due(value)
        elif name == "order":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"order must be a number, not {value!r}")
            values[name] = float(value)
        elif name in ("tags", "watchers"):
            values[name] = _check_strings(name, value)
        elif name == "subtasks":
            values[name] = list(value)
    with doc.transaction():
        task = _task_map(doc, task_id)
        if "status" in values and "order" not in values and task.get("status") != values["status"]:
            values["order"] = _end_of_column(doc, values["status"], exclude=task_id)
        for name, value in values.items():
            if name in ("tags", "watchers"):
                task[name] = Array(value)
            elif name == "subtasks":
                task[name] = Array([_subtask_map(s) for s in value])
            else:
                task[name] = value


def delete_task(doc: Doc[Any], task_id: str) -> bool:
    """Remove a task; False when there was none with this id."""
    with doc.transaction():
        tasks = _tasks(doc)
        if task_id not in tasks:
            return False
        del tasks[task_id]
        return True


def _subtasks_array(task: Map[Any], task_id: str) -> Array[Any]:
    subtasks = task.get("subtasks")
    if subtasks is None:
        subtasks = Array()
        task["subtasks"] = subtasks
        return subtasks
    if not isinstance(subtasks, Array):
        raise ValueError(f"subtasks of task {task_id!r} are {describe(subtasks)}, not an Array")
    return subtasks


def add_subtask(
    doc: Doc[Any],
    task_id: str,
    title: str,
    *,
    done: bool = False,
    subtask_id: str | None = None,
) -> str:
    """Append a subtask to a task; returns its id."""
    _check_text("title", title, optional=False)
    new = subtask_id or new_id()
    with doc.transaction():
        array = _subtasks_array(_task_map(doc, task_id), task_id)
        array.append(Map({"id": new, "title": title, "done": bool(done)}))
    return new


def set_subtask_done(doc: Doc[Any], task_id: str, subtask_id: str, done: bool = True) -> None:
    """Tick (or untick) a subtask. KeyError when the task or subtask does not exist."""
    with doc.transaction():
        array = _subtasks_array(_task_map(doc, task_id), task_id)
        for item in array:
            if isinstance(item, Map) and item.get("id") == subtask_id:
                item["done"] = bool(done)
                return
    raise KeyError(subtask_id)
