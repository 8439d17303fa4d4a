"""What the exporters share: cleaning user text, link policy, time and label display, and
the files attached to a document."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from shared.documents import Problem, parse_timestamp
from shared.richtext import Node, TextRun, iter_nodes
from shared.schema import PRIORITY_LABELS, STATUS_LABELS

SAFE_SCHEMES = frozenset({"http", "https", "mailto"})
"""Link schemes kept as links; any other href is rendered as plain text."""

# C0 and C1 controls (except tab and newline), DEL, bidirectional embeddings, overrides and
# isolates (they can make exported text read differently from what it is), non-characters,
# lone surrogates.
_UNSAFE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
    "\ufdd0-\ufdef\ufffe\uffff\ud800-\udfff]"
)
_NEWLINES = re.compile("\r\n|[\r\u2028\u2029\x85]")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


def clean(text: str) -> str:
    """Normalise newlines to \\n and replace control characters with U+FFFD."""
    return _UNSAFE.sub("\ufffd", _NEWLINES.sub("\n", text))


def one_line(text: str) -> str:
    """`clean`, with every newline and tab turned into a space (for titles, names, tags)."""
    return " ".join(clean(text).replace("\t", " ").split("\n")).strip()


def shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def safe_href(href: str) -> str | None:
    """`href` when it is an absolute http, https or mailto URL, else None.

    Browsers ignore tabs and newlines inside a URL and leading spaces and controls, so
    "java\\nscript:" is checked as "javascript:"; such characters make the href unsafe.
    """
    if not isinstance(href, str) or len(href) > 8192:
        return None
    stripped = href.strip(" \t\n\r\f\v\x00")
    if any(ord(c) < 0x20 or c == "\x7f" for c in stripped):
        return None
    match = _SCHEME.match(stripped)
    if match is None or match.group(1).lower() not in SAFE_SCHEMES:
        return None
    return stripped


def link_problems(content: Node) -> list[Problem]:
    """One problem per link whose href is not kept (it is rendered as plain text)."""
    problems: list[Problem] = []
    for item in iter_nodes(content):
        if isinstance(item, TextRun):
            for mark in item.marks:
                href = mark.href
                if mark.type == "link" and href is not None and safe_href(href) is None:
                    shown = shorten(one_line(href), 60)
                    problems.append(
                        Problem("/default", f"link to {shown!r} rendered as text (not http/https)")
                    )
        elif item.type == "image":
            src = item.attrs.get("src")
            if isinstance(src, str) and safe_href(src) is None:
                problems.append(
                    Problem("/default", f"image {shorten(one_line(src), 60)!r} not http/https")
                )
    return problems


def is_punctuation(char: str) -> bool:
    """CommonMark's Unicode punctuation: general categories P* and S*."""
    return unicodedata.category(char)[0] in "PS"


def display_time(value: str | None) -> str:
    """A timestamp for people: "2025-11-11", "2025-11-11 20:00 +08:00", "2025-11-11 12:00 UTC"."""
    if value is None:
        return ""
    try:
        parsed = parse_timestamp(value)
    except ValueError:
        return one_line(value)
    if not isinstance(parsed, datetime):
        return parsed.isoformat()
    text = parsed.strftime("%Y-%m-%d %H:%M")
    if parsed.second or parsed.microsecond:
        text += parsed.strftime(":%S")
    offset = parsed.utcoffset()
    if offset is None:
        return text
    if offset == timedelta(0):
        return text + " UTC"
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{text} {sign}{minutes // 60:02d}:{minutes % 60:02d}"


def is_date_only(value: str) -> bool:
    try:
        parsed = parse_timestamp(value)
    except ValueError:
        return False
    return isinstance(parsed, date) and not isinstance(parsed, datetime)


def status_label(status: str) -> str:
    labels = STATUS_LABELS.get(status, {})
    en, zh = labels.get("en", status), labels.get("zh")
    return f"{en} · {zh}" if zh else en


def priority_label(priority: str) -> str:
    labels = PRIORITY_LABELS.get(priority, {})
    en, zh = labels.get("en", priority), labels.get("zh")
    return f"{en} · {zh}" if zh else en


# --- attachments ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attachment:
    """One file version attached to the exported document (to one of its tasks when `task_id`
    is set). The exports are pure functions of the document, so the caller reads these from
    the `files` table and passes them in."""

    file_id: int
    name: str
    version: int
    size: int
    content_type: str
    task_id: str | None = None
    uploaded_by: str | None = None
    uploaded_at: str | None = None

    @property
    def link(self) -> str:
        """Where the Tandem server serves this version's bytes: a link relative to the
        server's address (an export saved to disk resolves it against that server)."""
        return content_link(self.file_id)


def content_link(file_id: int) -> str:
    return f"/api/files/{file_id}/content"


def attachment_from_row(row: Any) -> Attachment:
    """An `Attachment` from a row of the `files` table."""
    uploaded_at = row.uploaded_at
    uploaded: str | None = None
    if isinstance(uploaded_at, datetime):
        # SQLite hands back naive datetimes; every stored time is UTC.
        if uploaded_at.tzinfo is None:
            uploaded_at = uploaded_at.replace(tzinfo=UTC)
        uploaded = uploaded_at.isoformat()
    elif uploaded_at is not None:
        uploaded = str(uploaded_at)
    return Attachment(
        file_id=int(row.id),
        name=str(row.name),
        version=int(row.version),
        size=int(row.size),
        content_type=str(row.content_type),
        task_id=row.attached_task,
        uploaded_by=row.uploaded_by,
        uploaded_at=uploaded,
    )


def human_size(size: int) -> str:
    """A byte count for people: "512 bytes", "1 byte", "1.5 KiB", "20 MiB"."""
    if size < 1024:
        return "1 byte" if size == 1 else f"{size} bytes"
    units = ("KiB", "MiB", "GiB", "TiB")
    value, index = size / 1024, 0
    # Rounded to one decimal, 1023.97 would read "1024.0 KiB": move up a unit first.
    while round(value, 1) >= 1024 and index < len(units) - 1:
        value, index = value / 1024, index + 1
    return f"{value:.1f}".removesuffix(".0") + " " + units[index]
