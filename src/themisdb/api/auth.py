"""Bearer-token authentication and scopes.

Tokens are compared in constant time: the presented token's SHA-256 is compared with
``hmac.compare_digest`` against every configured token's SHA-256 (no early exit, no length
leak). Tokens are never logged; principals are identified by a short fingerprint.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from starlette.requests import Request

from themisdb.errors import Forbidden, Unauthorized
from themisdb.settings import Settings

DATA_READ = "data:read"
DATA_WRITE = "data:write"
PII_READ = "pii:read"  # see fields classified pii/restricted unmasked
AUDIT_READ = "audit:read"
ADMIN = "admin"
AUTHENTICATED = "authenticated"  # any valid credential
ALL_SCOPES = frozenset({DATA_READ, DATA_WRITE, PII_READ, AUDIT_READ, ADMIN})


@dataclass(frozen=True)
class Principal:
    name: str  # admin | readonly | analyst | anonymous
    scopes: frozenset[str]
    fingerprint: str  # first 12 hex of SHA-256 of the token: safe to log and audit

    def allows(self, scope: str) -> bool:
        return scope == AUTHENTICATED or scope in self.scopes


ANONYMOUS = Principal("anonymous", ALL_SCOPES, "anonymous")


@dataclass(frozen=True)
class _Credential:
    name: str
    digest: bytes
    scopes: frozenset[str]


class Authenticator:
    """Turns a request's Authorization header into a Principal, or raises."""

    def __init__(self, settings: Settings) -> None:
        configured = [
            ("admin", settings.token_admin, ALL_SCOPES),
            ("readonly", settings.token_readonly, frozenset({DATA_READ, PII_READ})),
            ("analyst", settings.token_analyst, frozenset({DATA_READ})),
        ]
        self._credentials = [
            _Credential(name, _digest(secret.get_secret_value()), scopes)
            for name, secret, scopes in configured
            if secret is not None
        ]
        # The spec's development default: no admin token means no token enforcement.
        self.open = not settings.production and settings.token_admin is None

    def authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization")
        if header is None:
            if self.open:
                return ANONYMOUS
            raise Unauthorized("a Bearer token is required", code="missing_token")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 4096:
            raise Unauthorized("expected 'Authorization: Bearer <token>'", code="malformed_token")
        digest = _digest(token)
        match: _Credential | None = None
        for credential in self._credentials:  # no early exit: time independent of the match
            if hmac.compare_digest(digest, credential.digest):
                match = credential
        if match is None:
            raise Unauthorized("the token is not valid", code="invalid_token")
        return Principal(match.name, match.scopes, "token:" + digest.hex()[:12])


def require(principal: Principal, scope: str) -> None:
    if not principal.allows(scope):
        raise Forbidden(f"this endpoint needs scope {scope}", code="insufficient_scope")


def fingerprint(header: str | None) -> str:
    """Who tried, for audit events: the fingerprint of a presented token (never the token)."""
    if not header:
        return "anonymous"
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "malformed"
    return "token:" + _digest(token.strip()).hex()[:12]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
