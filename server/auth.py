"""Access tokens: signed claims of a user, optionally one document and read-only access.

A token is `base64url(json claims) "." base64url(HMAC-SHA256(secret, claims))`. Without a
configured secret there is no sign-in: every caller is the local user with full access.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

LOCAL_USER = "local"


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
) -> str:
    claims: dict[str, object] = {"u": user, "ro": read_only}
    if doc is not None:
        claims["d"] = doc
    if ttl is not None:
        claims["exp"] = int(time.time() + ttl)
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{body}.{_sign(secret, body)}"


def verify_token(secret: str, token: str) -> Principal:
    body, _, signature = token.partition(".")
    if not body or not signature or not hmac.compare_digest(signature, _sign(secret, body)):
        raise AuthError(4401, "invalid token")
    try:
        claims = json.loads(_unb64(body))
    except ValueError as exc:
        raise AuthError(4401, "invalid token") from exc
    if not isinstance(claims, dict) or not isinstance(claims.get("u"), str):
        raise AuthError(4401, "invalid token")
    exp = claims.get("exp")
    if isinstance(exp, int) and exp < time.time():
        raise AuthError(4401, "token expired")
    doc = claims.get("d")
    return Principal(claims["u"], doc if isinstance(doc, str) else None, bool(claims.get("ro")))


def authenticate(secret: str | None, token: str | None) -> Principal:
    if secret is None:
        return Principal(LOCAL_USER)
    if not token:
        raise AuthError(4401, "missing token")
    return verify_token(secret, token)
