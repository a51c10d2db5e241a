"""Strength test of the admin token: the spec's "≥32 random bytes, base64-encoded"."""

from __future__ import annotations

import base64
import binascii
import secrets

MIN_TOKEN_BYTES = 32
# Strings that mark a copied example or a human-chosen value. Only words of six or more letters:
# shorter ones occur by chance in random base64 too often to reject on (a 4-letter word does in
# roughly 1 of 25,000 tokens).
_PLACEHOLDERS = (
    "changeme",
    "change-me",
    "change_me",
    "example",
    "password",
    "passwd",
    "secret",
    "placeholder",
    "generated",
    "base64-encoded",
    "replace",
)


def token_weakness(token: str) -> str | None:
    """Why this token is not an acceptable admin token, or None when it is."""
    lowered = token.lower()
    for word in _PLACEHOLDERS:
        if word in lowered:
            return f"contains the placeholder word {word!r}: generate a random token"
    data = _decode(token.strip())
    if data is None:
        return "is not base64: use `themisdb token generate` or `openssl rand -base64 32`"
    if len(data) < MIN_TOKEN_BYTES:
        return f"decodes to {len(data)} bytes; at least {MIN_TOKEN_BYTES} random bytes required"
    for period in range(1, 9):
        if all(data[i] == data[i % period] for i in range(len(data))):
            return "repeats a short byte pattern: it is not random"
    step = (data[1] - data[0]) % 256
    if all((data[i + 1] - data[i]) % 256 == step for i in range(len(data) - 1)):
        return "is a sequence of bytes (0, 1, 2, ...): it is not random"
    if len(set(data)) < 16:
        return f"has only {len(set(data))} distinct byte values: it is not random"
    if all(32 <= b < 127 for b in data):
        # 32 random bytes are all printable with probability ~1e-14: this is encoded text.
        return "decodes to readable text (a passphrase), not to random bytes"
    return None


def generate_token() -> str:
    """32 bytes from the OS CSPRNG, base64; redrawn in the astronomically rare case that the
    result trips one of the heuristics above, so a generated token always passes the check."""
    while True:
        token = base64.b64encode(secrets.token_bytes(MIN_TOKEN_BYTES)).decode("ascii")
        if token_weakness(token) is None:
            return token


def _decode(token: str) -> bytes | None:
    padded = token + "=" * (-len(token) % 4)
    for altchars in (None, b"-_"):
        try:
            return base64.b64decode(padded, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
    return None
