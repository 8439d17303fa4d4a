"""/api/auth: signing in with a password and out again; /api/me: who the caller is.

Sign-in issues Tandem's own tokens, so it needs TANDEM_SECRET. Without one (and without an
identity provider) there is no sign-in at all: every connection is the local user with full
access, users in the table or not, and POST /api/auth/login answers 503 saying what to set.
That keeps a single-user installation working unchanged; `tandem serve` logs at start-up
which of the two it is (`log_sign_in_status`).

A failed sign-in answers the same 401 whatever went wrong (no such user, wrong password,
disabled user, a user without a password), after the same work: an unknown user's password
is checked against a dummy hash, so neither the answer nor its timing says whether an
account exists. Failures are counted per account and per client address
(`login_attempts_per_minute`); past the limit the answer is 429 with Retry-After, even for
the right password.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import jwt
from pydantic import BaseModel, ConfigDict, StringConstraints
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server import passwords
from server.access_events import AccessChange
from server.api import state
from server.api.caller import principal
from server.api.describe import json_body, operation
from server.api.errors import ApiError, parse_body
from server.auth import LOCAL_USER, issue_token
from server.limits import SlidingWindow
from server.persistence import users as accounts
from server.settings import Settings
from server.signin import Authenticator

log = logging.getLogger("tandem.auth")

WRONG_USER_OR_PASSWORD = "wrong user or password"
SECRET_NEEDED = "sign-in needs TANDEM_SECRET"
TOO_MANY = "too many failed sign-ins; try again later"
LOGIN_WINDOW_SECONDS = 60.0

# The caller when there is no sign-in: the one local user, who may do everything.
LOCAL_USER_JSON: dict[str, Any] = {
    "id": LOCAL_USER,
    "name": LOCAL_USER,
    "email": None,
    "department": None,
    "role": "admin",
    "active": True,
}


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=254)]
    password: Annotated[
        str, StringConstraints(min_length=1, max_length=passwords.MAX_PASSWORD_CHARS)
    ]


class User(BaseModel):
    """A user as the API shows it: `id` is what tokens carry, `name` the display name."""

    id: str
    name: str
    email: str | None
    department: str | None
    role: str
    active: bool


class LoginResult(BaseModel):
    token: str
    expires_at: datetime | None  # None: the token never expires (token_ttl_seconds 0)
    user: User


current_caller = principal


def sign_in_off(request: Request) -> bool:
    """No sign-in is configured: every caller is the local user with full access."""
    auth: Authenticator = request.state.auth
    return auth.open


def _limits(request: Request) -> SlidingWindow:
    """The failed-sign-in window of this server (one per application)."""
    app_state = request.app.state
    window: SlidingWindow | None = getattr(app_state, "login_failures", None)
    if window is None:
        limit = state.settings(request).login_attempts_per_minute
        window = SlidingWindow(limit, LOGIN_WINDOW_SECONDS, name="sign-in")
        app_state.login_failures = window
    return window


def _issue(secret: str, user: str, expires: int | None, token_id: str) -> str:
    return issue_token(secret, user, expires=expires, token_id=token_id)


async def login(request: Request) -> Response:
    """Exchange a user id (or e-mail address) and password for a token."""
    settings = state.settings(request)
    if settings.secret is None:
        raise ApiError(503, SECRET_NEEDED)
    body = await parse_body(request, LoginBody)
    address = request.client.host if request.client else "unknown"
    async with state.engine(request).connect() as conn:
        row = await accounts.find_sign_in(conn, body.user)
    keys = (f"user {(row.name if row else body.user).lower()!r}", f"address {address}")
    limits = _limits(request)
    wait = max(limits.retry_after(key) for key in keys)
    if wait > 0:
        raise ApiError(429, TOO_MANY, headers={"Retry-After": str(max(1, math.ceil(wait)))})
    stored = row.password_hash if row is not None else None
    matches = await passwords.verify_password_async(stored, body.password)
    if row is None or not matches or not row.active:
        for key in keys:
            limits.record(key)
        log.info("sign-in refused: %r from %s", body.user, address)
        raise ApiError(401, WRONG_USER_OR_PASSWORD, headers={"WWW-Authenticate": "Bearer"})
    if stored is not None and passwords.needs_rehash(stored):
        fresh = await passwords.hash_password_async(body.password)
        async with state.engine(request).begin() as conn:
            await accounts.set_password(conn, row.name, fresh)
    ttl = settings.token_ttl_seconds
    expires = int(time.time() + ttl) if ttl > 0 else None
    token = _issue(settings.secret, row.name, expires, secrets.token_urlsafe(16))
    log.info("sign-in: %s from %s", row.name, address)
    result = {
        "token": token,
        "expires_at": _timestamp(expires),
        "user": accounts.user_json(row),
    }
    return JSONResponse(result, headers={"Cache-Control": "no-store"})


def _timestamp(unix: int | None) -> str | None:
    return datetime.fromtimestamp(unix, UTC).isoformat() if unix is not None else None


def _presented_token(request: Request) -> str | None:
    """The token as the caller sent it (caller.py's rule: the header, else ?token=)."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    token = credentials.strip() if scheme.lower() == "bearer" else None
    return token or request.query_params.get("token") or None


def _expiry(token: str | None) -> datetime | None:
    """The `exp` of a token that has been verified already; None when it has none."""
    if token is None:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, RecursionError):
        return None
    exp = claims.get("exp")
    return datetime.fromtimestamp(exp, UTC) if type(exp) is int else None


