"""Typed operations on the three document kinds, over a SyncClient or a bare pycrdt Doc.

Thin wrappers of the readers and writers in shared/ (board, richtext, discussion), which
validate arguments (ValueError) and change the document in one transaction each; through a
SyncClient the change is sent, and stored offline when the client has a store.

    async with SyncClient(url, "d11-board", store="tandem.db") as client:
        await client.wait_synced()
        board = BoardClient(client)
        task = board.add("Check prices", assignee="liu", due="2026-11-08")
        board.complete(task)
        await client.wait_stored()
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

from pycrdt import Doc, XmlFragment

from client.sync import SyncClient
from shared import board as _board
from shared import discussion as _discussion
from shared import richtext as _richtext
from shared.board import Board, Task
from shared.discussion import Discussion, Message
from shared.richtext import TextDocument

__all__ = ["BoardClient", "DiscussionClient", "TextClient", "mentions_in"]

Target = SyncClient | Doc[Any]

# "@name" where name is a user id: letters (any script), digits, `_`, `.`, `-`; not an
# e-mail address (no word character right before the @), trailing dots left out.
_MENTION = re.compile(r"(?<![\w.])@([\w][\w.-]*[\w]|[\w])")


def _doc(target: Target) -> Doc[Any]:
    return target.doc if isinstance(target, SyncClient) else target


def mentions_in(body: str) -> list[str]:
    """The user ids mentioned as `@id` in a message body, in order, each once."""
    return list(dict.fromkeys(_MENTION.findall(body)))


class BoardClient:
    """A task board (`board` kind)."""

    def __init__(self, target: Target) -> None:
        self.doc = _doc(target)

    def read(self) -> Board:
        """The board as read by shared.board.read_board (content problems are skipped)."""
        board, _ = _board.read_board(self.doc)
        return board

    def tasks(self) -> tuple[Task, ...]:
        return self.read().tasks

    def task(self, task_id: str) -> Task | None:
        return self.read().task(task_id)

    def find(self, title: str) -> Task | None:
        """The first task with exactly this title, in board order."""
        return next((t for t in self.tasks() if t.title == title), None)

    def add(self, title: str, **fields: Any) -> str:
        """Add a task (fields as shared.board.add_task: status, assignee, due, priority,
        tags, description, …); returns its id."""
        return _board.add_task(self.doc, title, **fields)

    def move(self, task_id: str, status: str, order: float | None = None) -> None:
        _board.move_task(self.doc, task_id, status, order)

    def assign(self, task_id: str, assignee: str | None) -> None:
        _board.assign_task(self.doc, task_id, assignee)

    def set_due(self, task_id: str, due: str | date | datetime | None) -> None:
        _board.set_due(self.doc, task_id, due)

    def set_priority(self, task_id: str, priority: str) -> None:
        _board.set_priority(self.doc, task_id, priority)

    def complete(self, task_id: str) -> None:
        _board.complete_task(self.doc, task_id)

    def update(self, task_id: str, **fields: Any) -> None:
        _board.update_task(self.doc, task_id, **fields)

    def delete(self, task_id: str) -> bool:
        return _board.delete_task(self.doc, task_id)


class TextClient:
    """A rich-text document (`doc` kind)."""

    def __init__(self, target: Target) -> None:
        self.doc = _doc(target)

    def read(self) -> TextDocument:
        document, _ = _richtext.read_doc(self.doc)
        return document

    def text(self) -> str:
        """The plain text: blocks separated by blank lines."""
        blocks = self.read().content.content
        return "\n\n".join(_richtext.plain_text(block) for block in blocks)

    def append(self, text: str) -> None:
        """Append `text` (simple Markdown, as shared.richtext.set_text reads it) as new blocks
        at the end, leaving the existing ones, and concurrent edits to them, alone."""
        blocks = _richtext.parse_markdown(text).content
        with self.doc.transaction():
            fragment = self.doc.get("default", type=XmlFragment)
            for block in blocks:
                if isinstance(block, _richtext.TextRun):
                    block = _richtext.Node("paragraph", {}, (block,))
                # shared.richtext's own node writer (what set_content uses), so that
                # appended blocks are stored exactly as a full rewrite would store them.
                _richtext._write_node(fragment, block)

    def replace(self, text: str) -> None:
        """Replace the whole text (shared.richtext.set_text)."""
        _richtext.set_text(self.doc, text)


class DiscussionClient:
    """A discussion (`discussion` kind)."""

    def __init__(self, target: Target) -> None:
        self.doc = _doc(target)

    def read(self) -> Discussion:
        discussion, _ = _discussion.read_discussion(self.doc)
        return discussion

    def messages(self) -> tuple[Message, ...]:
        return self.read().messages

    def post(self, author: str, body: str, *, mentions: list[str] | None = None) -> str:
        """Post a message; `mentions` default to the `@id`s in `body`. Returns its id."""
        found = mentions_in(body) if mentions is None else mentions
        return _discussion.post_message(self.doc, author, body, mentions=found)

    def reply(
        self, message_id: str, author: str, body: str, *, mentions: list[str] | None = None
    ) -> str:
        """Answer message `message_id` (KeyError if there is none); returns the reply's id."""
        if self.read().message(message_id) is None:
            raise KeyError(message_id)
        found = mentions_in(body) if mentions is None else mentions
        return _discussion.post_message(self.doc, author, body, reply_to=message_id, mentions=found)

    def edit(self, message_id: str, body: str) -> None:
        _discussion.edit_message(self.doc, message_id, body, mentions=mentions_in(body))

    def delete(self, message_id: str) -> None:
        _discussion.delete_message(self.doc, message_id)
