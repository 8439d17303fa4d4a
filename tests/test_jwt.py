"""JSON Web Tokens: Tandem's own (HS256, TANDEM_SECRET) and an identity provider's (RS256 and
ES256, keys from its JWKS URL), checked in process and against a live server over REST and
the WebSocket.

The identity provider is played by the test: it makes an RSA and an EC P-256 key and serves
their public halves as a JWKS document from a small HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from conftest import ServerFactory, ServerProcess, free_port
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from helpers import api, close_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from server.auth import AuthError, Principal, issue_token, verify_token
from server.cli import main
from server.idp import IdentityProvider, IdentityProviderConfigError
from server.settings import Settings
from server.signin import Authenticator
from shared.protocol import MSG_SYNC, SYNC_STEP1, decode_message

SECRET = "jwt-tests-secret-0123456789abcdefghij"  # 37 bytes: no short-key warning
ISSUER = "https://id.example.test/realms/tandem"
AUDIENCE = "tandem-server"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_b64(value: object) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def hs256_by_hand(header: dict[str, Any], claims: object, key: bytes) -> str:
    """A JWT signed with HMAC-SHA256 under any key, however wrong (PyJWT refuses a PEM)."""
    signing_input = f"{_json_b64(header)}.{_json_b64(claims)}"
    mac = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def unsigned(header: dict[str, Any], claims: object) -> str:
    """A JWT with alg none: no signature at all."""
    return f"{_json_b64({**header, 'alg': 'none'})}.{_json_b64(claims)}."


# -- Tandem's own tokens, in process ---------------------------------------------------------


def test_issue_and_verify_round_trip() -> None:
    before = int(time.time())
    token = issue_token(SECRET, "刘洋", doc="plan-1", read_only=True, ttl=600)
    principal = verify_token(SECRET, token)
    assert principal.user == "刘洋"
    assert principal.doc == "plan-1"
    assert principal.read_only is True
    assert principal.source == "tandem"
    assert principal.may_open("plan-1") and not principal.may_open("plan-2")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["iss"] == "tandem" and claims["sub"] == "刘洋"
    assert claims["doc"] == "plan-1" and claims["ro"] is True
    assert before <= claims["iat"] <= time.time()
    assert before + 599 <= claims["exp"] <= time.time() + 600
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    assert principal.token_id == claims["jti"]


def test_defaults_and_given_token_id() -> None:
    token = issue_token(SECRET, "ana", token_id="tok-7")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    # No expiry, no document, and "ro" only when true.
    assert set(claims) == {"iss", "sub", "iat", "jti"}
    assert verify_token(SECRET, token) == Principal("ana", token_id="tok-7")
    # Each token gets its own id.
    assert (
        verify_token(SECRET, issue_token(SECRET, "ana")).token_id
        != verify_token(SECRET, issue_token(SECRET, "ana")).token_id
    )


@pytest.mark.parametrize(("user", "doc"), [("", None), ("\ud800", None), ("ana", "")])
def test_issue_refuses_names_it_could_not_verify(user: str, doc: str | None) -> None:
    with pytest.raises(ValueError):
        issue_token(SECRET, user, doc=doc)


def test_tampered_signature_and_claims_are_refused() -> None:
    token = issue_token(SECRET, "ana", doc="d1")
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = {**claims, "sub": "admin"}
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    for bad in (f"{header}.{_json_b64(forged)}.{signature}", f"{header}.{payload}.{flipped}"):
        with pytest.raises(AuthError) as refused:
            verify_token(SECRET, bad)
        assert (refused.value.code, refused.value.reason) == (4401, "invalid token")


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # HS512
def test_alg_none_and_another_secret_are_refused() -> None:
    claims = {"iss": "tandem", "sub": "ana", "iat": int(time.time())}
    for bad in (
        unsigned({"typ": "JWT"}, claims),
        jwt.encode(claims, "another secret, just as long as ours", algorithm="HS256"),
        jwt.encode(claims, SECRET, algorithm="HS512"),
        hs256_by_hand({"alg": "HS256"}, claims, SECRET.encode() + b"x"),
    ):
        with pytest.raises(AuthError) as refused:
            verify_token(SECRET, bad)
        assert (refused.value.code, refused.value.reason) == (4401, "invalid token")
    # The same claims, rightly signed, pass: what was refused was the signature alone.
    assert verify_token(SECRET, jwt.encode(claims, SECRET, algorithm="HS256")).user == "ana"


def test_expired_tokens_say_so() -> None:
    with pytest.raises(AuthError) as refused:
        verify_token(SECRET, issue_token(SECRET, "ana", ttl=-1))
    assert (refused.value.code, refused.value.reason) == (4401, "token expired")
    with pytest.raises(AuthError, match="token expired"):
        verify_token(SECRET, issue_token(SECRET, "ana", expires=int(time.time()) - 5))


@pytest.mark.parametrize(
    "changes",
    [
        {"sub": 7},
        {"sub": ""},
        {"sub": None},
        {"doc": 3},
        {"doc": ""},
        {"doc": None},
        {"ro": "yes"},
        {"ro": 0},
        {"exp": "tomorrow"},
        {"exp": 9.99e12},
        {"iat": "now"},
        {"iat": None},
        {"jti": 12},
        {"iss": "someone-else"},
        {"aud": "tandem"},
    ],
    ids=repr,
)
def test_claims_of_the_wrong_type_are_refused(changes: dict[str, object]) -> None:
    claims: dict[str, object] = {"iss": "tandem", "sub": "ana", "iat": int(time.time())}
    claims.update(changes)
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(AuthError) as refused:
        verify_token(SECRET, token)
    assert (refused.value.code, refused.value.reason) == (4401, "invalid token")


async def test_authenticator_without_sign_in_and_without_a_token() -> None:
    assert await Authenticator(None).authenticate(None) == Principal("local")
    assert await Authenticator(None).authenticate("anything") == Principal("local")
    with pytest.raises(AuthError) as refused:
        await Authenticator(SECRET).authenticate(None)
    assert (refused.value.code, refused.value.reason) == (4401, "missing token")
    with pytest.raises(AuthError, match="missing token"):
        await Authenticator(SECRET).authenticate("")


async def test_revoked_token_ids_are_refused(provider: Provider) -> None:
    auth = Authenticator(SECRET, identity_provider(provider))
    revoked = {"gone-1", "gone-2"}
    auth.is_revoked = lambda token_id: token_id in revoked
    seen: list[dict[str, Any]] = []

    async def first_sign_in(claims: dict[str, Any]) -> None:
        seen.append(claims)

    auth.on_external_user = first_sign_in
    for token in (issue_token(SECRET, "ana", token_id="gone-1"), provider.rs256(jti="gone-2")):
        with pytest.raises(AuthError) as refused:
            await auth.authenticate(token)
        assert (refused.value.code, refused.value.reason) == (4401, "token revoked")
    assert seen == []  # a revoked provider token creates nobody
    assert (await auth.authenticate(issue_token(SECRET, "ana", token_id="kept"))).user == "ana"
    assert (await auth.authenticate(provider.es256(jti="kept"))).user == "mei"
    auth.close()


# -- a live server with a secret -------------------------------------------------------------


async def greeting(server: ServerProcess, doc_id: str, token: str) -> None:
    """Connect with `token`; the server must keep the socket open and send sync step 1."""
    async with connect(f"{server.ws_url}/{doc_id}?token={quote(token)}", open_timeout=10) as ws:
        async with asyncio.timeout(10):
            first = await ws.recv()
        assert isinstance(first, bytes)
        message = decode_message(first)
        assert (message.kind, message.sync) == (MSG_SYNC, SYNC_STEP1)
        await ws.ping()  # still open after the greeting


async def refused_on_socket(server: ServerProcess, doc_id: str, token: str) -> int | None:
    code, _ = await close_of(f"{server.ws_url}/{doc_id}?token={quote(token)}")
    return code


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_a_short_secret_is_logged_once_and_still_works(make_server: ServerFactory) -> None:
    server = await make_server(None, TANDEM_SECRET="short")
    async with api(server, issue_token("short", "ana")) as ana:
        assert (await ana.get("/docs")).status_code == 200
        assert (await ana.get("/docs")).status_code == 200
    log = server.log()
    assert log.count("TANDEM_SECRET is 5 bytes long; use at least 32") == 1
    assert "InsecureKeyLengthWarning" not in log


async def test_a_document_scoped_jwt_over_socket_and_rest(
    make_server: ServerFactory, database_url: str
) -> None:
    server = await make_server(database_url, TANDEM_SECRET=SECRET)
    async with api(server, issue_token(SECRET, "ana")) as ana:
        assert (
            await ana.post("/docs", json={"kind": "doc", "title": "a", "id": "d1"})
        ).status_code == 201
        assert (
            await ana.post("/docs", json={"kind": "doc", "title": "b", "id": "d2"})
        ).status_code == 201
    scoped = issue_token(SECRET, "guest", doc="d1", read_only=True, ttl=600)
    await greeting(server, "d1", scoped)
    assert await refused_on_socket(server, "d2", scoped) == 4403
    async with api(server, scoped) as guest:
        assert (await guest.get("/docs/d1")).status_code == 200
        assert (await guest.get("/docs/d2")).status_code == 403
        assert (await guest.get("/docs")).status_code == 403
        assert (await guest.patch("/docs/d1", json={"title": "x"})).status_code == 403
    for bad in (
        issue_token(SECRET, "guest", doc="d1", ttl=-5),
        issue_token("a different secret of the same length!", "guest", doc="d1"),
        unsigned({"typ": "JWT"}, {"iss": "tandem", "sub": "guest", "iat": int(time.time())}),
    ):
        assert await refused_on_socket(server, "d1", bad) == 4401
        async with api(server, bad) as http:
            assert (await http.get("/docs/d1")).status_code == 401


# -- an identity provider ----------------------------------------------------------------------


@dataclass
class Provider:
    """The test's identity provider: two signing keys, their JWKS served over HTTP."""

    url: str
    rsa_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    ec_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    fetches: int = 0
    failing: bool = False  # answer 503 instead of the key set

    def jwks(self) -> dict[str, Any]:
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa_key.public_key()))
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec_key.public_key()))
        return {
            "keys": [
                {**rsa_jwk, "kid": "rsa-1", "use": "sig", "alg": "RS256"},
                {**ec_jwk, "kid": "ec-1", "use": "sig", "alg": "ES256"},
            ]
        }

    def claims(self, **changes: object) -> dict[str, object]:
        """What the provider puts in a token for Mei, with `changes` (None: removed)."""
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "5b0c3f4e-8d7a-4c1e-9f2a-6e1d0c9b8a77",
            "preferred_username": "mei",
            "name": "Mei Chen",
            "email": "mei@example.test",
            "department": "logistics",
            "iat": now,
            "exp": now + 600,
        }
        claims.update(changes)
        return {name: value for name, value in claims.items() if value is not None}

    def rs256(self, kid: str = "rsa-1", **changes: object) -> str:
        return jwt.encode(self.claims(**changes), self.rsa_key, "RS256", headers={"kid": kid})

    def es256(self, kid: str = "ec-1", **changes: object) -> str:
        return jwt.encode(self.claims(**changes), self.ec_key, "ES256", headers={"kid": kid})

    def public_pem(self) -> bytes:
        return self.rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture
