"""Users who sign in through the company's identity provider are created on first sign-in.

The provider's token names the user (the configured claim), and usually their display name,
e-mail address and department. An unknown user gets a row: a member, without a password (they
sign in only through the provider), in the named department when one of that name exists. A
known user is left as the admins set them: the provider's claims do not change roles or
departments afterwards. Known names are remembered, so this costs a query only the first time
a name is seen by this process.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.persistence import users

log = logging.getLogger("tandem.auth")

MAX_REMEMBERED = 100_000


class Provisioner:
    def __init__(self, engine: AsyncEngine, user_claim: str) -> None:
        self.engine = engine
        self.user_claim = user_claim
        self._known: set[str] = set()

    async def __call__(self, claims: dict[str, Any]) -> None:
        name = claims.get(self.user_claim)
        if not isinstance(name, str) or name in self._known:
            return
        try:
            async with self.engine.begin() as conn:
                if await users.get_user(conn, name) is None:
                    await self._create(conn, name, claims)
        except IntegrityError:
            # Created meanwhile, or the e-mail address belongs to another user: the user
            # signs in all the same, as whatever the admins set.
            log.warning("identity provider user %s: not created (name or e-mail taken)", name)
            return
        if len(self._known) >= MAX_REMEMBERED:
            self._known.clear()
        self._known.add(name)


    async def _create(self, conn: AsyncConnection, name: str, claims: dict[str, Any]) -> None:
        department = _text(claims.get("department"))
        row = await users.get_department_by_name(conn, department) if department else None
        await users.create_user(
            conn,
            name,
            display_name=_text(claims.get("name")),
            email=_text(claims.get("email")),
            department_id=row.id if row is not None else None,
        )
        log.info("identity provider user %s created on first sign-in", name)


def _text(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()[:200]
    return None
