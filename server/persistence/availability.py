"""Which database errors mean "unavailable" (try again later) rather than a bug."""

from __future__ import annotations

import errno
import socket

from sqlalchemy import exc as sa_exc

_NETWORK_ERRNOS = frozenset(
    (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.ECONNABORTED)
)
# SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_READONLY
_SQLITE_UNAVAILABLE = frozenset((5, 6, 10, 13, 14, 8))


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database could not be reached or takes no writes now (refused
    or lost connections, timeouts, a server shutting down or starting, a locked, full or
    unopenable SQLite file), rather than a bug in the request."""
    if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror, sa_exc.TimeoutError)):
        return True  # refused, reset, timed out, no such host
    if isinstance(exc, OSError):
        # Unreachable networks and hosts; errno None: asyncio's "Multiple exceptions" when
        # every address of the host failed. Other OSErrors (a full disk) are not the database.
        return exc.errno is None or exc.errno in _NETWORK_ERRNOS
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
            return True
        code = getattr(exc.orig, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in _SQLITE_UNAVAILABLE
        return _postgres_unavailable(getattr(exc.orig, "sqlstate", None))
    # asyncpg's own errors, where they are not wrapped by SQLAlchemy.
    return _postgres_unavailable(getattr(exc, "sqlstate", None))



def _postgres_unavailable(sqlstate: object) -> bool:
    """Connection exceptions (08), insufficient resources such as a full disk (53), operator
    intervention: shutting down, starting up (57P0x), a read-only server (25006)."""
    if not isinstance(sqlstate, str):
        return False
    return sqlstate[:2] in ("08", "53") or sqlstate[:4] == "57P0" or sqlstate == "25006"
