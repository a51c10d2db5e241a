"""The admin-token strength rule and `token generate`."""

from __future__ import annotations

import base64

import pytest

from themisdb.posture import generate_token, token_weakness


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_generated_tokens_are_32_random_bytes_and_pass() -> None:
    tokens = {generate_token() for _ in range(500)}
    assert len(tokens) == 500
    for token in tokens:
        assert len(base64.b64decode(token, validate=True)) == 32
        assert token_weakness(token) is None


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (b64(b"\x00" * 32), "repeats"),
        (b64(b"abcd" * 8), "repeats"),
        (b64(bytes(range(32))), "sequence"),
        (b64(bytes(range(100, 164, 2))), "sequence"),
        (b64(b"my-very-long-and-memorable-passphrase!!"), "readable text"),
        (b64(bytes([1, 2, 3, 4, 5, 6, 7, 9, 8] * 4)), "distinct byte"),
        (b64(b"\x8f" * 31), "31 bytes"),
        ("changeme-changeme-changeme-changeme-change", "placeholder"),
        ("<base64-encoded-random-32-bytes>", "placeholder"),
        ("not base64 at all!!", "not base64"),
        ("", "0 bytes"),
    ],
)
def test_weak_tokens_are_named(token: str, reason: str) -> None:
    weakness = token_weakness(token)
    assert weakness is not None
    assert reason in weakness


def test_urlsafe_and_unpadded_base64_are_accepted() -> None:
    raw = bytes.fromhex("fbff3e9a1c77d2e04b5f86a3c19e02d74b8f61a0c3e5d2b7f4096a1e5c3f0b2d")
    token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert "-" in token or "_" in token
    assert token_weakness(token) is None
