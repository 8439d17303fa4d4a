"""File descriptors: the limit raised at start-up, and a warning before it is reached.

Each WebSocket takes two descriptors (the socket and the duplicate the room writes to,
server/rooms/fanout.py). Past the limit the kernel refuses new sockets, and uvloop's libuv
accepts and closes them at once without a word: so the server warns itself, from its count
of open connections, when it comes near. `/metrics` has `process_open_fds` and
`process_max_fds`.
"""

from __future__ import annotations

import logging
import resource
import time

log = logging.getLogger("tandem")

PER_CONNECTION = 2
RESERVED = 64  # the database, log files, the listening socket, the sidecar's connections
WARN_EVERY = 10.0  # seconds between two warnings

_limit = 0
_open = 0  # WebSockets open in this process
_warned = 0.0


def raise_limit() -> int:
    """Raise the soft limit to the hard one; returns the limit in force, and logs it."""
    global _limit
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # the kernel caps an infinite hard limit
            pass
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    _limit = soft if soft != resource.RLIM_INFINITY else 0
    if _limit:
        raised = f" (raised from {before})" if before != soft else ""
        log.info(
            "file descriptors: limit %d%s, room for about %d WebSockets",
            _limit,
            raised,
            capacity(),
        )
    return _limit


def capacity() -> int:
    """About how many WebSockets the descriptor limit allows (0: no known limit)."""
    return max((_limit - RESERVED) // PER_CONNECTION, 0) if _limit else 0


def opened() -> None:
    """A WebSocket opened: warn (at most every WARN_EVERY seconds) when nineteen
    twentieths of the room for them is taken."""
    global _open, _warned
    _open += 1
    room = capacity()
    if not room or _open * 20 < room * 19:
        return
    now = time.monotonic()
    if now - _warned >= WARN_EVERY:
        _warned = now
        log.warning(
            "file descriptors: %d WebSockets open, room for about %d (limit %d); "
            "past it new connections are refused: raise the hard limit (ulimit -n)",
            _open,
            room,
            _limit,
        )


def closed() -> None:
    global _open
    _open = max(_open - 1, 0)