def provider() -> Iterator[Provider]:
    keys = Provider(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/jwks.json":
                self.send_error(404)
                return
            keys.fetches += 1
            if keys.failing:
                self.send_error(503)
                return
            body = json.dumps(keys.jwks()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the test output stays quiet

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    keys.url = f"http://127.0.0.1:{http.server_address[1]}/jwks.json"
    try:
        yield keys
    finally:
        http.shutdown()
        http.server_close()
        thread.join(5)


def refused_tokens(provider: Provider) -> list[tuple[str, str]]:
    """Tokens a server trusting `provider` (and SECRET) must refuse, each with its flaw."""
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = provider.claims()
    return [
        ("wrong issuer", provider.rs256(iss="https://evil.example.test")),
        ("wrong audience", provider.es256(aud="another-app")),
        ("no audience", provider.rs256(aud=None)),
        ("expired", provider.rs256(exp=int(time.time()) - 3600)),
        ("no expiry", provider.es256(exp=None)),
        ("alg none", unsigned({"kid": "rsa-1", "typ": "JWT"}, claims)),
        (
            "HS256 keyed with the public PEM",
            hs256_by_hand(
                {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}, claims, provider.public_pem()
            ),
        ),
        (
            "another key under its kid",
            jwt.encode(claims, other_rsa, "RS256", headers={"kid": "rsa-1"}),
        ),
        ("ES256 naming the RSA key", provider.es256(kid="rsa-1")),
        ("unknown kid", provider.rs256(kid="rsa-2")),
        ("no user claim", provider.rs256(preferred_username=None)),
        ("user claim not text", provider.es256(preferred_username=["mei"])),
    ]


def identity_provider(provider: Provider) -> IdentityProvider:
    return IdentityProvider(provider.url, ISSUER, AUDIENCE, "preferred_username")


async def test_identity_provider_tokens_in_process(provider: Provider) -> None:
    auth = Authenticator(SECRET, identity_provider(provider))
    seen: list[dict[str, Any]] = []

    async def first_sign_in(claims: dict[str, Any]) -> None:
        seen.append(claims)

    auth.on_external_user = first_sign_in
    for token in (provider.rs256(jti="id-1"), provider.es256(jti="id-2")):
        principal = await auth.authenticate(token)
        assert (principal.user, principal.source, principal.doc) == ("mei", "idp", None)
        assert principal.read_only is False
    assert [claims["jti"] for claims in seen] == ["id-1", "id-2"]
    assert {claims["email"] for claims in seen} == {"mei@example.test"}
    assert {claims["department"] for claims in seen} == {"logistics"}
    # Tandem's own tokens still work beside them, and do not call the hook.
    assert (await auth.authenticate(issue_token(SECRET, "ana"))).source == "tandem"
    assert len(seen) == 2
    for flaw, token in refused_tokens(provider):
        with pytest.raises(AuthError) as refused:
            await auth.authenticate(token)
        assert refused.value.code == 4401, flaw
    assert len(seen) == 2
    # The key set was fetched once and then served from the cache (the unknown kid may
    # not force a refresh this soon after the first fetch).
    assert provider.fetches == 1


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    header=st.fixed_dictionaries(
        {"alg": st.sampled_from(["RS256", "ES256"])},
        optional={"kid": st.one_of(st.sampled_from(["rsa-1", "ec-1"]), JSON), "crit": JSON},
    ),
    claims=st.one_of(JSON, st.dictionaries(st.sampled_from(["iss", "aud", "exp", "sub"]), JSON)),
    signature=st.binary(max_size=300),
)
def test_any_provider_shaped_token_is_a_principal_or_4401(
    provider: Provider, header: dict[str, Any], claims: object, signature: bytes
) -> None:
    """Tokens that go to the identity provider (their header names RS256 or ES256) but are
    forged: refused with 4401, never another exception."""
    token = f"{_json_b64(header)}.{_json_b64(claims)}.{_b64(signature)}"
    auth = Authenticator(SECRET, identity_provider(provider))
    try:
        with pytest.raises(AuthError) as refused:
            asyncio.run(auth.authenticate(token))
        assert refused.value.code == 4401
    finally:
        auth.close()


async def test_another_user_claim(provider: Provider) -> None:
    idp = IdentityProvider(provider.url, ISSUER, AUDIENCE, "email")
    assert (await idp.verify(provider.rs256())).user == "mei@example.test"
    claims = await idp.verify_claims(provider.es256())
    assert claims["name"] == "Mei Chen" and claims["sub"].startswith("5b0c")


async def test_without_a_secret_only_the_provider_signs_in(provider: Provider) -> None:
    auth = Authenticator(None, identity_provider(provider))
    assert (await auth.authenticate(provider.rs256())).user == "mei"
    for token in (issue_token(SECRET, "ana"), "junk", "a.b.c"):
        with pytest.raises(AuthError, match="invalid token"):
            await auth.authenticate(token)
    with pytest.raises(AuthError, match="missing token"):
        await auth.authenticate(None)


async def test_an_unreachable_key_set_refuses_with_4401(provider: Provider) -> None:
    idp = IdentityProvider(
        f"http://127.0.0.1:{free_port()}/jwks.json", ISSUER, AUDIENCE, "preferred_username"
    )
    with pytest.raises(AuthError) as refused:
        await idp.verify(provider.rs256())
    assert (refused.value.code, refused.value.reason) == (4401, "identity provider unavailable")


async def test_an_unreachable_provider_is_not_asked_again_at_once(provider: Provider) -> None:
    idp = IdentityProvider(provider.url, ISSUER, AUDIENCE, "preferred_username", retry_seconds=0.5)
    provider.failing = True
    for _ in range(3):
        with pytest.raises(AuthError, match="identity provider unavailable"):
            await idp.verify(provider.rs256())
    assert provider.fetches == 1  # the second and third were refused without a fetch
    provider.failing = False
    await asyncio.sleep(0.6)
    assert (await idp.verify(provider.rs256())).user == "mei"
    assert provider.fetches == 2
    idp.close()


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"TANDEM_JWT_AUDIENCE": AUDIENCE}, "TANDEM_JWT_ISSUER must be set"),
        ({"TANDEM_JWT_ISSUER": ISSUER}, "TANDEM_JWT_AUDIENCE must be set"),
        ({}, "TANDEM_JWT_ISSUER and TANDEM_JWT_AUDIENCE must be set"),
        (
            {
                "TANDEM_JWT_ISSUER": ISSUER,
                "TANDEM_JWT_AUDIENCE": AUDIENCE,
                "TANDEM_JWKS_URL": "file:///etc/passwd",
            },
            "http:// or https://",
        ),
    ],
)
def test_an_incomplete_provider_configuration_stops_the_start(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    complaint: str,
) -> None:
    for name in ("TANDEM_JWT_ISSUER", "TANDEM_JWT_AUDIENCE", "TANDEM_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TANDEM_JWKS_URL", "https://id.example.test/jwks.json")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(IdentityProviderConfigError, match=complaint):
        Authenticator.from_settings(Settings())
    assert main(["serve", "--port", str(free_port())]) == 2
    out, err = capsys.readouterr()
    assert out == "" and complaint in err and err.startswith("tandem serve: ")


