"""Password hashing: argon2id with argon2-cffi's default parameters.

Hashing is deliberately slow (tens of ms and 64 MiB of memory per call with the defaults), so
the async variants run it on a worker thread, at most `MAX_CONCURRENT_HASHES` at a time: a
burst of sign-ins neither stalls the event loop nor takes a gigabyte of memory.
"""

from __future__ import annotations

import asyncio
import functools
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_PASSWORD_CHARS = 8
# A bound on what one sign-in makes the server hash.
MAX_PASSWORD_CHARS = 1024
MAX_CONCURRENT_HASHES = 2

_hasher = PasswordHasher()
_hashing = asyncio.Semaphore(MAX_CONCURRENT_HASHES)


def _utf8(password: str) -> bytes:
    # JSON can carry a lone surrogate ("\ud800"), which strict UTF-8 refuses to encode: such a
    # string is then only a password that matches nothing stored, never an exception.
    return password.encode("utf-8", "surrogatepass")


def hash_password(password: str) -> str:
    """An argon2id hash of `password` (`$argon2id$...`), salted anew each call."""
    return _hasher.hash(_utf8(password))


def verify_password(password_hash: str, password: str) -> bool:
    """Whether `password` matches; False (never an exception) for a wrong password or a hash
    that is not an argon2 hash."""
    try:
        return _hasher.verify(password_hash, _utf8(password))
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether the hash was made with other parameters than the current defaults (then hash
    the password again after a successful sign-in)."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except (InvalidHashError, ValueError):
        return True


# The hash of a random password nobody kept, made with argon2-cffi 25.1's defaults: checking a
# password against it costs what checking a real one does, from the first sign-in on.
_DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$yvo0FGyCL3zOQMILjtm1QA"
    "$Cqfykvwn1vLZK2zwHv4HeUBTYpzHrl1ca3YLEC9yPpE"
)


@functools.cache
def _dummy_hash() -> str:
    """`_DUMMY_HASH`, or one made now should the library's defaults have changed (a check
    with other parameters would take another time)."""
    return hash_password(secrets.token_urlsafe(24)) if needs_rehash(_DUMMY_HASH) else _DUMMY_HASH


def dummy_verify(password: str) -> bool:
    """Spend the time verifying a password costs and return False: the answer for a user
    that does not exist (or has no password) takes as long as a wrong password does."""
    verify_password(_dummy_hash(), password)
    return False


async def hash_password_async(password: str) -> str:
    async with _hashing:
        return await asyncio.to_thread(hash_password, password)


async def verify_password_async(password_hash: str | None, password: str) -> bool:
    """`verify_password` off the event loop; a None hash is checked against a dummy one."""
    async with _hashing:
        if password_hash is None:
            return await asyncio.to_thread(dummy_verify, password)
        return await asyncio.to_thread(verify_password, password_hash, password)


def check_password_rules(password: str) -> str | None:
    """Why `password` is not acceptable as a new password, or None."""
    if len(password) < MIN_PASSWORD_CHARS:
        return f"a password has at least {MIN_PASSWORD_CHARS} characters"
    if len(password) > MAX_PASSWORD_CHARS:
        return f"a password has at most {MAX_PASSWORD_CHARS} characters"
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        return "a password is text: no lone surrogates"
    return None
