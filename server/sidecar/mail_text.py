"""What a notification e-mail says: the composition half of server/sidecar/email.py.

This module holds no state and does no I/O. It turns notifications (`Item`) into text —
one line per notification (`describe`), the summary and link under it, the time in the
operator's zone — and into ready `EmailMessage`s: one per notification (`single_message`)
or one for a digest (`digest_message`). The sender (`EmailSender` in email.py) reads the
database, decides what goes out when, passes in what the messages need (sender address,
domain for Message-IDs, time zone, the current time) and sends them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# The sender's logger: a bad address is reported as the sender's trouble, as before the split.
log = logging.getLogger("tandem.sidecar.email")

TITLE_MAX = 120
SUMMARY_MAX = 2000


@dataclass(frozen=True, slots=True)
class Person:
    """Someone as mail shows them: their display name and their address."""

    display: str
    address: Address | None  # None: no usable address, or disabled


@dataclass(frozen=True, slots=True)
class Item:
    """A notification with what its event says."""

    id: int
    user_name: str
    kind: str
    doc_id: str
    created_at: datetime
    task_id: str | None
    message_id: str | None
    actor: str | None
    data: Mapping[str, Any]


def _one_line(value: str, limit: int) -> str:
    text = re.sub(r"\s+", " ", value).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _text(data: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    return None


def describe(item: Item, actor: str) -> str:
    """One line saying what happened, e.g. "王晓雯 assigned you 海报设计"."""
    data = item.data
    title = _one_line(_text(data, "title") or item.task_id or item.doc_id, TITLE_MAX)
    due = _text(data, "due")
    when = f" ({_one_line(due, 40)})" if due else ""
    match item.kind:
        case "assigned":
            return f"{actor} assigned you {title}"
        case "status_changed":
            status = _text(data, "to_status", "status")
            if status:
                return f"{actor} moved {title} to {_one_line(status, 40)}"
            return f"{actor} changed the status of {title}"
        case "message":
            return f"{actor} wrote in {title}"
        case "mentioned":
            return f"{actor} mentioned you in {title}"
        case "doc_changed":
            return f"{actor} edited {title}"
        case "file_changed":
            return f"{actor} uploaded a new version of {title}"
        case "due_soon":
            return f"{title} is due soon{when}"
        case "due_imminent":
            return f"{title} is due shortly{when}"
        case "overdue":
            return f"{title} is overdue{when}"
        case _:
            return f"{actor}: {item.kind} in {title}"


def mail_address(name: str, display: str, email: str | None) -> Address | None:
    """User `name`'s address for a To header, or None when they have none that works."""
    if not email:
        return None
    try:
        return Address(display_name=display, addr_spec=email)
    except (ValueError, IndexError, HeaderParseError):
        log.warning("user %s has an e-mail address that cannot be used: %r", name, email)
        return None


def display_name(people: Mapping[str, Person], name: str | None) -> str:
    """How mail names the actor `name` ("Someone" for none)."""
    if name is None:
        return "Someone"
    person = people.get(name)
    return person.display if person is not None else name


def time_zone(name: str) -> tzinfo:
    """The zone called `name` for times in mail; UTC if there is no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def _time(moment: datetime, zone: tzinfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M")


def _message(
    address: Address, subject: str, body: str, message_id: str, *, smtp_from: str, now: datetime
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = smtp_from
    message["To"] = address
    message["Subject"] = subject
    message["Date"] = format_datetime(now.astimezone(UTC))
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
    message.set_content(body, charset="utf-8")
    return message


def _details(item: Item, indent: str = "") -> list[str]:
    lines: list[str] = []
    summary = _text(item.data, "summary")
    if summary:
        summary = summary.strip()
        if len(summary) > SUMMARY_MAX:
            summary = summary[: SUMMARY_MAX - 1].rstrip() + "…"
        lines.extend(indent + line for line in summary.splitlines())
    url = _text(item.data, "url")
    if url:
        lines.append(indent + url.strip())
    return lines


def single_message(
    item: Item,
    address: Address,
    actor: str,
    *,
    smtp_from: str,
    domain: str,
    zone: tzinfo,
    now: datetime,
) -> EmailMessage:
    """The message for one notification, by `actor` (a display name), to `address`.

    `domain` ends the Message-ID, made from the notification id so a resent copy has the
    same one; times are shown in `zone`; `now` is the Date header."""
    line = describe(item, actor)
    body = [line, ""]
    details = _details(item)
    if details:
        body += [*details, ""]
    body += [
        "-- ",
        f"Tandem, {_time(item.created_at, zone)}. You get an e-mail for each notification; "
        "change that in your notification preferences.",
    ]
    return _message(
        address,
        f"[Tandem] {line}",
        "\n".join(body) + "\n",
        f"<tandem.n{item.id}@{domain}>",
        smtp_from=smtp_from,
        now=now,
    )


def digest_message(
    entries: Sequence[tuple[Item, str]],
    address: Address,
    *,
    smtp_from: str,
    domain: str,
    zone: tzinfo,
    now: datetime,
) -> EmailMessage:
    """One message listing `entries` (notification and its actor's display name, oldest
    first, at least one) to `address`; the other arguments as for `single_message`.

    The Message-ID is made from the first and last notification ids and the count."""
    first, last = entries[0][0], entries[-1][0]
    count = f"{len(entries)} notification{'s' if len(entries) != 1 else ''}"
    body = [f"{count} since {_time(first.created_at, zone)}:", ""]
    for item, actor in entries:
        body.append(f"- {_time(item.created_at, zone)}  {describe(item, actor)}")
        body += _details(item, indent="  ")
    body += [
        "",
        "-- ",
        "Tandem. You get a digest of your notifications at most once an hour; "
        "change that in your notification preferences.",
    ]
    return _message(
        address,
        f"[Tandem] {count}",
        "\n".join(body) + "\n",
        f"<tandem.digest.n{first.id}-n{last.id}.{len(entries)}@{domain}>",
        smtp_from=smtp_from,
        now=now,
    )
