"""Discussions: the `discussion` kind (shared/schema/discussion.schema.json).

Shape: root Map `meta` (title, subject_doc, subject_task) and root Array `messages` of Maps (id,
author, body, created_at, reply_to, mentions, anchor, edited_at, deleted). Messages are only
appended; deleting one is soft: `deleted` is set and the body cleared, so replies keep their
place in the thread.

An anchor points a comment at a place in the subject document: `start` and `end` are Yjs
relative positions (`Y.relativePositionToJSON` objects, or the binary encoding as bytes or
base64 text), `quote` the text they covered when the comment was made.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import partial
from typing import Any

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
    root_items,
    timestamp_text,
    to_plain,
    utc_now,
)

__all__ = [
    "Anchor",
    "Discussion",
    "DiscussionMeta",
    "Message",
    "ThreadEntry",
    "delete_message",
    "edit_message",
    "post_message",
    "read_discussion",
    "thread",
]

RelativePosition = dict[str, JsonValue] | str
"""A Yjs relative position: its JSON form, or its binary encoding as base64 text."""


@dataclass(frozen=True, slots=True)
class Anchor:
    start: RelativePosition
    end: RelativePosition
    quote: str | None = None

    def to_json(self) -> dict[str, JsonValue]:
        return {"start": self.start, "end": self.end, "quote": self.quote}


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    author: str
    body: str
    created_at: str | None = None
    reply_to: str | None = None
    mentions: tuple[str, ...] = ()
    anchor: Anchor | None = None
    edited_at: str | None = None
    deleted: bool = False

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "id": self.id,
            "author": self.author,
            "body": self.body,
            "created_at": self.created_at,
            "reply_to": self.reply_to,
            "mentions": list(self.mentions),
            "anchor": None if self.anchor is None else self.anchor.to_json(),
            "edited_at": self.edited_at,
            "deleted": self.deleted,
        }


@dataclass(frozen=True, slots=True)
class DiscussionMeta:
    title: str = ""
    department: str | None = None
    subject_doc: str | None = None
    subject_task: str | None = None
    kind: str | None = "discussion"
    schema: int | None = None

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "title": self.title,
            "department": self.department,
            "subject_doc": self.subject_doc,
            "subject_task": self.subject_task,
            "kind": self.kind,
            "schema": self.schema,
        }


@dataclass(frozen=True, slots=True)
class ThreadEntry:
    """A message in reading order: `depth` 0 for a thread start, `parent` the message it
    answers (None for thread starts and for replies whose parent is not in the discussion)."""

    message: Message
    depth: int
    parent: Message | None


@dataclass(frozen=True, slots=True)
class Discussion:
    meta: DiscussionMeta
    messages: tuple[Message, ...]
    """Readable messages in the order of the array (the order they were posted and merged)."""

    def message(self, message_id: str) -> Message | None:
        for message in self.messages:
            if message.id == message_id:
                return message
        return None

    def to_json(self) -> dict[str, JsonValue]:
        return {"meta": self.meta.to_json(), "messages": [m.to_json() for m in self.messages]}


# --- reading --------------------------------------------------------------------------------

_POSITION_KEYS = frozenset({"type", "tname", "item", "assoc"})


def _position(value: object, path: str, log: ProblemLog) -> RelativePosition | None:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, str):
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            log.add(path, "not base64 text nor a relative position object")
            return None
        return value
    plain, cut = to_plain(value, max_depth=3)
    if cut or not isinstance(plain, dict) or not plain or not set(plain) <= _POSITION_KEYS:
        log.add(path, f"{describe(value)} is not a relative position")
        return None
    for key in ("type", "item"):
        ident = plain.get(key)
        if ident is None:
            continue
        if not (
            isinstance(ident, dict)
            and set(ident) == {"client", "clock"}
            and all(isinstance(v, int) and v >= 0 for v in ident.values())
        ):
            log.add(pointer(path, key), "not an id {client, clock}")
            return None
    if "tname" in plain and not isinstance(plain["tname"], str | None):
        log.add(pointer(path, "tname"), "not a string")
        return None
    if "assoc" in plain and not isinstance(plain["assoc"], int):
        log.add(pointer(path, "assoc"), "not a whole number")
        return None
    return plain


def _anchor(fields: Fields) -> Anchor | None:
    value = fields.values.get("anchor")
    if value is None:
        return None
    path = fields.at("anchor")
    anchor = Fields.of(value, path, fields.log, what="anchor")
    if anchor is None:
        return None
    start = _position(anchor.values.get("start"), pointer(path, "start"), fields.log)
    end = _position(anchor.values.get("end"), pointer(path, "end"), fields.log)
    if start is None or end is None:
        fields.log.add(path, "anchor ignored")
        return None
    return Anchor(start, end, anchor.string("quote"))


def _read_message(index: int, value: object, log: ProblemLog) -> Message | None:
    path = pointer("/messages", index)
    fields = Fields.of(value, path, log, what="message")
    if fields is None:
        return None
    message_id = fields.string("id", required=True)
    if not message_id:
        log.add(path, "message without an id; skipped")
        return None
    deleted = fields.boolean("deleted")
    return Message(
        id=message_id,
        author=fields.string("author", required=True) or "",
        body="" if deleted else fields.string("body", required=True) or "",
        created_at=fields.timestamp("created_at", required=True),
        reply_to=fields.string("reply_to") or None,
        mentions=fields.strings("mentions"),
        anchor=_anchor(fields),
        edited_at=fields.timestamp("edited_at"),
        deleted=deleted,
    )


def _read_meta(doc: Doc[Any], log: ProblemLog) -> DiscussionMeta:
    fields = read_meta(doc, log, "discussion")
    if fields is None:
        return DiscussionMeta()
    return DiscussionMeta(
        title=fields.string("title", required=True) or "",
        department=fields.string("department"),
        subject_doc=fields.string("subject_doc"),
        subject_task=fields.string("subject_task"),
        kind="discussion",
        schema=fields.integer("schema"),
    )


def _read_messages(doc: Doc[Any], log: ProblemLog) -> list[Message]:
    if read_root(doc, "messages", Array, log) is None:
        # An empty root is not sent in updates: no messages yet.
        return []
    messages: list[Message] = []
    paths: list[str] = []
    seen: set[str] = set()
    for index, item in enumerate(root_items(doc, "messages", log)):
        path = pointer("/messages", index)
        message = guarded(log, path, "message", partial(_read_message, index, item, log), None)
        if message is None:
            continue
        if message.id in seen:
            log.add(pointer(path, "id"), f"duplicate message id {message.id!r}; skipped")
            continue
        seen.add(message.id)
        messages.append(message)
        paths.append(pointer(path, "reply_to"))
    for path, message in zip(paths, messages, strict=True):
        if message.reply_to is not None and message.reply_to not in seen:
            log.add(path, f"{message.reply_to!r} is not a message of this discussion")
        elif message.reply_to == message.id:
            log.add(path, "the message replies to itself")
    return messages


def read_discussion(doc: Doc[Any]) -> tuple[Discussion, list[Problem]]:
    """Read a discussion. Never raises because of the document's content (and runs on a deep
    stack, see shared.documents.call_with_deep_stack)."""
    return call_with_deep_stack(lambda: _read_discussion(doc))


def _read_discussion(doc: Doc[Any]) -> tuple[Discussion, list[Problem]]:
    log = ProblemLog()
    with doc.transaction():
        meta = guarded(log, "/meta", "meta", lambda: _read_meta(doc, log), DiscussionMeta())
        none: list[Message] = []
        messages = guarded(log, "/messages", "messages", lambda: _read_messages(doc, log), none)
    return Discussion(meta, tuple(messages)), log.problems()


def thread(discussion: Discussion) -> list[ThreadEntry]:
    """All messages in reading order: each thread start (in posting order) followed by its
    replies, depth first. Replies to unknown messages, and messages caught in a reply cycle,
    start threads of their own."""
    by_id = {m.id: m for m in discussion.messages}
    children: dict[str, list[Message]] = {}
    roots: list[Message] = []
    for message in discussion.messages:
        parent = message.reply_to
        if parent is not None and parent in by_id and parent != message.id:
            children.setdefault(parent, []).append(message)
        else:
            roots.append(message)
    out: list[ThreadEntry] = []
    placed: set[str] = set()

    def walk(root: Message) -> None:
        parent = by_id.get(root.reply_to) if root.reply_to is not None else None
        stack: list[tuple[Message, int, Message | None]] = [(root, 0, parent)]
        while stack:
            message, depth, parent = stack.pop()
            if message.id in placed:
                continue
            placed.add(message.id)
            out.append(ThreadEntry(message, depth, parent))
            for child in reversed(children.get(message.id, [])):
                stack.append((child, depth + 1, message))

    for root in roots:
        walk(root)
    for message in discussion.messages:  # cycles: a -> b -> a has no root
        if message.id not in placed:
            walk(message)
    return out


# --- writing --------------------------------------------------------------------------------


def _messages(doc: Doc[Any]) -> Array[Any]:
    messages: Array[Any] = doc.get("messages", type=Array)
    return messages


def _find(doc: Doc[Any], message_id: str) -> Map[Any]:
    for item in _messages(doc):
        if isinstance(item, Map) and item.get("id") == message_id:
            return item
    raise KeyError(message_id)


def _anchor_map(anchor: Anchor | Mapping[str, Any]) -> Map[Any]:
    start: object
    end: object
    quote: object
    if isinstance(anchor, Anchor):
        start, end, quote = anchor.start, anchor.end, anchor.quote
    else:
        start, end, quote = anchor.get("start"), anchor.get("end"), anchor.get("quote")
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, dict | str | bytes):
            raise ValueError(f"anchor {name} must be a relative position, not {value!r}")
    if quote is not None and not isinstance(quote, str):
        raise ValueError("anchor quote must be a string")
    return Map({"start": start, "end": end, "quote": quote})


def _check_strings(name: str, values: Iterable[str]) -> list[str]:
    if isinstance(values, str):
        raise ValueError(f"{name} must be a collection of strings, not a string")
    out = list(dict.fromkeys(values))
    if not all(isinstance(v, str) for v in out):
        raise ValueError(f"{name} must hold strings")
    return out


def post_message(
    doc: Doc[Any],
    author: str,
    body: str,
    *,
    reply_to: str | None = None,
    mentions: Iterable[str] = (),
    anchor: Anchor | Mapping[str, Any] | None = None,
    message_id: str | None = None,
    created_at: str | date | datetime | None = None,
) -> str:
    """Append a message; returns its id (random unless given)."""
    if not isinstance(author, str) or not isinstance(body, str):
        raise ValueError("author and body must be strings")
    if reply_to is not None and not isinstance(reply_to, str):
        raise ValueError("reply_to must be a message id")
    mention_list = _check_strings("mentions", mentions)
    created = utc_now() if created_at is None else timestamp_text(created_at)
    new = message_id or new_id()
    with doc.transaction():
        _messages(doc).append(
            Map(
                {
                    "id": new,
                    "author": author,
                    "body": body,
                    "created_at": created,
                    "reply_to": reply_to,
                    "mentions": Array(mention_list),
                    "anchor": None if anchor is None else _anchor_map(anchor),
                    "edited_at": None,
                    "deleted": False,
                }
            )
        )
    return new


def edit_message(
    doc: Doc[Any],
    message_id: str,
    body: str,
    *,
    mentions: Iterable[str] | None = None,
    edited_at: str | date | datetime | None = None,
) -> None:
    """Replace a message's body (and mentions, if given). KeyError if there is no such message,
    ValueError if it was deleted."""
    if not isinstance(body, str):
        raise ValueError("body must be a string")
    mention_list = None if mentions is None else _check_strings("mentions", mentions)
    stamp = utc_now() if edited_at is None else timestamp_text(edited_at)
    with doc.transaction():
        message = _find(doc, message_id)
        if message.get("deleted") is True:
            raise ValueError(f"message {message_id!r} was deleted")
        message["body"] = body
        message["edited_at"] = stamp
        if mention_list is not None:
            message["mentions"] = Array(mention_list)


def delete_message(
    doc: Doc[Any], message_id: str, *, deleted_at: str | date | datetime | None = None
) -> None:
    """Soft-delete a message: it stays in the thread as "[deleted]", its body is cleared."""
    stamp = utc_now() if deleted_at is None else timestamp_text(deleted_at)
    with doc.transaction():
        message = _find(doc, message_id)
        message["deleted"] = True
        message["body"] = ""
        message["edited_at"] = stamp
