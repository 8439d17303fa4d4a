"""Settings read from the environment."""

from __future__ import annotations

import pytest

from server.settings import Settings


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("sqlite:///./data/t.db", "sqlite+aiosqlite:///./data/t.db"),
        ("postgres://me@db:5432/tandem", "postgresql+asyncpg://me@db:5432/tandem"),
        ("postgresql://me@db/tandem", "postgresql+asyncpg://me@db/tandem"),
        ("postgresql+asyncpg://me@db/tandem", "postgresql+asyncpg://me@db/tandem"),
        ("sqlite+aiosqlite:////abs/t.db", "sqlite+aiosqlite:////abs/t.db"),
        ("memory://", "memory://"),
    ],
)
def test_database_urls_get_the_async_driver(
    monkeypatch: pytest.MonkeyPatch, given: str, used: str
) -> None:
    monkeypatch.setenv("TANDEM_DATABASE_URL", given)
    assert Settings().database_url == used
