"""Who a token signs in: one entry point for Tandem's own tokens and an identity provider's.

Without TANDEM_SECRET and TANDEM_JWKS_URL there is no sign-in: every caller is the local user
with full access. Otherwise a token is required; one whose header names RS256 or ES256 goes
to the identity provider (when one is configured), any other to the HS256 check with the
secret (when one is set). A token neither accepts is refused with 4401.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import jwt

from server.auth import LOCAL_USER, AuthError, Principal, invalid, is_compact, verify_token
from server.idp import ALGORITHMS, IdentityProvider
from server.settings import Settings

log = logging.getLogger("tandem.auth")

# RFC 7518 §3.2: an HS256 key as long as the hash, or it is easier to guess than to forge.
MIN_SECRET_BYTES = 32

ExternalUserHook = Callable[[dict[str, Any]], Awaitable[None]]
RevocationCheck = Callable[[str | None], bool]


class Authenticator:
    """Turns the token a client sent (or none) into a `Principal`, or raises `AuthError`."""

    def __init__(self, secret: str | None, idp: IdentityProvider | None = None) -> None:
        self.secret = secret
        self.idp = idp
        # Called with the claims of each identity provider token that verifies, before the
        # caller is let in (to create the user on first sign-in); what it raises propagates.
        self.on_external_user: ExternalUserHook | None = None
        # Whether a token id (`jti`) has been revoked (signed out); checked after the
        # signature, for tokens of either source. In memory: it must not wait.
        self.is_revoked: RevocationCheck | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        """`idp.IdentityProviderConfigError` when the identity provider settings are
        incomplete."""
        if settings.secret is not None and len(settings.secret.encode()) < MIN_SECRET_BYTES:
            log.warning(
                "TANDEM_SECRET is %d bytes long; use at least %d random bytes, e.g. "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'",
                len(settings.secret.encode()),
                MIN_SECRET_BYTES,
            )
        return cls(settings.secret, IdentityProvider.from_settings(settings))

    def close(self) -> None:
        if self.idp is not None:
            self.idp.close()

    @property
    def open(self) -> bool:
        """No sign-in: every caller is the local user."""
        return self.secret is None and self.idp is None

    async def authenticate(self, token: str | None) -> Principal:
        if self.open:
            return Principal(LOCAL_USER)
        if not token:
            raise AuthError(4401, "missing token")
        if self.idp is not None and self._algorithm(token) in ALGORITHMS:
            claims = await self.idp.verify_claims(token)
            principal = self.idp.principal(claims)
            self._check_revoked(principal)
            if self.on_external_user is not None:
                await self.on_external_user(claims)
            return principal
        if self.secret is not None:
            principal = verify_token(self.secret, token)
            self._check_revoked(principal)
            return principal
        raise invalid()

    def _check_revoked(self, principal: Principal) -> None:
        if self.is_revoked is not None and self.is_revoked(principal.token_id):
            raise AuthError(4401, "token revoked")

    @staticmethod
    def _algorithm(token: str) -> object:
        """The `alg` the token's header names, unverified (it only picks the check), or
        None for a string that is no JWT."""
        if not is_compact(token):
            return None
        try:
            return jwt.get_unverified_header(token).get("alg")
        except (jwt.PyJWTError, ValueError, RecursionError):
            return None
