"""Tandem's own access tokens: JSON Web Tokens signed with HS256 and the configured secret.

A token's claims are `sub` (the user), `iat`, `jti` (an id of the token), `iss` = "tandem",
and optionally `exp`, `doc` (the one document it opens) and `ro` (read-only, only when true).
Tokens from an external identity provider are checked in server/idp.py; server/signin.py
decides which of the two checks a token.

A token arrives as whatever text a client sent, so verification is total: any string that is
not an authentic, well-formed, unexpired token is an `AuthError` with code 4401, never another
exception (which would become an internal error instead of a refusal).
"""

from __future__ import annotations

import base64
import math
import re
import secrets
import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

import jwt
from jwt.warnings import InsecureKeyLengthWarning

LOCAL_USER = "local"
ISSUER = "tandem"
ALGORITHM = "HS256"
# Far above any token `issue_token` makes; a longer one is refused before it is parsed.
MAX_TOKEN_CHARS = 8192
# Compact JWS: three parts of unpadded base64url (the signature of alg "none" is empty).
# Anything else is refused before PyJWT sees it: it encodes the text as UTF-8, which raises
# on a lone surrogate instead of refusing.
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
# PyJWT warns on every token signed or checked with a secret under 32 bytes; the server says
# so once at start-up instead (signin.Authenticator), in its own log.
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning, message="The HMAC key")


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
    token_id: str | None = None  # the token's `jti`, when it has one
    source: Literal["tandem", "idp"] = "tandem"  # who signed the token
    # A share link's token (server/api/share.py): its one document's content, read-only,
    # and its exports when `export`; never anything else, whatever the access rules say.
    share: bool = False
    export: bool = False

    def may_open(self, doc_id: str) -> bool:
        return self.doc is None or self.doc == doc_id


def issue_token(
    secret: str,
    user: str,
    *,
    doc: str | None = None,
    read_only: bool = False,
    ttl: float | None = None,
    expires: int | None = None,
    token_id: str | None = None,
    share: bool = False,
    export: bool = False,
) -> str:
    """A token for `user`; it expires `ttl` seconds from now or at the Unix time `expires`
    (at most one of them), or never when both are None. `token_id` is its `jti` (default:
    a random one)."""
    if ttl is not None and expires is not None:
        raise ValueError("give ttl or expires, not both")
    if not is_text(user):
        raise ValueError("a token's user is a non-empty string")
    if doc is not None and not is_text(doc):
        raise ValueError("a token's document is a non-empty string")
    now = int(time.time())
    if ttl is not None:
        # A negative ttl makes a token that has expired already (tests need those).
        if not math.isfinite(ttl):
            raise ValueError(f"a token lifetime is a finite number of seconds, not {ttl}")
        expires = int(time.time() + ttl)
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": user,
        "iat": now,
        "jti": secrets.token_urlsafe(12) if token_id is None else token_id,
    }
    if expires is not None:
        claims["exp"] = expires
    if doc is not None:
        claims["doc"] = doc
    if read_only:
        claims["ro"] = True
    if share:
        if doc is None or not read_only:
            raise ValueError("a share link's token names one document and is read-only")
        claims["share"] = True
        if export:
            claims["export"] = True
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str) -> Principal:
    """The principal `token` names; `AuthError` 4401 for any other string."""
    if not is_compact(token) or not _canonical(token):
        raise invalid()
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            # `exp` is optional: `tandem token --ttl 0` makes tokens that never expire.
            # `iat` is not compared with the clock: a token made on a machine whose clock
            # runs a little ahead is still good.
            options={"require": ["iss", "sub", "iat"], "verify_iat": False},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError(4401, "token expired") from None
    # PyJWT turns malformed input into its own errors; ValueError and RecursionError are
    # caught as well so that no change in it can let another exception through.
    except (jwt.PyJWTError, ValueError, RecursionError):
        raise invalid() from None
    return _principal(claims)


def _principal(claims: dict[str, Any]) -> Principal:
    """The claims of an authentic token, each of the type `issue_token` writes, or 4401."""
    user: object = claims.get("sub")
    doc: object = claims.get("doc")
    read_only = claims.get("ro", False)
    token_id: object = claims.get("jti")
    # "doc" is absent (every document) or names one; "doc": null is not something we write.
    if not is_text(user) or not (("doc" not in claims) or is_text(doc)):
        raise invalid()
    if not isinstance(read_only, bool):
        raise invalid()
    if token_id is not None and not is_text(token_id):
        raise invalid()
    share = claims.get("share", False)
    export = claims.get("export", False)
    if not isinstance(share, bool) or not isinstance(export, bool):
        raise invalid()
    if share and (not isinstance(doc, str) or not read_only or not is_text(token_id)):
        raise invalid()
    # Whole seconds, as `issue_token` writes them (bool is an int subclass).
    for name in ("iat", "exp"):
        if name in claims and type(claims[name]) is not int:
            raise invalid()
    return Principal(
        user,
        doc if isinstance(doc, str) else None,
        read_only,
        token_id,
        share=share,
        export=share and export,
    )


def _canonical(token: str) -> bool:
    """Whether each part is base64url as `issue_token` writes it. A decoder ignores the
    unused low bits of a part's last character, so several strings carry the same signature;
    only one of them is the token that was issued."""
    for part in token.split("."):
        try:
            raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        except ValueError:
            return False
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != part:
            return False
    return True


def is_compact(token: str) -> bool:
    """Whether `token` has the shape of a signed JWT and is not too long to read."""
    return len(token) <= MAX_TOKEN_CHARS and _COMPACT.fullmatch(token) is not None


def is_text(value: object) -> TypeGuard[str]:
    """A non-empty str that can be logged and stored: no lone surrogates (JSON allows
    "\\ud800")."""
    if not isinstance(value, str) or not value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def invalid() -> AuthError:
    return AuthError(4401, "invalid token")
