"""Tokens from an external identity provider (OpenID Connect or any JWT issuer with a JWKS).

The provider signs tokens with RS256 or ES256; its public keys come from its JWKS URL (cached
for five minutes by PyJWT's client, and fetched again at once, at most every 30 s, for a key
id not yet seen, which is how a rotated key arrives). A token is accepted when its signature
checks with the key its `kid` names, it has not expired (`exp` is required), and its `iss`
and `aud` are the configured issuer and audience.

Verification runs on the provider's own worker threads, not asyncio's default executor: a
key set fetch can wait FETCH_TIMEOUT_SECONDS for a provider that does not answer, and the
default executor's few threads also carry the commit path (persistence/writer.py). While the
provider is unreachable and no fresh key set is cached, tokens are refused at once for
RETRY_SECONDS instead of each waiting for the timeout.

The user is the claim named by TANDEM_JWT_USER_CLAIM (preferred_username by default). There
is no fallback to `sub` when that claim is missing: the token is refused, because user names
taken from two claims could make one person's `sub` another person's name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt

from server.auth import AuthError, Principal, invalid, is_compact, is_text
from server.settings import Settings

log = logging.getLogger("tandem.auth")

# Asymmetric only: a provider's key is public, so an HMAC algorithm would let anyone who has
# fetched the JWKS (or the PEM of its key) sign tokens.
ALGORITHMS = ("RS256", "ES256")
# Seconds of clock difference between the provider and this server tolerated on exp/nbf/iat.
LEEWAY_SECONDS = 30
# A JWKS endpoint that does not answer in this time counts as unreachable; the lookup holds
# a worker thread while it waits.
FETCH_TIMEOUT_SECONDS = 5.0
# Seconds the key set is cached before it is fetched again.
KEY_SET_LIFESPAN_SECONDS = 300.0
# After a failed fetch, tokens that need the key set are refused at once for this long.
RETRY_SECONDS = 10.0
# Fetches take the client's lock one at a time; more threads let cached keys verify beside one.
WORKER_THREADS = 4


class IdentityProviderConfigError(ValueError):
    """TANDEM_JWKS_URL is set without what checking its tokens needs."""


def check_settings(settings: Settings) -> None:
    """Refuse a JWKS URL without an issuer and an audience (tokens that any client of the
    provider got for any application would otherwise sign in here), or one not over HTTP."""
    if settings.jwks_url is None:
        return
    missing = [
        name
        for name, value in (
            ("TANDEM_JWT_ISSUER", settings.jwt_issuer),
            ("TANDEM_JWT_AUDIENCE", settings.jwt_audience),
        )
        if not value
    ]
    if missing:
        raise IdentityProviderConfigError(
            f"TANDEM_JWKS_URL is set, so {' and '.join(missing)} must be set too: "
            "tokens are accepted only from that issuer and for that audience"
        )
    if not settings.jwks_url.lower().startswith(("http://", "https://")):
        raise IdentityProviderConfigError(
            f"TANDEM_JWKS_URL must be an http:// or https:// URL, not {settings.jwks_url!r}"
        )
    if not settings.jwt_user_claim:
        raise IdentityProviderConfigError("TANDEM_JWT_USER_CLAIM must name a claim")


class IdentityProvider:
    """Verifies the tokens of one provider: `verify_claims` gives their claims, `verify`
    the principal."""

    def __init__(
        self,
        jwks_url: str,
        issuer: str,
        audience: str,
        user_claim: str,
        *,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.user_claim = user_claim
        self.retry_seconds = retry_seconds
        self._keys = jwt.PyJWKClient(
            jwks_url,
            cache_jwk_set=True,
            lifespan=KEY_SET_LIFESPAN_SECONDS,
            timeout=FETCH_TIMEOUT_SECONDS,
        )
        # Threads start on first use, so a provider nobody signs in with costs none.
        self._threads = ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="tandem-idp")
        self._unreachable_until = 0.0  # time.monotonic(); written by the worker threads

    @classmethod
    def from_settings(cls, settings: Settings) -> IdentityProvider | None:
        """The configured provider, None without TANDEM_JWKS_URL;
        `IdentityProviderConfigError` for an incomplete configuration."""
        check_settings(settings)
        if settings.jwks_url is None:
            return None
        assert settings.jwt_issuer and settings.jwt_audience  # check_settings saw to it
        return cls(
            settings.jwks_url, settings.jwt_issuer, settings.jwt_audience, settings.jwt_user_claim
        )

    async def verify(self, token: str) -> Principal:
        """The principal of an authentic token; `AuthError` 4401 otherwise."""
        return self.principal(await self.verify_claims(token))

    async def verify_claims(self, token: str) -> dict[str, Any]:
        """The claims of an authentic, unexpired token of this provider for this audience,
        user claim included; `AuthError` 4401 for any other string."""
        if not is_compact(token):
            raise invalid()
        if self._keys_missing() and time.monotonic() < self._unreachable_until:
            raise _unavailable()
        # The key set may have to be fetched: blocking I/O, off the event loop.
        loop = asyncio.get_running_loop()
        claims = await loop.run_in_executor(self._threads, self._decode, token)
        if not is_text(claims.get(self.user_claim)):
            log.info("identity provider token without a usable %r claim", self.user_claim)
            raise invalid()
        return claims

    def principal(self, claims: dict[str, Any]) -> Principal:
        """The principal of claims that `verify_claims` returned."""
        user = claims[self.user_claim]
        jti = claims.get("jti")
        return Principal(user, token_id=jti if is_text(jti) else None, source="idp")

    def close(self) -> None:
        """Stop the worker threads (a fetch under way is not waited for)."""
        self._threads.shutdown(wait=False, cancel_futures=True)

    def _keys_missing(self) -> bool:
        """No key set is cached, or it has expired: verifying needs a fetch."""
        cache = self._keys.jwk_set_cache
        return cache is None or cache.get() is None

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            key = self._keys.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                issuer=self.issuer,
                audience=self.audience,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(4401, "token expired") from None
        except jwt.PyJWKClientConnectionError as exc:
            self._unreachable_until = time.monotonic() + self.retry_seconds
            log.warning("identity provider keys unavailable: %s", exc)
            raise _unavailable() from None
        except (jwt.PyJWTError, ValueError, RecursionError):
            raise invalid() from None
        return claims


def _unavailable() -> AuthError:
    return AuthError(4401, "identity provider unavailable")
