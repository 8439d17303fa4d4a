"""Markdown exports (CommonMark with GFM task lists, tables and strikethrough).

Every user string is escaped so it cannot change the structure around it: a title "# hi" stays
text, "*x*" is not emphasis, "[a](javascript:..)" is not a link, a newline in a task title does
not start a new block. Links are kept only for http, https and mailto.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from server.export.common import (
    Attachment,
    clean,
    display_time,
    human_size,
    is_punctuation,
    one_line,
    priority_label,
    safe_href,
    shorten,
    status_label,
)
from shared.board import Board, Task
from shared.discussion import Discussion, thread
from shared.documents import Problem
from shared.richtext import Mark, Node, TextDocument, TextRun, plain_text
from shared.schema import KNOWN_NODES, STATUSES

# --- escaping -------------------------------------------------------------------------------

_ALWAYS = re.compile(r"([\\`*_\[\]<>|~&#])")
_ORDERED_MARKER = re.compile(r"^(\d{1,9})([.)])")


def escape(text: str, *, line_start: bool = True) -> str:
    """Escape one line of user text (no newlines) for Markdown.

    Characters that are markup anywhere are backslash-escaped; at the start of a line, leading
    blanks are dropped and list, heading and setext markers escaped as well.
    """
    text = _ALWAYS.sub(r"\\\1", text)
    if line_start:
        text = text.lstrip(" \t")
        if text[:1] in ("-", "+", "="):
            text = "\\" + text
        else:
            text = _ORDERED_MARKER.sub(r"\1\\\2", text, count=1)
    return text


def line(text: str) -> str:
    """A user string on one line: newlines become spaces, then `escape`."""
    return escape(one_line(text))


def paragraphs(text: str) -> list[str]:
    """Multi-line user text as Markdown lines: blank lines separate paragraphs, single newlines
    are hard breaks."""
    out: list[str] = []
    current: list[str] = []
    for raw in clean(text).replace("\t", "    ").split("\n"):
        if raw.strip():
            current.append(escape(raw.rstrip()))
            continue
        if current:
            out.extend(_join_breaks(current))
            out.append("")
            current = []
    if current:
        out.extend(_join_breaks(current))
    while out and out[-1] == "":
        out.pop()
    return out


def _join_breaks(lines: list[str]) -> list[str]:
    return [ln + "\\" for ln in lines[:-1]] + lines[-1:]


def code_span(text: str) -> str:
    """`text` as an inline code span (newlines become spaces)."""
    body = one_line(text) if "\n" in text else clean(text)
    if not body:
        return ""
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * (longest + 1)
    if body.startswith("`") or body.endswith("`") or (body[0] == " " == body[-1] and body.strip()):
        body = f" {body} "
    return f"{fence}{body}{fence}"


def _url(href: str) -> str:
    """An already-checked URL made safe inside (...): no spaces, brackets or backslashes."""
    out = []
    for char in href:
        if char in " ()<>\\\"'" or ord(char) < 0x21:
            out.append("".join(f"%{b:02X}" for b in char.encode("utf-8")))
        else:
            out.append(char)
    return "".join(out)


def _blank_separated(blocks: Iterable[list[str]]) -> list[str]:
    out: list[str] = []
    for block in blocks:
        if not block:
            continue
        if out:
            out.append("")
        out.extend(block)
    return out


def _prefix(lines: list[str], first: str, rest: str) -> list[str]:
    out = []
    for index, text in enumerate(lines):
        lead = first if index == 0 else rest
        out.append((lead + text) if text else lead.rstrip())
    return out


def problems_section(problems: Sequence[Problem]) -> list[str]:
    if not problems:
        return []
    lines = ["## Problems", "", "Skipped or replaced while reading the document:", ""]
    for problem in problems:
        where = code_span(problem.path) if problem.path else "document"
        lines.append(f"- {where}: {line(shorten(problem.message, 300))}")
    return lines


def _finish(blocks: Iterable[list[str]]) -> bytes:
    text = "\n".join(_blank_separated(blocks)) + "\n"
    return text.encode("utf-8", "replace")


# --- rich text ------------------------------------------------------------------------------

_DELIMITERS = {"bold": "**", "italic": "*", "strike": "~~"}
_RENDERED = ("link", "bold", "italic", "strike")


@dataclass(slots=True)
class _Segment:
    text: str
    marks: tuple[Mark, ...]

    @property
    def code(self) -> bool:
        return any(m.type == "code" for m in self.marks)

    def delimiters(self) -> set[str]:
        return {m.type for m in self.marks if m.type in _DELIMITERS}


def _renderable(marks: Iterable[Mark]) -> tuple[Mark, ...]:
    out = []
    for mark in marks:
        if mark.type == "link":
            href = safe_href(mark.href or "")
            if href is not None:
                out.append(Mark("link", {"href": href}))
        elif mark.type in _DELIMITERS or mark.type == "code":
            out.append(Mark(mark.type))
    return tuple(out)


def _segments(items: Iterable[Node | TextRun]) -> list[list[_Segment]]:
    """Inline content as lines (split at hard breaks) of marked segments."""
    lines: list[list[_Segment]] = [[]]
    for item in items:
        if isinstance(item, TextRun):
            parts = clean(item.text).split("\n")
            for index, part in enumerate(parts):
                if index:
                    lines.append([])
                if part:
                    lines[-1].append(_Segment(part, _renderable(item.marks)))
        elif item.type == "hardBreak":
            lines.append([])
        else:
            text = one_line(plain_text(item))
            if text:
                lines[-1].append(_Segment(text, ()))
    return lines


def _merge(segments: list[_Segment]) -> list[_Segment]:
    out: list[_Segment] = []
    for seg in segments:
        if not seg.text:
            continue
        if out and out[-1].marks == seg.marks and not seg.code:
            out[-1] = _Segment(out[-1].text + seg.text, seg.marks)
        else:
            out.append(seg)
    return out


def _wordlike(char: str | None) -> bool:
    return char is not None and not char.isspace() and not is_punctuation(char)


def _flank(segments: list[_Segment]) -> list[_Segment]:
    """Move blanks, and punctuation next to letters, out of emphasis so that every `*`, `**`
    and `~~` delimiter can open and close (CommonMark's flanking rules; this matters for
    Chinese text such as **注意：**请...)."""
    out: list[_Segment] = []
    for index, seg in enumerate(segments):
        delims = seg.delimiters()
        if not delims:
            out.append(seg)
            continue
        before = segments[index - 1] if index else None
        after = segments[index + 1] if index + 1 < len(segments) else None
        opening = delims - (before.delimiters() if before else set())
        closing = delims - (after.delimiters() if after else set())
        prev_char = before.text[-1] if before and before.text else None
        next_char = after.text[0] if after and after.text else None
        marks = seg.marks
        if seg.code:
            drop = set()
            if opening and _wordlike(prev_char):
                drop |= opening
            if closing and _wordlike(next_char):
                drop |= closing
            out.append(_Segment(seg.text, tuple(m for m in marks if m.type not in drop)))
            continue
        text = seg.text
        lead = trail = ""
        if opening:
            core = text.lstrip()
            lead, text = text[: len(text) - len(core)], core
            if not lead and _wordlike(prev_char):
                n = 0
                while n < len(text) and is_punctuation(text[n]):
                    n += 1
                lead, text = text[:n], text[n:]
        if closing:
            core = text.rstrip()
            trail, text = text[len(core) :], core
            if not trail and _wordlike(next_char):
                n = len(text)
                while n > 0 and is_punctuation(text[n - 1]):
                    n -= 1
                trail, text = text[n:], text[:n]
        if lead:
            out.append(_Segment(lead, tuple(m for m in marks if m.type not in opening)))
        if text:
            out.append(_Segment(text, marks))
        if trail:
            out.append(_Segment(trail, tuple(m for m in marks if m.type not in closing)))
    return _merge(out)


def _open(mark: Mark) -> str:
    return "[" if mark.type == "link" else _DELIMITERS[mark.type]


def _close(mark: Mark) -> str:
    if mark.type == "link":
        return f"]({_url(mark.href or '')})"
    return _DELIMITERS[mark.type]


def _line_markdown(segments: list[_Segment]) -> str:
    out: list[str] = []
    stack: list[Mark] = []
    for seg in _flank(_merge(segments)):
        target = [m for m in seg.marks if m.type in _RENDERED]
        keep = 0
        while keep < len(stack) and keep < len(target) and stack[keep] == target[keep]:
            keep += 1
        while len(stack) > keep:
            out.append(_close(stack.pop()))
        for mark in target[keep:]:
            out.append(_open(mark))
            stack.append(mark)
        if seg.code:
            out.append(code_span(seg.text))
        else:
            out.append(escape(seg.text, line_start=not out))
    while stack:
        out.append(_close(stack.pop()))
    return "".join(out)


def inline(items: Iterable[Node | TextRun], *, breaks: str = "\\\n") -> str:
    """Inline content as Markdown; hard breaks become `breaks`."""
    rendered = [_line_markdown(segs) for segs in _segments(items)]
    while rendered and not rendered[-1]:
        rendered.pop()
    return breaks.join(rendered)


def _is_inline(item: Node | TextRun) -> bool:
    if isinstance(item, TextRun):
        return True
    spec = KNOWN_NODES.get(item.type)
    return spec is not None and spec.group == "inline"


def _container(content: Sequence[Node | TextRun], *, tight: bool = False) -> list[str]:
    """Block content; stray inline content is grouped into paragraphs. In a `tight` container
    (a list item) a list right after a paragraph follows it without a blank line."""
    blocks: list[tuple[str, list[str]]] = []
    run: list[Node | TextRun] = []
    alternate = False
    for item in content:
        if _is_inline(item):
            run.append(item)
            continue
        if run:
            blocks.append(("paragraph", inline(run).split("\n")))
            run = []
        assert isinstance(item, Node)
        if item.type in _LISTS:
            # Two lists of one family in a row would merge into one unless their markers differ.
            family = item.type == "orderedList"
            previous_kind = blocks[-1][0] if blocks else ""
            same = previous_kind in _LISTS and (previous_kind == "orderedList") == family
            alternate = not alternate if same else False
            blocks.append((item.type, _list_items(item, alternate=alternate)))
        else:
            blocks.append((item.type, _block(item)))
    if run:
        blocks.append(("paragraph", inline(run).split("\n")))
    out: list[str] = []
    previous = ""
    for kind, lines in blocks:
        if not lines:
            continue
        if out and not (tight and previous == "paragraph" and kind in _LISTS):
            out.append("")
        out.extend(lines)
        previous = kind
    return out


_LISTS = ("bulletList", "orderedList", "taskList")


def _list_items(node: Node, *, alternate: bool = False) -> list[str]:
    out: list[str] = []
    number = node.start
    bullet, delimiter = ("*", ")") if alternate else ("-", ".")
    for item in node.content:
        if isinstance(item, Node) and item.type in ("listItem", "taskItem"):
            body = _container(item.content, tight=True)
        else:
            body = _container((item,), tight=True)
        if node.type == "orderedList":
            marker = f"{number}{delimiter} "
            number += 1
        elif node.type == "taskList":
            checked = isinstance(item, Node) and item.checked
            marker = f"{bullet} [x] " if checked else f"{bullet} [ ] "
        else:
            marker = f"{bullet} "
        indent = " " * (len(marker) if node.type != "taskList" else 2)
        out.extend(_prefix(body or [""], marker, indent))
    return out


def _table(node: Node) -> list[str]:
    rows: list[list[str]] = []
    for row in node.content:
        cells = row.content if isinstance(row, Node) and row.type == "tableRow" else (row,)
        texts = []
        for cell in cells:
            content = cell.content if isinstance(cell, Node) else (cell,)
            parts = [
                inline(block.content, breaks="<br>")
                if isinstance(block, Node) and block.type in ("paragraph", "heading")
                else escape(one_line(plain_text(block)), line_start=False)
                for block in content
            ]
            # GFM splits cells at every unescaped pipe, even inside code spans.
            cell_text = "<br>".join(p for p in parts if p)
            texts.append(re.sub(r"(?<!\\)\|", r"\\|", cell_text))
        rows.append(texts)
    if not rows:
        return []
    width = max(1, max(len(r) for r in rows))
    lines = []
    for index, texts in enumerate(rows):
        padded = texts + [""] * (width - len(texts))
        lines.append("| " + " | ".join(c or " " for c in padded) + " |")
        if index == 0:
            lines.append("|" + "|".join([" --- "] * width) + "|")
    return lines


def _code_block(node: Node) -> list[str]:
    text = clean("".join(c.text for c in node.content if isinstance(c, TextRun)))
    longest = max((len(m) for m in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * (longest + 1)
    language = node.attrs.get("language")
    info = re.sub(r"[^A-Za-z0-9_+.#-]", "", language)[:32] if isinstance(language, str) else ""
    return [fence + info, *(text.split("\n") if text else []), fence]


def _block(node: Node) -> list[str]:
    kind = node.type
    if kind == "paragraph":
        return inline(node.content).split("\n")
    if kind == "heading":
        text = inline(node.content, breaks=" ")
        return [("#" * node.level + " " + text).rstrip()]
    if kind in ("bulletList", "orderedList", "taskList"):
        return _list_items(node)
    if kind == "blockquote":
        return _prefix(_container(node.content) or [""], "> ", "> ")
    if kind == "codeBlock":
        return _code_block(node)
    if kind == "horizontalRule":
        return ["---"]
    if kind == "table":
        return _table(node)
    if kind == "image":
        alt = node.attrs.get("alt")
        alt_text = escape(one_line(alt), line_start=False) if isinstance(alt, str) else ""
        src = node.attrs.get("src")
        href = safe_href(src) if isinstance(src, str) else None
        if href is None:
            return [alt_text] if alt_text else []
        return [f"![{alt_text}]({_url(href)})"]
    if kind == "hardBreak":
        return []
    return _container(node.content)


def richtext(content: Node) -> list[str]:
    """A "doc" node as Markdown lines."""
    return _container(content.content)


# --- the three kinds ------------------------------------------------------------------------


def _meta_list(pairs: Iterable[tuple[str, str | None]]) -> list[str]:
    return [f"- **{label}:** {value}" for label, value in pairs if value]


def _task(task: Task) -> list[str]:
    title = line(task.title) if task.title.strip() else "*(untitled)*"
    due = display_time(task.due) if task.due else "none"
    facts: list[tuple[str, str | None]] = [
        ("Owner", line(task.assignee) if task.assignee else "*unassigned*"),
        ("Due", escape(due)),
        ("Priority", line(priority_label(task.priority))),
        ("Department", line(task.department) if task.department else None),
        ("Tags", ", ".join(line(t) for t in task.tags) if task.tags else None),
        ("Watchers", ", ".join(line(w) for w in task.watchers) if task.watchers else None),
    ]
    blocks = [[f"### {title}"], _meta_list(facts)]
    if task.description.strip():
        blocks.append(paragraphs(task.description))
    if task.subtasks:
        done = task.subtasks_done
        checklist = [f"Subtasks ({done}/{len(task.subtasks)} done):", ""]
        for sub in task.subtasks:
            box = "[x]" if sub.done else "[ ]"
            checklist.append(f"- {box} {line(sub.title) if sub.title.strip() else '*(untitled)*'}")
        blocks.append(checklist)
    return _blank_separated(blocks)


LINK_NOTE = "Download links are relative to the Tandem server that stores the files."


def attachments_section(model: Board, attachments: Sequence[Attachment]) -> list[str]:
    """The files attached to the board and its tasks, each a link to its bytes."""
    if not attachments:
        return []
    titles = {task.id: task.title for task in model.tasks}
    lines = ["## Attachments", "", LINK_NOTE, ""]
    for attachment in attachments:
        name = escape(one_line(attachment.name), line_start=False) or "(unnamed)"
        parts = [
            f"[{name}]({_url(attachment.link)})",
            f"version {attachment.version}",
            human_size(attachment.size),
        ]
        if attachment.task_id is not None:
            title = titles.get(attachment.task_id)
            if title is None:
                parts.append(f"task {code_span(attachment.task_id) or '(blank id)'}")
            else:
                parts.append(f"task: {line(title) if title.strip() else '*(untitled)*'}")
        lines.append("- " + " · ".join(parts))
    return lines


def board(
    model: Board, problems: Sequence[Problem], *, attachments: Sequence[Attachment] = ()
) -> bytes:
    title = line(model.meta.title) if model.meta.title.strip() else "Board"
    counts = {status: len(model.column(status)) for status in STATUSES}
    unassigned = sum(1 for t in model.tasks if not t.assignee)
    summary = ", ".join(f"{line(status_label(s))} {counts[s]}" for s in STATUSES)
    facts: list[tuple[str, str | None]] = [
        ("Department", line(model.meta.department) if model.meta.department else None),
        ("Project", line(model.meta.project) if model.meta.project else None),
        ("Tasks", f"{len(model.tasks)} ({summary}); unassigned {unassigned}"),
    ]
    blocks: list[list[str]] = [[f"# {title}"], _meta_list(facts)]
    for status in STATUSES:
        tasks = model.column(status)
        blocks.append([f"## {line(status_label(status))} ({len(tasks)})"])
        if not tasks:
            blocks.append(["*No tasks.*"])
        for task in tasks:
            blocks.append(_task(task))
    blocks.append(attachments_section(model, attachments))
    blocks.append(problems_section(problems))
    return _finish(blocks)


def document(model: TextDocument, problems: Sequence[Problem]) -> bytes:
    meta = model.meta
    title = line(meta.title) if meta.title.strip() else "Document"
    facts: list[tuple[str, str | None]] = [
        ("Department", line(meta.department) if meta.department else None),
        ("Tags", ", ".join(line(t) for t in meta.tags) if meta.tags else None),
    ]
    blocks: list[list[str]] = [[f"# {title}"], _meta_list(facts)]
    if meta.notes and meta.notes.strip():
        blocks.append(_prefix(paragraphs(meta.notes), "> ", "> "))
    if meta.department or meta.tags or (meta.notes and meta.notes.strip()):
        blocks.append(["---"])
    blocks.append(richtext(model.content))
    blocks.append(problems_section(problems))
    return _finish(blocks)


MAX_INDENT = 6
"""Reply levels shown by indentation; deeper replies stay at this level."""


def discussion(model: Discussion, problems: Sequence[Problem]) -> bytes:
    meta = model.meta
    title = line(meta.title) if meta.title.strip() else "Discussion"
    facts: list[tuple[str, str | None]] = [
        ("Department", line(meta.department) if meta.department else None),
        ("Document", code_span(meta.subject_doc) if meta.subject_doc else None),
        ("Task", code_span(meta.subject_task) if meta.subject_task else None),
        ("Messages", str(len(model.messages))),
    ]
    blocks: list[list[str]] = [[f"# {title}"], _meta_list(facts)]
    for entry in thread(model):
        message = entry.message
        author = line(message.author) if message.author.strip() else "*(unknown)*"
        header = [f"**{author}**"]
        if message.created_at:
            header.append(escape(display_time(message.created_at), line_start=False))
        if message.reply_to is not None:
            if entry.parent is not None:
                parent = entry.parent.author.strip() or "(unknown)"
                header.append(f"in reply to {line(parent)}")
            else:
                header.append("in reply to a message that is not here")
        if message.edited_at and not message.deleted:
            edited = escape(display_time(message.edited_at), line_start=False)
            header.append(f"edited {edited}")
        body: list[list[str]] = [[" · ".join(header)]]
        if message.deleted:
            body.append(["*\\[deleted\\]*"])
        else:
            if message.anchor is not None:
                quote = message.anchor.quote
                if quote and quote.strip():
                    body.append([f"On “{line(shorten(quote, 200))}”:"])
                else:
                    body.append(["On a passage of the document:"])
            if message.mentions:
                body.append(["Mentions: " + ", ".join("@" + line(m) for m in message.mentions)])
            body.append(paragraphs(message.body) or ["*(empty)*"])
        lines = _blank_separated(body)
        depth = min(entry.depth, MAX_INDENT)
        if depth:
            lines = _prefix(lines, "> " * depth, "> " * depth)
        blocks.append(lines)
    if not model.messages:
        blocks.append(["*No messages.*"])
    blocks.append(problems_section(problems))
    return _finish(blocks)
