"""`tandem token`: flags, default and unlimited lifetimes, refused arguments."""

from __future__ import annotations

import base64
import json
import time

import pytest

from server.auth import Principal, verify_token
from server.cli import main

SECRET = "cli-token-secret-of-32-bytes-or-more"
DAY = 24 * 3600


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_SECRET", SECRET)
    monkeypatch.delenv("TANDEM_TOKEN_TTL_SECONDS", raising=False)


def claims(token: str) -> dict[str, object]:
    """The claims of a JWT, read without checking it (verify_token checks it)."""
    header, body, _ = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["alg"] == "HS256"
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return decoded


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    assert main(["token", *args]) == 0
    out, err = capsys.readouterr()
    return out, err


def test_every_flag_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["token", "--help"])
    assert exit.value.code == 0
    lines = capsys.readouterr().out.splitlines() + [""]
    for flag in ("--user", "--doc", "--read-only", "--ttl"):
        index = next(i for i, line in enumerate(lines) if line.strip().startswith(flag))
        # After the flag and its metavar comes the help, on its line or (wrapped) the next.
        described = lines[index].strip()[len(flag) :].split(maxsplit=1)
        following = lines[index + 1].strip()
        assert len(described) == 2 or (following and not following.startswith("-")), lines


def test_default_lifetime_is_thirty_days(capsys: pytest.CaptureFixture[str]) -> None:
    before = time.time()
    out, err = run(capsys, "--user", "alice", "--doc", "plan.2026", "--read-only")
    token = out.strip()
    assert out == token + "\n"  # the token alone on stdout
    principal = verify_token(SECRET, token)
    assert principal == Principal("alice", "plan.2026", True, token_id=principal.token_id)
    assert principal.token_id and principal.token_id == claims(token)["jti"]
    exp = claims(token)["exp"]
    assert isinstance(exp, int)
    assert before + 30 * DAY - 1 <= exp <= time.time() + 30 * DAY
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp)) in err
    assert token not in err


def test_default_lifetime_comes_from_the_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_TOKEN_TTL_SECONDS", "3600")
    out, _ = run(capsys, "--user", "bob")
    exp = claims(out.strip())["exp"]
    assert isinstance(exp, int) and abs(exp - (time.time() + 3600)) <= 2


def test_explicit_ttl(capsys: pytest.CaptureFixture[str]) -> None:
    out, err = run(capsys, "--user", "bob", "--ttl", "120")
    exp = claims(out.strip())["exp"]
    assert isinstance(exp, int) and abs(exp - (time.time() + 120)) <= 2
    assert "expires" in err


def test_ttl_zero_never_expires_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    out, err = run(capsys, "--user", "carol", "--ttl", "0")
    token = out.strip()
    assert "exp" not in claims(token)
    assert verify_token(SECRET, token).user == "carol"
    assert verify_token(SECRET, token).doc is None
    assert verify_token(SECRET, token).read_only is False
    assert "never expires" in err


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--doc", "../etc"], "document id"),
        (["--doc", ""], "document id"),
        (["--doc", "a/b"], "document id"),
        (["--doc", "x" * 129], "document id"),
        (["--ttl", "-1"], "--ttl"),
        (["--ttl", "nan"], "--ttl"),
        (["--ttl", "inf"], "--ttl"),
        (["--ttl", "soon"], "--ttl"),
        (["--user", ""], "user name"),
        (["--user", "caf\udce9"], "user name"),  # undecodable bytes in argv
    ],
)
def test_refused_arguments_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], complaint: str
) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["token", "--user", "dave", *args])
    assert exit.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert complaint in err


def test_without_a_secret_it_refuses(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TANDEM_SECRET")
    assert main(["token", "--user", "erin"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "TANDEM_SECRET" in err
