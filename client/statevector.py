"""Yjs state vectors (client id -> clock) as Python dicts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from shared.protocol import ProtocolError, read_varuint, write_varuint

StateVector = dict[int, int]


def decode_state_vector(data: bytes) -> StateVector:
    """Decode a Yjs v1 state vector; ProtocolError when it is malformed."""
    count, pos = read_varuint(data, 0)
    if count * 2 > len(data):
        raise ProtocolError("state vector count exceeds payload")
    out: StateVector = {}
    for _ in range(count):
        client, pos = read_varuint(data, pos)
        clock, pos = read_varuint(data, pos)
        out[client] = clock
    if pos != len(data):
        raise ProtocolError("trailing bytes after state vector")
    return out


def encode_state_vector(vector: Mapping[int, int]) -> bytes:
    out = bytearray(write_varuint(len(vector)))
    for client, clock in vector.items():
        out += write_varuint(client)
        out += write_varuint(clock)
    return bytes(out)


def merged(a: Mapping[int, int], b: Mapping[int, int]) -> StateVector:
    """The entry-wise maximum of two state vectors."""
    out = dict(a)
    for client, clock in b.items():
        if clock > out.get(client, 0):
            out[client] = clock
    return out


def covers(stored: Mapping[int, int], local: Mapping[int, int], clients: Iterable[int]) -> bool:
    """Whether `stored` holds everything `local` has of each of `clients`."""
    return all(local.get(c, 0) <= stored.get(c, 0) for c in clients)
