"""Access tokens: signed claims of a user, optionally one document and read-only access.

A token is `base64url(json claims) "." base64url(HMAC-SHA256(secret, claims))`. Without a
configured secret there is no sign-in: every caller is the local user with full access.

A token arrives as whatever text a client sent, so verification is total: any string that is
not an authentic, well-formed, unexpired token is an `AuthError` with code 4401, never another
exception (which would become an internal error instead of a refusal).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import time
from dataclasses import dataclass
from typing import TypeGuard

LOCAL_USER = "local"
# Far above any token `issue_token` makes; a longer one is refused before it is hashed.
MAX_TOKEN_CHARS = 8192
# Unpadded base64url, the only alphabet of both parts of a token.
_PART = re.compile(r"[A-Za-z0-9_-]+")


class AuthError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code  # WebSocket close code (4401 unauthenticated, 4403 forbidden)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Principal:
    user: str
    doc: str | None = None  # None: every document
    read_only: bool = False

    def may_open(self, doc_id: str) -> bool:
        return self.doc is None or self.doc == doc_id


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, body: str) -> str:
    return _b64(hmac.new(secret.encode(), body.encode("ascii"), hashlib.sha256).digest())


def issue_token(
    secret: str,
    user: str,
    *,
    doc: str | None = None,
    read_only: bool = False,
    ttl: float | None = None,
    expires: int | None = None,
) -> str:
    """A token for `user`; it expires `ttl` seconds from now or at the Unix time `expires`
    (at most one of them), or never when both are None."""
    if ttl is not None and expires is not None:
        raise ValueError("give ttl or expires, not both")
    if ttl is not None:
        # A negative ttl makes a token that has expired already (tests need those).
        if not math.isfinite(ttl):
            raise ValueError(f"a token lifetime is a finite number of seconds, not {ttl}")
        expires = int(time.time() + ttl)
    claims: dict[str, object] = {"u": user, "ro": read_only}
    if doc is not None:
        claims["d"] = doc
    if expires is not None:
        claims["exp"] = expires
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{body}.{_sign(secret, body)}"


def verify_token(secret: str, token: str) -> Principal:
    """The principal `token` names; `AuthError` 4401 for any other string."""
    if len(token) > MAX_TOKEN_CHARS:
        raise _invalid()
    body, _, signature = token.partition(".")
    # Only the token alphabet goes on: the HMAC and compare_digest take ASCII only.
    if not _PART.fullmatch(body) or not _PART.fullmatch(signature):
        raise _invalid()
    if not hmac.compare_digest(signature, _sign(secret, body)):
        raise _invalid()
    try:
        claims = json.loads(_unb64(body))
    # binascii.Error and UnicodeDecodeError are ValueErrors; deep nesting hits the recursion
    # limit. Only the secret's holder can sign such a body, but it is still not a token.
    except (ValueError, RecursionError):
        raise _invalid() from None
    return _principal(claims)


def _principal(claims: object) -> Principal:
    """The claims of an authentic token, each of the type `issue_token` writes, or 4401."""
    if not isinstance(claims, dict):
        raise _invalid()
    user: object = claims.get("u")
    doc: object = claims.get("d")
    read_only = claims.get("ro", False)
    exp = claims.get("exp")
    # "d" is absent (every document) or names one; "d": null is not something we write.
    if not _is_text(user) or not ((doc is None and "d" not in claims) or _is_text(doc)):
        raise _invalid()
    if not isinstance(read_only, bool):
        raise _invalid()
    # bool is an int subclass, and a float or string expiry would otherwise never expire.
    if "exp" in claims and type(exp) is not int:
        raise _invalid()
    if exp is not None and exp < time.time():
        raise AuthError(4401, "token expired")
    return Principal(user, doc, read_only)


def _is_text(value: object) -> TypeGuard[str]:
    """A str that can be logged and stored: no lone surrogates (JSON allows "\\ud800")."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _invalid() -> AuthError:
    return AuthError(4401, "invalid token")


def authenticate(secret: str | None, token: str | None) -> Principal:
    if secret is None:
        return Principal(LOCAL_USER)
    if not token:
        raise AuthError(4401, "missing token")
    return verify_token(secret, token)
