"""The y-protocols wire format (y-websocket framing): message constants, encoders, decoders.

Every decoder raises `ProtocolError` and nothing else, whatever the input, so callers need
exactly one `except` around untrusted bytes.
"""

from __future__ import annotations

import json
from typing import NamedTuple

MSG_SYNC = 0
MSG_AWARENESS = 1
MSG_AUTH = 2
MSG_QUERY_AWARENESS = 3
MSG_STORED = 100
"""Tandem's extension to the y-protocols: "everything this state vector covers is committed
to the server's database" (payload: a Yjs-encoded state vector). The server sends it only to
a connection opened with `?durable=1` (DURABLE_PARAM), after each commit that stores that
connection's updates; stock Yjs clients never ask, so they never receive a type they do not
know. Clients never send it."""
DURABLE_PARAM = "durable"

SYNC_STEP1 = 0
SYNC_STEP2 = 1
SYNC_UPDATE = 2

AUTH_PERMISSION_DENIED = 0

# lib0 varuints carry at most 53 bits (JavaScript's safe integers).
_MAX_VARUINT_BYTES = 8
_MAX_SAFE_INT = 2**53 - 1


class ProtocolError(ValueError):
    """Raised for any frame that is not a well-formed y-protocols message."""


class Message(NamedTuple):
    """One decoded message: the outer type, the sync sub-type (or -1) and the payload."""

    kind: int
    sync: int
    payload: bytes


class AwarenessEntry(NamedTuple):
    client_id: int
    clock: int
    state: str  # the JSON text as sent; "null" means the client left


def write_varuint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varuint must be non-negative")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varuint(data: bytes, pos: int) -> tuple[int, int]:
    """Read a varuint at `pos`; return (value, next position)."""
    result = 0
    shift = 0
    end = len(data)
    for _ in range(_MAX_VARUINT_BYTES):
        if pos >= end:
            raise ProtocolError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result > _MAX_SAFE_INT:
                raise ProtocolError("varint out of range")
            return result, pos
        shift += 7
    raise ProtocolError("varint too long")


def read_var_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = read_varuint(data, pos)
    end = pos + length
    if end > len(data):
        raise ProtocolError("truncated payload")
    return data[pos:end], end


def read_var_string(data: bytes, pos: int) -> tuple[str, int]:
    raw, pos = read_var_bytes(data, pos)
    try:
        return raw.decode("utf-8"), pos
    except UnicodeDecodeError as exc:
        raise ProtocolError("invalid UTF-8 in string") from exc


def decode_message(data: bytes) -> Message:
    """Decode one y-websocket frame. Trailing bytes are an error."""
    if not data:
        raise ProtocolError("empty message")
    kind = data[0]
    if kind == MSG_SYNC:
        if len(data) < 2:
            raise ProtocolError("truncated sync message")
        sync = data[1]
        if sync > SYNC_UPDATE:
            raise ProtocolError(f"unknown sync message type {sync}")
        payload, end = read_var_bytes(data, 2)
    elif kind == MSG_AWARENESS:
        sync = -1
        payload, end = read_var_bytes(data, 1)
    elif kind == MSG_QUERY_AWARENESS:
        return Message(kind, -1, b"") if len(data) == 1 else _trailing()
    elif kind == MSG_STORED:
        sync = -1
        payload, end = read_var_bytes(data, 1)
    elif kind == MSG_AUTH:
        # Clients never need to send auth messages; accept them only well-formed.
        if len(data) < 2:
            raise ProtocolError("truncated auth message")
        sync = data[1]
        _, end = read_var_string(data, 2)
        payload = data[2:end]
    else:
        raise ProtocolError(f"unknown message type {kind}")
    if end != len(data):
        _trailing()
    return Message(kind, sync, payload)


def _trailing() -> Message:
    raise ProtocolError("trailing bytes after message")


def encode_sync_step1(state_vector: bytes) -> bytes:
    return b"\x00\x00" + write_varuint(len(state_vector)) + state_vector


def encode_sync_step2(update: bytes) -> bytes:
    return b"\x00\x01" + write_varuint(len(update)) + update


def encode_update(update: bytes) -> bytes:
    return b"\x00\x02" + write_varuint(len(update)) + update


def encode_awareness(payload: bytes) -> bytes:
    return b"\x01" + write_varuint(len(payload)) + payload


def encode_stored(state_vector: bytes) -> bytes:
    """The durable acknowledgement (MSG_STORED) for `state_vector`."""
    return bytes((MSG_STORED,)) + write_varuint(len(state_vector)) + state_vector


def encode_query_awareness() -> bytes:
    return b"\x03"


def encode_permission_denied(reason: str) -> bytes:
    raw = reason.encode("utf-8")
    return b"\x02\x00" + write_varuint(len(raw)) + raw


def decode_awareness_update(payload: bytes) -> list[AwarenessEntry]:
    """Decode an awareness update: a count, then (client id, clock, JSON state) per client.

    The JSON is checked to parse, so that a peer can never relay text other clients choke on.
    """
    count, pos = read_varuint(payload, 0)
    # Each entry takes at least 3 bytes: refuse counts the payload cannot hold before looping.
    if count * 3 > len(payload):
        raise ProtocolError("awareness count exceeds payload")
    entries = []
    for _ in range(count):
        client_id, pos = read_varuint(payload, pos)
        clock, pos = read_varuint(payload, pos)
        state, pos = read_var_string(payload, pos)
        try:
            json.loads(state)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError("awareness state is not JSON") from exc
        entries.append(AwarenessEntry(client_id, clock, state))
    if pos != len(payload):
        raise ProtocolError("trailing bytes after awareness update")
    return entries


def encode_awareness_update(entries: list[AwarenessEntry]) -> bytes:
    out = bytearray(write_varuint(len(entries)))
    for entry in entries:
        raw = entry.state.encode("utf-8")
        out += write_varuint(entry.client_id)
        out += write_varuint(entry.clock)
        out += write_varuint(len(raw))
        out += raw
    return bytes(out)
