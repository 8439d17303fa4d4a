"""Errors the client raises when the server refuses it for good (no reconnecting helps)."""

from __future__ import annotations

__all__ = ["AccessRefused", "ClientError", "DocumentDeleted", "InvalidDocumentId", "for_close"]


class ClientError(Exception):
    """The server ended the connection with a code that retrying cannot fix."""

    def __init__(self, message: str, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class AccessRefused(ClientError):
    """The token is missing, invalid or expired (4401), or not valid for this document (4403)."""


class DocumentDeleted(ClientError):
    """The document was deleted on the server (4404)."""


class InvalidDocumentId(ClientError):
    """The server does not accept this document id (4400)."""


def for_close(code: int | None, reason: str, url: str) -> ClientError | None:
    """The error a close code means, or None when the client should reconnect."""
    detail = f"{url}: {code} {reason}".rstrip()
    if code in (4401, 4403):
        return AccessRefused(f"access refused by {detail}", code, reason)
    if code == 4404:
        return DocumentDeleted(f"document deleted: {detail}", code, reason)
    if code == 4400:
        return InvalidDocumentId(f"invalid document id: {detail}", code, reason)
    return None
