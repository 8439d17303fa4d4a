"""Access tokens: every malformed token is refused as unauthenticated, never an internal error.

`verify_token` takes whatever text a client sent (a query parameter, or an `Authorization`
header decoded as latin-1), so it must answer any string with a `Principal` or an `AuthError`
with code 4401. End to end, that is close code 4401 on a WebSocket and 401 over REST, with
no traceback and no token in the server log.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import httpx
import pytest
from conftest import ServerFactory, ServerProcess
from helpers import close_of
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from server.auth import AuthError, Principal, issue_token, verify_token

SECRET = "s3cret-for-tests"
MAX_TOKEN_CHARS = 8192  # the documented cap: a longer token is refused unread
T = TypeVar("T")
# Tests sign with short secrets on purpose; the server logs that once at start-up instead.
pytestmark = pytest.mark.filterwarnings("ignore:The HMAC key:jwt.warnings.InsecureKeyLengthWarning")
HS256 = '{"alg":"HS256","typ":"JWT"}'


def authenticate(token: str) -> Principal:
    return verify_token(SECRET, token)


# -- strategies ------------------------------------------------------------------------------

# Any code point, lone surrogates included (a str from surrogateescape or a JSON "\ud800").
ANY_CHAR = st.one_of(st.characters(), st.characters(categories=["Cs"]))
B64_CHAR = st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signed(body: str, header: str = _b64(HS256.encode())) -> str:
    """A JWT whose HS256 signature is right for `header.body`, whatever they hold."""
    signing_input = f"{header}.{body}"
    mac = hmac.new(SECRET.encode(), signing_input.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return f"{signing_input}.{_b64(mac.digest())}"


def signed_claims(claims: object) -> str:
    return signed(_b64(json.dumps(claims, separators=(",", ":")).encode()))


def good(**claims: object) -> dict[str, object]:
    """The claims `issue_token` writes for alice, with `claims` changed (None: removed)."""
    base: dict[str, object] = {"iss": "tandem", "sub": "alice", "iat": int(time.time())}
    base.update(claims)
    return {name: value for name, value in base.items() if value is not None}


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**18)
    | st.floats()
    | st.text(ANY_CHAR, max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)
CLAIM = st.one_of(JSON, st.text(max_size=10))
CLAIM_NAMES = ["sub", "doc", "ro", "exp", "iat", "iss", "jti", "aud", "nbf", "x"]
CLAIMS = st.dictionaries(st.sampled_from(CLAIM_NAMES), CLAIM, max_size=6)
# Claims around a valid set: one to three of them replaced by anything.
NEAR_CLAIMS = st.builds(
    lambda changes: {**good(), **changes},
    st.dictionaries(st.sampled_from(CLAIM_NAMES), CLAIM, min_size=1, max_size=3),
)
# Headers of any content, signed as given: other algorithms, kid, crit, b64 and junk.
HEADERS = st.one_of(
    JSON.map(lambda value: _b64(json.dumps(value).encode())),
    st.dictionaries(
        st.sampled_from(["alg", "typ", "kid", "crit", "b64", "jku"]), CLAIM, max_size=4
    ).map(lambda value: _b64(json.dumps(value).encode())),
    st.text(ANY_CHAR, max_size=20),
)


@st.composite
def mutated(draw: st.DrawFn, tokens: st.SearchStrategy[str]) -> str:
    """A token with one character flipped, inserted or removed: never the token itself."""
    token = draw(tokens)
    at = draw(st.integers(0, len(token)))
    op = draw(st.sampled_from(["flip", "insert", "delete"]))
    char = draw(st.one_of(B64_CHAR, ANY_CHAR, st.sampled_from(".=+/ \x00")))
    if op == "insert":
        changed = token[:at] + char + token[at:]
    elif op == "delete":
        changed = token[:at] + token[at + 1 :]
    else:
        changed = token[:at] + char + token[at + 1 :]
    assume(changed != token)
    return changed


VALID = st.builds(
    lambda user, doc, ro, ttl: issue_token(SECRET, user, doc=doc, read_only=ro, ttl=ttl),
    st.text(min_size=1, max_size=12),
    st.none() | st.text(min_size=1, max_size=12),
    st.booleans(),
    st.none() | st.integers(60, 10**6),
)

JUNK = st.one_of(
    st.text(ANY_CHAR),
    st.binary().map(lambda raw: raw.decode("latin-1")),
    st.binary().map(lambda raw: raw.decode("utf-8", "surrogateescape")),
    # Shapes close to a real token: two parts, base64 alphabet or not.
    st.builds(lambda a, b: f"{a}.{b}", st.text(B64_CHAR), st.text(ANY_CHAR)),
    st.builds(lambda a, b: f"{a}.{b}", st.text(ANY_CHAR), st.text(B64_CHAR, min_size=43)),
    st.text(st.sampled_from(".=")),
    # Signed, so the claims themselves are what is wrong.
    st.binary().map(lambda raw: signed(_b64(raw))),
    JSON.map(signed_claims),
    CLAIMS.map(signed_claims),
    NEAR_CLAIMS.map(signed_claims),
    st.builds(lambda header: signed(_b64(json.dumps(good()).encode()), header), HEADERS),
    st.text(ANY_CHAR).map(signed),
    mutated(VALID),
)


def assert_total(token: str) -> Principal | None:
    """`verify_token` gives a principal or a 4401 `AuthError`; any other exception escapes."""
    try:
        principal = authenticate(token)
    except AuthError as exc:
        assert exc.code == 4401, (token, exc.code, exc.reason)
        assert exc.reason in {"invalid token", "token expired", "missing token"}
        return None
    assert isinstance(principal.user, str) and isinstance(principal.read_only, bool)
    assert principal.doc is None or isinstance(principal.doc, str)
    assert principal.token_id is None or isinstance(principal.token_id, str)
    return principal


# -- verify_token, in process ----------------------------------------------------------------


@settings(max_examples=1000, deadline=None, database=None)
@given(token=JUNK)
def test_any_text_is_a_principal_or_4401(token: str) -> None:
    assert_total(token)


@settings(max_examples=500, deadline=None, database=None)
@given(token=VALID, changed=st.data())
def test_a_changed_token_is_refused(token: str, changed: st.DataObject) -> None:
    assert isinstance(authenticate(token), Principal)
    with pytest.raises(AuthError) as refused:
        authenticate(changed.draw(mutated(st.just(token))))
    assert (refused.value.code, refused.value.reason) == (4401, "invalid token")


WRONG_CLAIMS: list[object] = [
    [],
    "alice",
    5,
    None,
    {},
    good(sub=None),
    good(sub=5),
    good(sub=""),
    good(sub=["alice"]),
    {**good(), "sub": None},
    good(doc=7),
    good(doc=""),
    {**good(), "doc": None},
    good(doc=["doc"]),
    good(exp="x"),
    good(exp=1.5e12),
    {**good(), "exp": None},
    good(exp=float("nan")),
    good(ro="false"),
    good(ro=1),
    good(sub="\ud800"),
    good(doc="\udfff"),
    good(jti=5),
    good(jti="\ud800"),
    good(iss=None),
    good(iss="another"),
    good(iss=["tandem"]),
    good(iat=None),
    good(iat="now"),
    good(iat=1.5),
    good(aud="someone"),
    good(nbf=int(time.time()) + 3600),
]


@pytest.mark.parametrize("claims", WRONG_CLAIMS, ids=repr)
def test_claims_of_the_wrong_type_are_invalid(claims: object) -> None:
    with pytest.raises(AuthError) as refused:
        authenticate(signed_claims(claims))
    assert (refused.value.code, refused.value.reason) == (4401, "invalid token")


def test_edge_cases() -> None:
    refused = [
        "",
        ".",
        "...",
        "\x00",
        "\x00.\x00",
        "é.é",
        "a.é",
        "é.a",
        "\ud800.\udfff",
        "a" * 100_000 + "." + "b" * 43,
        signed(""),
        signed("\ud800"),
        signed("é"),
        signed(_b64(b"\xff\xfe")),  # not UTF-8
        signed(_b64(b"[" * 5000)),  # deeper than the JSON parser recurses
        signed(_b64(b"1" * 5000)),  # more digits than int() converts
        signed(_b64(b"NaN")),
        signed_claims(good(exp=10**400)) + "x",
        signed(_b64(json.dumps(good()).encode()), _b64(b'{"alg":"none"}')),
        signed(_b64(json.dumps(good()).encode()), _b64(b'{"alg":"HS512"}')),
        signed(_b64(json.dumps(good()).encode()), _b64(b'{"alg":"RS256"}')),
        signed(_b64(json.dumps(good()).encode()), _b64(b'{"alg":"HS256","crit":["exp"]}')),
        signed(_b64(json.dumps(good()).encode()), _b64(b'{"alg":"HS256","b64":false}')),
        signed(_b64(json.dumps(good()).encode()), _b64(b"[" * 5000)),
        # A JWT with padding, or an old-style token of two parts.
        issue_token(SECRET, "alice") + "==",
        issue_token(SECRET, "alice").partition(".")[2],
        issue_token(SECRET, "alice") + "=",
        issue_token(SECRET, "alice") + ".",
        " " + issue_token(SECRET, "alice"),
        issue_token("another secret", "alice"),
    ]
    for token in refused:
        with pytest.raises(AuthError) as exc:
            authenticate(token)
        assert exc.value.code == 4401, token[:80]
    expired = issue_token(SECRET, "alice", ttl=-10)
    with pytest.raises(AuthError, match="token expired"):
        authenticate(expired)
    # An authentic token whose expiry is `true` (1970): refused, as expired.
    with pytest.raises(AuthError) as exc:
        authenticate(signed_claims(good(exp=True)))
    assert exc.value.code == 4401
    # Far-future expiry and odd but well-formed names are fine.
    assert authenticate(signed_claims(good(exp=10**400))).user == "alice"
    assert authenticate(issue_token(SECRET, "刘洋", doc="文档-1", token_id="t-1")) == Principal(
        "刘洋", "文档-1", False, "t-1", "tandem"
    )


def test_an_overlong_token_is_refused_unread() -> None:
    """The cap is checked first: a signed token over it is refused though it is authentic."""
    n = MAX_TOKEN_CHARS // 2
    while len(signed_claims(good(sub="a" * (n + 1)))) <= MAX_TOKEN_CHARS:
        n += 1
    at_cap = signed_claims(good(sub="a" * n))
    over = signed_claims(good(sub="a" * (n + 3)))
    assert len(at_cap) <= MAX_TOKEN_CHARS < len(over)
    assert authenticate(at_cap).user == "a" * n
    with pytest.raises(AuthError, match="invalid token"):
        authenticate(over)


# -- end to end ------------------------------------------------------------------------------

# Bytes an HTTP header value may hold (field-vchar, obs-text, inner blanks); control bytes
# never reach the application: the HTTP parser refuses the request first.
HEADER_BYTES = frozenset(b for b in range(256) if b == 9 or 32 <= b <= 126 or b >= 128)
HEADER_TOKEN = st.one_of(
    st.lists(st.sampled_from(sorted(HEADER_BYTES)), max_size=300).map(bytes),
    JUNK.map(lambda t: t.encode("utf-8", "surrogatepass")),
    mutated(VALID).map(lambda t: t.encode("utf-8", "surrogatepass")),
).filter(lambda raw: HEADER_BYTES.issuperset(raw))
# A query value as a client should send it, percent-encoded (text as UTF-8, or any bytes: %FF
# and the like), or as a sloppy one might: raw quotes, backslashes and stray "%" included.
QUERY_TOKEN = st.one_of(
    JUNK.map(lambda t: quote(t.encode("utf-8", "surrogatepass"), safe="")),
    st.binary(max_size=300).map(lambda raw: quote(raw, safe="")),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="&#")),
)


def _verifies(token: str) -> bool:
    try:
        verify_token(SECRET, token)
    except AuthError:
        return False
    return True


def run_on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["status"] == 401
    assert response.json()["error"]["message"] in {"invalid token", "missing token"}
    assert response.headers["www-authenticate"] == "Bearer"


def distinctive(token: str) -> bool:
    """Long and varied enough that finding it in the log cannot be a coincidence."""
    return len(token) >= 16 and len(set(token)) >= 8


# How a request line with a token is logged: the token, whatever it holds, wholly replaced.
REDACTED_LINE = re.compile(
    r'"(?:WebSocket /ws/doc-1|GET /api/docs)\?token=(?:\[redacted\])?'
    r'(?:" \[accepted\]| HTTP/1\.1" 401)$'
)


def assert_clean_log(server: ServerProcess, tokens: list[str]) -> None:
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    assert "internal error" not in log and "Exception in ASGI" not in log, log[-3000:]
    assert "ws open doc=" not in log
    for line in log.splitlines():
        assert "token=" not in line or REDACTED_LINE.search(line), line
    for token in tokens:
        assert not distinctive(token) or token not in log, token


async def test_malformed_query_tokens_get_4401_and_401(make_server: ServerFactory) -> None:
    server = await make_server(None, TANDEM_SECRET=SECRET)
    loop = asyncio.get_running_loop()
    sent: list[str] = []

    async def probe(value: str) -> None:
        code, _ = await close_of(f"{server.ws_url}/doc-1?token={value}")
        assert code == 4401, value
        async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
            assert_401(await http.get(f"/api/docs?token={value}"))

    @settings(
        max_examples=50,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(value=QUERY_TOKEN)
    def each(value: str) -> None:
        sent.extend([value, unquote(value, errors="replace")])
        run_on(loop, probe(value))

    await asyncio.to_thread(each)
    # A raw quote once ended the redaction early: the rest of the token was logged.
    for value in ["abc'def-ghijk.lmnopq", 'abc"def-ghijk.lmnopq', issue_token(SECRET, "x") + "'"]:
        sent.append(value)
        await probe(value)
    assert len(sent) >= 50
    assert_clean_log(server, sent)
    # Each refused socket is one line of the server's own (uvicorn's "[accepted]" is not logged).
    assert server.log().count("ws refused doc=doc-1 ") >= len([s for s in sent if s]) // 2


async def test_malformed_bearer_headers_get_4401_and_401(make_server: ServerFactory) -> None:
    server = await make_server(None, TANDEM_SECRET=SECRET)
    loop = asyncio.get_running_loop()
    sent: list[str] = []

    async def probe(raw: bytes) -> None:
        value = (b"Bearer " + raw).rstrip(b" \t")  # a header value ends in a visible byte
        # websockets writes header values as latin-1, so each str char is one raw byte.
        code, _ = await close_of(
            f"{server.ws_url}/doc-1", headers={"Authorization": value.decode("latin-1")}
        )
        assert code == 4401, raw
        async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
            assert_401(await http.get("/api/docs", headers=[(b"Authorization", value)]))

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(raw=HEADER_TOKEN)
    def each(raw: bytes) -> None:
        # A valid token with a space or tab appended is the valid token once the header
        # value's trailing whitespace is dropped: not a malformed header.
        assume(not _verifies(raw.rstrip(b" \t").decode("latin-1")))
        sent.append(raw.decode("latin-1"))
        run_on(loop, probe(raw))

    await asyncio.to_thread(each)
    # The tokens that broke the old code, every time.
    valid = issue_token(SECRET, "alice")
    for raw in [
        "é.é".encode("latin-1"),
        b"abc.\xff\xfe",
        valid.encode() + b"\xe9",
        b"\xc3\xa9" + valid.encode(),
        valid.encode()[:-1] + b"\x80",
    ]:
        sent.append(raw.decode("latin-1"))
        await probe(raw)
    assert_clean_log(server, sent)