async def logout(request: Request) -> Response:
    """Revoke the token this request carries; it is refused from then on."""
    caller = await current_caller(request)
    if sign_in_off(request):
        return Response(status_code=204)  # no tokens, nothing to revoke
    if caller.share:
        # Whoever holds a link would otherwise switch it off for everyone it was given to.
        raise ApiError(403, "a share link is revoked by its document's writers, not by its users")
    token_id = getattr(caller, "token_id", None)
    if not isinstance(token_id, str) or not token_id:
        raise ApiError(
            422,
            "this token has no id (jti) and cannot be revoked; it lasts until it expires",
            field="token",
        )
    expires_at = _expiry(_presented_token(request))
    try:
        async with state.engine(request).begin() as conn:
            await accounts.revoke_token(conn, token_id, caller.user, expires_at)
    except IntegrityError:
        pass  # a concurrent sign-out of the same token got there first
    # Refused from now on, on open connections too, in every process.
    await state.access_events(request).publish(
        AccessChange(rules=False, revoked=frozenset({token_id}))
    )
    log.info("sign-out: %s", caller.user)
    return Response(status_code=204)


async def me(request: Request) -> Response:
    """The caller's user: the local user without sign-in, else its row (a token for a name
    without one, from `tandem token`, is a member)."""
    caller = await current_caller(request)
    if sign_in_off(request):
        return JSONResponse(LOCAL_USER_JSON)
    async with state.engine(request).connect() as conn:
        row = await accounts.get_user(conn, caller.user)
    if row is None:
        return JSONResponse(
            {
                "id": caller.user,
                "name": caller.user,
                "email": None,
                "department": None,
                "role": "member",
                "active": True,
            }
        )
    if not row.active:
        raise ApiError(401, "this user is disabled", headers={"WWW-Authenticate": "Bearer"})
    return JSONResponse(accounts.user_json(row))


async def sign_in_status(engine: AsyncEngine, settings: Settings) -> tuple[int, str]:
    """The log level and line that say whether sign-in is on, with how many users."""
    async with engine.connect() as conn:
        count = await accounts.count_users(conn)
    identity_provider = getattr(settings, "jwks_url", None) is not None
    if settings.secret is not None:
        extra = (
            " (passwords and Tandem tokens; an identity provider too)"
            if (identity_provider)
            else ""
        )
        return logging.INFO, f"sign-in on: {count} users{extra}"
    if identity_provider:
        return logging.INFO, (
            f"sign-in on through the identity provider: {count} users; "
            "password sign-in needs TANDEM_SECRET"
        )
    if count == 0:
        return logging.INFO, (
            "no users and no TANDEM_SECRET: every connection is the local user with full access"
        )
    return logging.WARNING, (
        f"{count} users but no TANDEM_SECRET: sign-in is off and every connection is the "
        "local user with full access; set TANDEM_SECRET to make users sign in"
    )


async def log_sign_in_status(engine: AsyncEngine, settings: Settings) -> None:
    """Say at start-up whether sign-in is on; a database that fails the count does not stop
    the start (the server answers 503 until it is back)."""
    try:
        level, line = await sign_in_status(engine, settings)
    except (SQLAlchemyError, OSError) as exc:
        level, line = (
            logging.WARNING,
            f"could not count the users to say whether sign-in is on: {exc}",
        )
    logging.getLogger("tandem").log(level, line)


routes = [
    Route("/auth/login", login, methods=["POST"]),
    Route("/auth/logout", logout, methods=["POST"]),
    Route("/me", me, methods=["GET"]),
]

OPENAPI_INPUTS: list[type[BaseModel]] = [LoginBody]
OPENAPI_OUTPUTS: list[type[BaseModel]] = [User, LoginResult]


def openapi_paths() -> dict[str, dict[str, Any]]:
    """Sign-in, sign-out and the caller; users and departments are in server/api/users.py."""
    sign_in = operation(
        "Sign in with a user id (or e-mail address) and password; every failure is the same "
        '401 "wrong user or password"; 503 without TANDEM_SECRET',
        ok=(200, "a token for the user", json_body(LoginResult)),
        body=json_body(LoginBody),
        errors=(401, 422, 429),
        tag="users",
    )
    sign_in["security"] = []  # signing in needs no token
    return {
        "/api/auth/login": {"post": sign_in},
        "/api/auth/logout": {
            "post": operation(
                "Revoke the token this request carries",
                ok=(204, "signed out", None),
                errors=(401, 422),
                tag="users",
            ),
        },
        "/api/me": {
            "get": operation(
                "The caller (the local user, an admin, when there is no sign-in)",
                ok=(200, "the caller", json_body(User)),
                errors=(401,),
                tag="users",
            ),
        },
    }
