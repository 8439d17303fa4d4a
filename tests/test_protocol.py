"""Unit tests of the y-protocols codec in shared/protocol.py."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text

from shared.protocol import (
    AUTH_PERMISSION_DENIED,
    MSG_AUTH,
    MSG_AWARENESS,
    MSG_QUERY_AWARENESS,
    MSG_STORED,
    MSG_SYNC,
    SYNC_STEP1,
    SYNC_STEP2,
    SYNC_UPDATE,
    AwarenessEntry,
    Message,
    ProtocolError,
    decode_awareness_update,
    decode_message,
    encode_awareness,
    encode_awareness_update,
    encode_permission_denied,
    encode_query_awareness,
    encode_stored,
    encode_sync_step1,
    encode_sync_step2,
    encode_update,
    read_var_bytes,
    read_var_string,
    read_varuint,
    write_varuint,
)

MAX_SAFE = 2**53 - 1


def _real_update() -> bytes:
    doc = Doc()
    doc.get("text", type=Text).insert(0, "héllo wörld 🎉")
    return doc.get_update()


def _real_state_vector() -> bytes:
    doc = Doc()
    doc.get("text", type=Text).insert(0, "abc")
    return doc.get_state()


# -- varuints ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (MAX_SAFE, b"\xff\xff\xff\xff\xff\xff\xff\x0f"),
    ],
)
def test_varuint_known_encodings(value: int, encoded: bytes) -> None:
    assert write_varuint(value) == encoded
    assert read_varuint(encoded, 0) == (value, len(encoded))


@pytest.mark.parametrize("value", [0, 1, 127, 128, 255, 256, 2**14, 2**21, 2**32, MAX_SAFE])
def test_varuint_round_trip_with_offset_and_trailing(value: int) -> None:
    encoded = write_varuint(value)
    data = b"\xaa\xbb" + encoded + b"\x05rest"
    assert read_varuint(data, 2) == (value, 2 + len(encoded))


def test_varuint_max_safe_takes_eight_bytes() -> None:
    assert len(write_varuint(MAX_SAFE)) == 8


def test_write_varuint_rejects_negative() -> None:
    with pytest.raises(ValueError):
        write_varuint(-1)


def test_varuint_beyond_53_bits_is_out_of_range() -> None:
    # 2**53 still fits in 8 bytes, but is not a JavaScript safe integer.
    too_big = write_varuint(2**53)
    assert len(too_big) == 8
    with pytest.raises(ProtocolError, match="out of range"):
        read_varuint(too_big, 0)


@pytest.mark.parametrize(
    "data",
    [
        b"\x80" * 8 + b"\x00",  # nine bytes: continuation bit still set after eight
        b"\xff" * 8,  # eight bytes, the last still continuing (and more would follow)
        b"\xff" * 8 + b"\x01",
        b"\x80" * 100,
    ],
)
def test_varuint_too_long(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="too long"):
        read_varuint(data, 0)


@pytest.mark.parametrize("data", [b"", b"\x80", b"\xff\xff", b"\x80" * 7])
def test_varuint_truncated(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="truncated"):
        read_varuint(data, 0)


def test_varuint_read_past_end() -> None:
    with pytest.raises(ProtocolError, match="truncated"):
        read_varuint(b"\x01", 1)


def test_var_bytes_and_string() -> None:
    raw = "双十一 🎉".encode()
    data = write_varuint(len(raw)) + raw + b"tail"
    assert read_var_bytes(data, 0) == (raw, len(data) - 4)
    assert read_var_string(data, 0) == ("双十一 🎉", len(data) - 4)
    with pytest.raises(ProtocolError, match="truncated payload"):
        read_var_bytes(write_varuint(10) + b"short", 0)
    with pytest.raises(ProtocolError, match="UTF-8"):
        read_var_string(b"\x02\xc3\x28", 0)


# -- messages ----------------------------------------------------------------------------


def test_sync_step1_round_trip() -> None:
    sv = _real_state_vector()
    frame = encode_sync_step1(sv)
    assert frame[:2] == b"\x00\x00"
    assert decode_message(frame) == Message(MSG_SYNC, SYNC_STEP1, sv)


def test_sync_step2_round_trip() -> None:
    update = _real_update()
    assert decode_message(encode_sync_step2(update)) == Message(MSG_SYNC, SYNC_STEP2, update)


def test_update_round_trip() -> None:
    update = _real_update()
    message = decode_message(encode_update(update))
    assert message == Message(MSG_SYNC, SYNC_UPDATE, update)
    doc = Doc()
    doc.apply_update(message.payload)
    assert str(doc.get("text", type=Text)) == "héllo wörld 🎉"


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16384, 70000])
def test_sync_payload_sizes(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert len(payload) == size
    for encode, sync in (
        (encode_sync_step1, SYNC_STEP1),
        (encode_sync_step2, SYNC_STEP2),
        (encode_update, SYNC_UPDATE),
    ):
        assert decode_message(encode(payload)) == Message(MSG_SYNC, sync, payload)


def test_awareness_message_round_trip() -> None:
    payload = encode_awareness_update([AwarenessEntry(7, 1, '{"user":"a"}')])
    frame = encode_awareness(payload)
    assert frame[0] == MSG_AWARENESS
    assert decode_message(frame) == Message(MSG_AWARENESS, -1, payload)


def test_query_awareness_round_trip() -> None:
    assert encode_query_awareness() == b"\x03"
    assert decode_message(encode_query_awareness()) == Message(MSG_QUERY_AWARENESS, -1, b"")
    with pytest.raises(ProtocolError, match="trailing"):
        decode_message(b"\x03\x00")


@pytest.mark.parametrize("size", [1, 127, 128, 70000])
def test_stored_round_trip(size: int) -> None:
    sv = _real_state_vector()
    frame = encode_stored(sv)
    assert frame[0] == MSG_STORED == 100
    assert frame[1:] == write_varuint(len(sv)) + sv
    assert decode_message(frame) == Message(MSG_STORED, -1, sv)
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert decode_message(encode_stored(payload)) == Message(MSG_STORED, -1, payload)
    with pytest.raises(ProtocolError, match="trailing"):
        decode_message(frame + b"\x00")
    with pytest.raises(ProtocolError, match="truncated payload"):
        decode_message(frame[:-1])


def test_permission_denied_round_trip() -> None:
    frame = encode_permission_denied("nope — 不行")
    message = decode_message(frame)
    assert (message.kind, message.sync) == (MSG_AUTH, AUTH_PERMISSION_DENIED)
    assert read_var_string(message.payload, 0) == ("nope — 不行", len(message.payload))


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"", "empty"),
        (b"\x00", "truncated sync"),
        (b"\x00\x03\x00", "unknown sync"),
        (b"\x00\x02", "truncated varint"),
        (b"\x00\x02\xff", "truncated varint"),
        (b"\x00\x02\x05abc", "truncated payload"),
        (b"\x00\x02\x01ab", "trailing"),
        (b"\x01", "truncated varint"),
        (b"\x01\x02a", "truncated payload"),
        (b"\x01\x00\x00", "trailing"),
        (b"\x02", "truncated auth"),
        (b"\x02\x00\x02\xc3\x28", "UTF-8"),
        (b"\x02\x00\x01ab", "trailing"),
        (b"\x04", "unknown message type"),
        (b"\xff\x00", "unknown message type"),
        (b"\x00\x02" + b"\x80" * 9, "too long"),
    ],
)
def test_malformed_messages(frame: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_message(frame)


def test_protocol_error_is_a_value_error() -> None:
    assert issubclass(ProtocolError, ValueError)


# -- awareness updates -------------------------------------------------------------------


def test_awareness_update_round_trip() -> None:
    entries = [
        AwarenessEntry(1, 0, '{"user":{"name":"Ann","color":"#f00"}}'),
        AwarenessEntry(2**32 + 5, 17, '{"cursor":null,"名字":"李"}'),
        AwarenessEntry(MAX_SAFE, MAX_SAFE, "null"),
        AwarenessEntry(0, 3, "{}"),
    ]
    payload = encode_awareness_update(entries)
    assert decode_awareness_update(payload) == entries
    # Through a whole frame as well.
    assert decode_awareness_update(decode_message(encode_awareness(payload)).payload) == entries


def test_awareness_update_empty() -> None:
    assert decode_awareness_update(encode_awareness_update([])) == []


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"", "truncated"),
        (b"\x01\x01\x00\x03{x}", "not JSON"),
        (b"\x01\x01\x00\x02{}extra", "trailing"),
        (b"\x05\x01\x00\x02{}", "count exceeds"),
        (write_varuint(MAX_SAFE) + b"\x00" * 20, "count exceeds"),
        (b"\x01\x01\x00\x05{}", "truncated payload"),
        (b"\x01\x01\x00\x02\xc3\x28", "UTF-8"),
        (b"\x01\x01\x00\x00", "not JSON"),
    ],
)
def test_malformed_awareness_updates(payload: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_awareness_update(payload)


def test_awareness_deeply_nested_json_is_a_protocol_error() -> None:
    state = "[" * 100_000 + "]" * 100_000
    payload = encode_awareness_update([AwarenessEntry(1, 1, state)])
    with pytest.raises(ProtocolError, match="not JSON"):
        decode_awareness_update(payload)


def test_awareness_huge_integer_is_a_protocol_error() -> None:
    # Python refuses to parse integers of more than 4300 digits (a ValueError).
    payload = encode_awareness_update([AwarenessEntry(1, 1, "9" * 5000)])
    with pytest.raises(ProtocolError, match="not JSON"):
        decode_awareness_update(payload)


# -- fuzzing: decoders raise ProtocolError and nothing else -------------------------------


def _valid_frames() -> list[bytes]:
    update = _real_update()
    awareness = encode_awareness_update(
        [AwarenessEntry(1, 2, json.dumps({"user": {"name": "Ann"}})), AwarenessEntry(9, 0, "null")]
    )
    return [
        encode_sync_step1(_real_state_vector()),
        encode_sync_step1(b""),
        encode_sync_step2(update),
        encode_update(update),
        encode_awareness(awareness),
        encode_query_awareness(),
        encode_permission_denied("denied"),
    ]


VALID_FRAMES = _valid_frames()
VALID_AWARENESS = [
    encode_awareness_update([AwarenessEntry(1, 2, '{"a":[1,2,{"b":"c"}]}')]),
    encode_awareness_update([AwarenessEntry(3, 4, "null"), AwarenessEntry(5, 6, '"x"')]),
]

FUZZ = settings(
    derandomize=True,
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _check_only_protocol_errors(data: bytes) -> None:
    """Decode `data` as a frame, and its payload as awareness; only ProtocolError may escape."""
    for decode in (decode_message, decode_awareness_update):
        try:
            result = decode(data)
        except ProtocolError:
            continue
        except BaseException as exc:  # pycrdt panics arrive as a BaseException
            pytest.fail(f"{decode.__name__}({data!r}) raised {type(exc).__name__}: {exc}")
        if isinstance(result, Message) and result.kind == MSG_AWARENESS:
            try:
                decode_awareness_update(result.payload)
            except ProtocolError:
                pass
            except BaseException as exc:
                pytest.fail(f"awareness payload of {data!r} raised {type(exc).__name__}: {exc}")


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(VALID_FRAMES + VALID_AWARENESS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append"]))
        if op in ("flip", "set", "delete") and not frame:
            op = "insert"
        if op == "flip":
            i = draw(st.integers(0, len(frame) - 1))
            frame[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            i = draw(st.integers(0, len(frame) - 1))
            frame[i] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]) | st.integers(0, 255))
        elif op == "insert":
            i = draw(st.integers(0, len(frame)))
            frame[i:i] = draw(st.binary(min_size=1, max_size=9))
        elif op == "delete":
            i = draw(st.integers(0, len(frame) - 1))
            del frame[i : i + draw(st.integers(1, 4))]
        elif op == "truncate":
            del frame[draw(st.integers(0, len(frame))) :]
        else:
            frame += draw(st.binary(min_size=1, max_size=9))
    return bytes(frame)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    _check_only_protocol_errors(data)


@FUZZ
@given(st.sampled_from([0, 1, 2, 3]), st.binary(max_size=200))
def test_fuzz_known_kind_prefix_raises_only_protocol_error(kind: int, rest: bytes) -> None:
    # Arbitrary bytes rarely start with a known message type; force one so the branches run.
    _check_only_protocol_errors(bytes((kind,)) + rest)


@FUZZ
@given(mutated_frames())
def test_fuzz_mutated_frames_raise_only_protocol_error(data: bytes) -> None:
    _check_only_protocol_errors(data)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(0, MAX_SAFE),
            st.integers(0, MAX_SAFE),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3)
                ),
                max_leaves=8,
            ),
        ),
        max_size=5,
    )
)
def test_fuzz_awareness_round_trip(entries: list[tuple[int, int, object]]) -> None:
    decoded = [AwarenessEntry(cid, clock, json.dumps(state)) for cid, clock, state in entries]
    assert decode_awareness_update(encode_awareness_update(decoded)) == decoded
