"""Standalone, printable HTML exports.

A whole page (`<!doctype html>`, UTF-8, a small screen and print stylesheet, a Content Security
Policy that allows no script and no remote content). Every user string goes through
`html.escape`; links are kept only for http, https and mailto.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from html import escape as _escape

from server.export.common import (
    Attachment,
    clean,
    display_time,
    human_size,
    one_line,
    priority_label,
    safe_href,
    shorten,
    status_label,
)
from shared.board import Board, Task
from shared.discussion import Discussion, thread
from shared.documents import Problem
from shared.richtext import Node, TextDocument, TextRun, plain_text
from shared.schema import KNOWN_NODES, STATUSES

STYLE = """
:root { color-scheme: light; }
body { font: 15px/1.55 system-ui, -apple-system, "Segoe UI", "PingFang SC", "Hiragino Sans GB",
  "Microsoft YaHei", "Noto Sans CJK SC", sans-serif; color: #1a1a1a; max-width: 52rem;
  margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.7rem; margin: 0 0 .5rem; }
h2 { font-size: 1.3rem; margin: 1.6rem 0 .6rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.1rem; margin: 1rem 0 .4rem; }
.facts { color: #555; margin: 0 0 1rem; padding: 0; list-style: none; }
.facts li { display: inline; margin-right: 1.2rem; }
.facts dt, .task dt { font-weight: 600; }
.task { border: 1px solid #ddd; border-radius: 6px; padding: .6rem .9rem; margin: .6rem 0; }
.task dl { display: grid; grid-template-columns: max-content 1fr; gap: .1rem .8rem;
  margin: .3rem 0; }
.task dd { margin: 0; }
.priority-urgent { border-left: 4px solid #c62828; }
.priority-high { border-left: 4px solid #ef6c00; }
.unassigned { color: #c62828; font-style: italic; }
.tag { display: inline-block; background: #eef; border-radius: 3px; padding: 0 .35rem;
  margin: 0 .2rem .1rem 0; }
ul.checklist, ul.task-list { list-style: none; padding-left: .4rem; }
ul.checklist input, ul.task-list input { margin-right: .4rem; }
ul.task-list li { display: flex; align-items: baseline; }
li > p { margin: .15rem 0; }
blockquote { margin: .6rem 0; padding: 0 .9rem; border-left: 3px solid #ccc; color: #444; }
pre { background: #f5f5f5; padding: .6rem .8rem; overflow-x: auto; white-space: pre-wrap; }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: .92em; }
table { border-collapse: collapse; margin: .6rem 0; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; vertical-align: top; text-align: left; }
img { max-width: 100%; }
.message { margin: .8rem 0; padding: .2rem 0 .2rem .8rem; border-left: 3px solid #e0e0e0; }
.message header { color: #555; font-size: .92em; }
.message header strong { color: #1a1a1a; }
.depth-1 { margin-left: 1.5rem; } .depth-2 { margin-left: 3rem; } .depth-3 { margin-left: 4.5rem; }
.depth-4 { margin-left: 6rem; } .depth-5 { margin-left: 7.5rem; } .depth-6 { margin-left: 9rem; }
.deleted { color: #888; font-style: italic; }
.quote { color: #555; }
.empty { color: #888; font-style: italic; }
.problems { color: #7a4b00; background: #fff8e1; padding: .2rem 1rem .6rem; margin-top: 2rem; }
@media print {
  body { margin: 0; max-width: none; font-size: 10.5pt; color: #000; }
  a { color: inherit; text-decoration: underline; }
  a[href^="http"]::after { content: " (" attr(href) ")"; font-size: .85em; color: #555; }
  .task, .message, pre, blockquote, table, tr { break-inside: avoid; }
  h2, h3 { break-after: avoid; }
  .problems { background: none; border: 1px solid #999; }
}
""".strip()

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src http: https:"


def esc(text: str) -> str:
    """Escape user text for HTML (text or attribute value), after cleaning control characters."""
    return _escape(clean(text), quote=True)


def esc_line(text: str) -> str:
    return esc(one_line(text))


def text_block(text: str) -> str:
    """Multi-line user text: paragraphs at blank lines, <br> at single newlines."""
    out = []
    for para in re.split(r"\n[ \t]*\n", clean(text)):
        lines = [esc(ln) for ln in para.strip("\n").split("\n")]
        if any(ln.strip() for ln in lines):
            out.append("<p>" + "<br>\n".join(lines) + "</p>")
    return "\n".join(out)


def page(title: str, body: Iterable[str], *, kind: str) -> bytes:
    parts = [
        "<!doctype html>",
        "<html>",
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="Tandem export ({kind})">',
        f"<title>{esc_line(title)}</title>",
        f"<style>\n{STYLE}\n</style>",
        "</head>",
        f'<body class="{kind}">',
        *[b for b in body if b],
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts).encode("utf-8", "replace")


def problems_section(problems: Sequence[Problem]) -> str:
    if not problems:
        return ""
    items = []
    for problem in problems:
        where = f"<code>{esc(problem.path)}</code>" if problem.path else "document"
        items.append(f"<li>{where}: {esc_line(shorten(problem.message, 300))}</li>")
    return (
        '<section class="problems">\n<h2>Problems</h2>\n'
        "<p>Skipped or replaced while reading the document:</p>\n"
        "<ul>\n" + "\n".join(items) + "\n</ul>\n</section>"
    )


def _facts(pairs: Iterable[tuple[str, str | None]]) -> str:
    items = [f"<li><b>{label}:</b> {value}</li>" for label, value in pairs if value]
    return '<ul class="facts">' + "".join(items) + "</ul>" if items else ""


def _time(value: str) -> str:
    return f'<time datetime="{esc(value)}">{esc(display_time(value))}</time>'


# --- rich text ------------------------------------------------------------------------------

_TAGS = {"bold": "strong", "italic": "em", "strike": "s", "underline": "u", "code": "code"}
_TAG_ORDER = ("bold", "italic", "strike", "underline", "code")


def _run(run: TextRun) -> str:
    text = esc(run.text).replace("\n", "<br>\n")
    types = {m.type for m in run.marks}
    for name in reversed(_TAG_ORDER):
        if name in types:
            tag = _TAGS[name]
            text = f"<{tag}>{text}</{tag}>"
    return text


def _link_of(item: Node | TextRun) -> str | None:
    if isinstance(item, TextRun):
        for mark in item.marks:
            if mark.type == "link":
                return safe_href(mark.href or "")
    return None


def inline(items: Sequence[Node | TextRun]) -> str:
    out: list[str] = []
    index = 0
    while index < len(items):
        href = _link_of(items[index])
        if href is not None:
            group: list[TextRun] = []
            while index < len(items) and _link_of(items[index]) == href:
                item = items[index]
                assert isinstance(item, TextRun)
                group.append(item)
                index += 1
            inner = "".join(_run(r) for r in group)
            out.append(f'<a href="{esc(href)}" rel="noopener noreferrer nofollow">{inner}</a>')
            continue
        item = items[index]
        index += 1
        if isinstance(item, TextRun):
            out.append(_run(item))
        elif item.type == "hardBreak":
            out.append("<br>")
        else:
            out.append(esc(one_line(plain_text(item))))
    return "".join(out)


def _is_inline(item: Node | TextRun) -> bool:
    if isinstance(item, TextRun):
        return True
    spec = KNOWN_NODES.get(item.type)
    return spec is not None and spec.group == "inline"


def _container(content: Sequence[Node | TextRun]) -> str:
    out: list[str] = []
    run: list[Node | TextRun] = []
    for item in content:
        if _is_inline(item):
            run.append(item)
            continue
        if run:
            out.append(f"<p>{inline(run)}</p>")
            run = []
        assert isinstance(item, Node)
        out.append(_block(item))
    if run:
        out.append(f"<p>{inline(run)}</p>")
    return "\n".join(o for o in out if o)


def _cell_attrs(node: Node) -> str:
    attrs = ""
    for key in ("colspan", "rowspan"):
        value = node.attrs.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 1 < value <= 1000:
            attrs += f' {key}="{value}"'
    return attrs


def _block(node: Node) -> str:
    kind = node.type
    if kind == "paragraph":
        return f"<p>{inline(node.content)}</p>"
    if kind == "heading":
        return f"<h{node.level}>{inline(node.content)}</h{node.level}>"
    if kind in ("bulletList", "orderedList"):
        tag = "ol" if kind == "orderedList" else "ul"
        start = f' start="{node.start}"' if kind == "orderedList" and node.start != 1 else ""
        items = []
        for item in node.content:
            content = (
                item.content if isinstance(item, Node) and item.type == "listItem" else (item,)
            )
            items.append(f"<li>{_container(content)}</li>")
        return f"<{tag}{start}>\n" + "\n".join(items) + f"\n</{tag}>"
    if kind == "taskList":
        items = []
        for item in node.content:
            is_item = isinstance(item, Node) and item.type == "taskItem"
            checked = isinstance(item, Node) and item.checked
            content = item.content if is_item and isinstance(item, Node) else (item,)
            box = '<input type="checkbox" disabled' + (" checked" if checked else "") + ">"
            items.append(f"<li>{box}{_container(content)}</li>")
        return '<ul class="task-list">\n' + "\n".join(items) + "\n</ul>"
    if kind == "blockquote":
        return f"<blockquote>\n{_container(node.content)}\n</blockquote>"
    if kind == "codeBlock":
        text = "".join(c.text for c in node.content if isinstance(c, TextRun))
        language = node.attrs.get("language")
        cls = ""
        if isinstance(language, str) and language.strip():
            cls = f' class="language-{esc(one_line(language)[:32])}"'
        return f"<pre><code{cls}>{esc(text)}</code></pre>"
    if kind == "horizontalRule":
        return "<hr>"
    if kind == "table":
        rows = []
        for row in node.content:
            cells = row.content if isinstance(row, Node) and row.type == "tableRow" else (row,)
            html_cells = []
            for cell in cells:
                tag = "th" if isinstance(cell, Node) and cell.type == "tableHeader" else "td"
                attrs = _cell_attrs(cell) if isinstance(cell, Node) else ""
                content = cell.content if isinstance(cell, Node) else (cell,)
                html_cells.append(f"<{tag}{attrs}>{_container(content)}</{tag}>")
            rows.append("<tr>" + "".join(html_cells) + "</tr>")
        return "<table>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"
    if kind == "image":
        alt = node.attrs.get("alt")
        alt_text = esc_line(alt) if isinstance(alt, str) else ""
        src = node.attrs.get("src")
        href = safe_href(src) if isinstance(src, str) else None
        if href is None:
            return f"<p>{alt_text}</p>" if alt_text else ""
        return f'<figure><img src="{esc(href)}" alt="{alt_text}"></figure>'
    if kind == "hardBreak":
        return ""
    return _container(node.content)


def richtext(content: Node) -> str:
    return _container(content.content)


# --- the three kinds ------------------------------------------------------------------------


def _task(task: Task) -> str:
    title = esc_line(task.title) if task.title.strip() else '<span class="empty">(untitled)</span>'
    owner = (
        esc_line(task.assignee) if task.assignee else '<span class="unassigned">unassigned</span>'
    )
    due = _time(task.due) if task.due else '<span class="empty">none</span>'
    rows: list[tuple[str, str]] = [
        ("Owner", owner),
        ("Due", due),
        ("Priority", esc(priority_label(task.priority))),
    ]
    if task.department:
        rows.append(("Department", esc_line(task.department)))
    if task.tags:
        rows.append(
            ("Tags", " ".join(f'<span class="tag">{esc_line(t)}</span>' for t in task.tags))
        )
    if task.watchers:
        rows.append(("Watchers", ", ".join(esc_line(w) for w in task.watchers)))
    parts = [
        f'<article class="task priority-{task.priority}" id="task-{esc(task.id)}">',
        f"<h3>{title}</h3>",
        "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>",
    ]
    if task.description.strip():
        parts.append(f'<div class="description">{text_block(task.description)}</div>')
    if task.subtasks:
        items = []
        for sub in task.subtasks:
            box = '<input type="checkbox" disabled' + (" checked" if sub.done else "") + ">"
            title_html = esc_line(sub.title) if sub.title.strip() else "(untitled)"
            items.append(f"<li>{box}{title_html}</li>")
        parts.append(
            f"<p>Subtasks ({task.subtasks_done}/{len(task.subtasks)} done):</p>"
            '<ul class="checklist">' + "".join(items) + "</ul>"
        )
    parts.append("</article>")
    return "\n".join(parts)


LINK_NOTE = "Download links are relative to the Tandem server that stores the files."


def attachments_section(model: Board, attachments: Sequence[Attachment]) -> str:
    """The files attached to the board and its tasks, each a link to its bytes. The links are
    relative (same-server navigations), which the page's policy allows: CSP does not govern
    following a link."""
    if not attachments:
        return ""
    titles = {task.id: task.title for task in model.tasks}
    items = []
    for attachment in attachments:
        name = esc_line(attachment.name) or "(unnamed)"
        parts = [
            f'<a href="{esc(attachment.link)}" rel="noopener noreferrer nofollow">{name}</a>',
            f"version {attachment.version}",
            esc(human_size(attachment.size)),
        ]
        task_id = attachment.task_id
        if task_id is not None:
            title = titles.get(task_id)
            if title is None:
                parts.append(f"task <code>{esc_line(task_id)}</code>")
            else:
                shown = esc_line(title) if title.strip() else "(untitled)"
                parts.append(f'task: <a href="#task-{esc(task_id)}">{shown}</a>')
        items.append("<li>" + " · ".join(parts) + "</li>")
    return (
        '<section class="attachments" id="attachments">\n<h2>Attachments</h2>\n'
        f"<p>{LINK_NOTE}</p>\n<ul>\n" + "\n".join(items) + "\n</ul>\n</section>"
    )


def board(
    model: Board, problems: Sequence[Problem], *, attachments: Sequence[Attachment] = ()
) -> bytes:
    title = model.meta.title if model.meta.title.strip() else "Board"
    counts = ", ".join(f"{esc(status_label(s))} {len(model.column(s))}" for s in STATUSES)
    unassigned = sum(1 for t in model.tasks if not t.assignee)
    facts: list[tuple[str, str | None]] = [
        ("Department", esc_line(model.meta.department) if model.meta.department else None),
        ("Project", esc_line(model.meta.project) if model.meta.project else None),
        ("Tasks", f"{len(model.tasks)} ({counts}); unassigned {unassigned}"),
    ]
    body = ["<header>", f"<h1>{esc_line(title)}</h1>", _facts(facts), "</header>"]
    for status in STATUSES:
        tasks = model.column(status)
        body.append(f'<section class="column" id="status-{status}">')
        body.append(f"<h2>{esc(status_label(status))} ({len(tasks)})</h2>")
        if not tasks:
            body.append('<p class="empty">No tasks.</p>')
        body.extend(_task(task) for task in tasks)
        body.append("</section>")
    body.append(attachments_section(model, attachments))
    body.append(problems_section(problems))
    return page(title, body, kind="board")


def document(model: TextDocument, problems: Sequence[Problem]) -> bytes:
    meta = model.meta
    title = meta.title if meta.title.strip() else "Document"
    tags = " ".join(f'<span class="tag">{esc_line(t)}</span>' for t in meta.tags)
    facts: list[tuple[str, str | None]] = [
        ("Department", esc_line(meta.department) if meta.department else None),
        ("Tags", tags or None),
    ]
    body = ["<header>", f"<h1>{esc_line(title)}</h1>", _facts(facts)]
    if meta.notes and meta.notes.strip():
        body.append(f'<div class="notes">{text_block(meta.notes)}</div>')
    body.append("</header>")
    body.append("<main>\n" + richtext(model.content) + "\n</main>")
    body.append(problems_section(problems))
    return page(title, body, kind="doc")


MAX_INDENT = 6


def discussion(model: Discussion, problems: Sequence[Problem]) -> bytes:
    meta = model.meta
    title = meta.title if meta.title.strip() else "Discussion"
    facts: list[tuple[str, str | None]] = [
        ("Department", esc_line(meta.department) if meta.department else None),
        ("Document", f"<code>{esc_line(meta.subject_doc)}</code>" if meta.subject_doc else None),
        ("Task", f"<code>{esc_line(meta.subject_task)}</code>" if meta.subject_task else None),
        ("Messages", str(len(model.messages))),
    ]
    body = ["<header>", f"<h1>{esc_line(title)}</h1>", _facts(facts), "</header>", "<main>"]
    for entry in thread(model):
        message = entry.message
        author = esc_line(message.author) if message.author.strip() else "(unknown)"
        header = [f"<strong>{author}</strong>"]
        if message.created_at:
            header.append(_time(message.created_at))
        if message.reply_to is not None:
            if entry.parent is not None:
                parent = entry.parent.author.strip() or "(unknown)"
                target = f'<a href="#m-{esc(entry.parent.id)}">{esc_line(parent)}</a>'
                header.append(f"in reply to {target}")
            else:
                header.append("in reply to a message that is not here")
        if message.edited_at and not message.deleted:
            header.append(f"edited {_time(message.edited_at)}")
        depth = min(entry.depth, MAX_INDENT)
        classes = f"message depth-{depth}" + (" deleted" if message.deleted else "")
        parts = [
            f'<article class="{classes}" id="m-{esc(message.id)}">',
            "<header>" + " · ".join(header) + "</header>",
        ]
        if message.deleted:
            parts.append("<p>[deleted]</p>")
        else:
            if message.anchor is not None:
                quote = message.anchor.quote
                if quote and quote.strip():
                    parts.append(f'<p class="quote">On “{esc_line(shorten(quote, 200))}”:</p>')
                else:
                    parts.append('<p class="quote">On a passage of the document:</p>')
            if message.mentions:
                mentions = ", ".join("@" + esc_line(m) for m in message.mentions)
                parts.append(f'<p class="mentions">Mentions: {mentions}</p>')
            parts.append(text_block(message.body) or '<p class="empty">(empty)</p>')
        parts.append("</article>")
        body.append("\n".join(parts))
    if not model.messages:
        body.append('<p class="empty">No messages.</p>')
    body.append("</main>")
    body.append(problems_section(problems))
    return page(title, body, kind="discussion")