async def test_identity_provider_tokens_on_a_live_server(
    make_server: ServerFactory, database_url: str, provider: Provider
) -> None:
    server = await make_server(
        database_url,
        TANDEM_SECRET=SECRET,
        TANDEM_JWKS_URL=provider.url,
        TANDEM_JWT_ISSUER=ISSUER,
        TANDEM_JWT_AUDIENCE=AUDIENCE,
    )
    async with api(server, provider.rs256()) as mei:
        created = await mei.post("/docs", json={"kind": "doc", "title": "plan", "id": "plan"})
        assert created.status_code == 201, created.text
        assert created.json()["created_by"] == "mei"
        # Created on first sign-in from the provider's claims (no department "logistics"
        # exists, so none).
        me = (await mei.get("/me")).json()
        assert (me["id"], me["name"], me["email"], me["role"]) == (
            "mei",
            "Mei Chen",
            "mei@example.test",
            "member",
        )
    for token in (provider.rs256(), provider.es256(), issue_token(SECRET, "ana")):
        async with api(server, token) as http:
            assert (await http.get("/docs")).status_code == 200
        await greeting(server, "plan", token)
    for flaw, token in refused_tokens(provider):
        async with api(server, token) as http:
            response = await http.get("/docs")
        assert response.status_code == 401, flaw
        assert response.json()["error"]["status"] == 401
        assert await refused_on_socket(server, "plan", token) == 4401, flaw
    log = server.log()
    assert "Traceback" not in log and "internal error" not in log
    assert "ws open doc=plan" in log and "user=mei" in log
