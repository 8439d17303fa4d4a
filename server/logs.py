"""Logging set-up, and a filter that keeps access tokens out of every log line."""

from __future__ import annotations

import logging
import re

_TOKEN = re.compile(r"((?:^|[?&])token=)[^&\s\"']+")
# A log argument holds a path on its own, so its token runs to the next parameter: a junk
# token's raw quote or tab must not end the redaction and log the rest of it.
_TOKEN_IN_ARG = re.compile(r"((?:^|[?&])token=)[^&\r\n]+")


def redact(text: str) -> str:
    """Token values in a formatted message, where quotes may surround the path."""
    return _TOKEN.sub(r"\1[redacted]", text)


def redact_arg(text: str) -> str:
    """Token values in one argument of a log call."""
    return _TOKEN_IN_ARG.sub(r"\1[redacted]", text)


class RedactTokens(logging.Filter):
    """uvicorn logs request paths with their query string; strip token values from them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_arg(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


class OneLinePerConnection(logging.Filter):
    """Drops uvicorn's own lines about WebSocket connections ("... [accepted]", "connection
    open", "connection closed"): the sync session logs one line when a connection opens and
    one when it closes, with more in them. Refusals stay (uvicorn logs them with a status)."""

    QUIET = frozenset({"connection open", "connection closed"})

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg in self.QUIET or record.msg == '%s - "WebSocket %s" [accepted]')


def configure(level: str = "info", *, pid: bool = False) -> None:
    """`pid`: each line names its process (several workers write to one log)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s "
        + ("[%(process)d] " if pid else "")
        + "%(levelname)s %(name)s: %(message)s",
    )
    install_redaction()


def install_redaction() -> None:
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn", "tandem"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
    quiet = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, OneLinePerConnection) for f in quiet.filters):
        quiet.addFilter(OneLinePerConnection())
