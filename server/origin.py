"""Origin: where an update came from. Stored with each row of the update log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Origin:
    source: Literal["ws", "rest", "remote"]
    author: str | None = None
