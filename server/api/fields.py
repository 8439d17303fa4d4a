"""Field types the API's request and response models share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints

from server.rooms.session import DOC_ID

MAX_TAGS = 50


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# What DOC_ID accepts, in words, for error messages.
DOC_ID_RULE = (
    "a document id is 1 to 128 letters, digits, '_', '.' or '-', starting with a "
    "letter, digit or '_'"
)


def _doc_id(value: str) -> str:
    if not DOC_ID.fullmatch(value):
        raise ValueError(DOC_ID_RULE)
    return value


def _tags(value: object) -> object:
    """Strip, drop empties and duplicates (first wins)."""
    if value is None:
        return []
    if not isinstance(value, list):
        return value  # the list validator reports it
    seen: list[object] = []
    for item in value:
        item = item.strip() if isinstance(item, str) else item
        if item != "" and item not in seen:
            seen.append(item)
    return seen


def _name(value: str) -> str:
    if any(ch in value for ch in "/\\") or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("a name may not contain '/', '\\' or control characters")
    if value in (".", ".."):
        raise ValueError("'.' and '..' are not names")
    return value


Timestamp = Annotated[datetime, AfterValidator(_utc)]
DocId = Annotated[str, AfterValidator(_doc_id)]
Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
Department = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
UserName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
Notes = Annotated[str, StringConstraints(max_length=20_000)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64)]
TagList = Annotated[list[Tag], BeforeValidator(_tags), Field(max_length=MAX_TAGS)]
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_name),
]
FileName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=255),
    AfterValidator(_name),
]
Reference = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Limit = Annotated[int, Field(ge=1, le=1000)]
Offset = Annotated[int, Field(ge=0)]
