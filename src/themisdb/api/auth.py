"""Bearer-token authentication: static tokens, API keys and session tokens.

Static tokens (``THEMIS_TOKEN_ADMIN``, its ``_PREVIOUS`` until the deadline, ``_READONLY``,
``_ANALYST``) are compared in constant time: the presented token's SHA-256 is compared with
``hmac.compare_digest`` against every configured token's SHA-256 (no early exit, no length
leak). API keys (``thk_…``) and sessions (``ths_…``) are looked up by id and their secret's
hash compared the same way. Tokens are never logged; principals are identified by a short
fingerprint.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from starlette.requests import Request

from themisdb.access import (
    ALL_SCOPES,
    ANONYMOUS,
    API_KEY_PREFIX,
    DATA_READ,
    PII_READ,
    SESSION_PREFIX,
    ApiKey,
    ApiKeyStore,
    Clock,
    Principal,
    SessionStore,
)
from themisdb.errors import NotFound, Unauthorized
from themisdb.settings import Settings

MAX_TOKEN_LENGTH = 4096


@dataclass(frozen=True)
class _Credential:
    name: str
    digest: bytes
    scopes: frozenset[str]
    until: float | None = None  # the previous admin token: refused from then on


class Authenticator:
    """Turns a request's Authorization header into a Principal, or raises Unauthorized."""

    def __init__(
        self,
        settings: Settings,
        *,
        keys: ApiKeyStore | None = None,
        sessions: SessionStore | None = None,
        clock: Clock = time.time,
    ) -> None:
        until = settings.token_admin_previous_until
        configured = [
            ("admin", settings.token_admin, ALL_SCOPES, None),
            (
                "admin-previous",
                settings.token_admin_previous,
                ALL_SCOPES,
                until.timestamp() if until else None,
            ),
            ("readonly", settings.token_readonly, frozenset({DATA_READ, PII_READ}), None),
            ("analyst", settings.token_analyst, frozenset({DATA_READ}), None),
        ]
        self._credentials = [
            _Credential(name, _digest(secret.get_secret_value()), scopes, deadline)
            for name, secret, scopes, deadline in configured
            if secret is not None
        ]
        self.keys = keys
        self.sessions = sessions
        self._clock = clock
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
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized("expected 'Authorization: Bearer <token>'", code="malformed_token")
        return self.resolve(token)

    def resolve(self, token: str) -> Principal:
        fingerprint = "token:" + _digest(token).hex()[:12]
        if token.startswith(SESSION_PREFIX) and self.sessions is not None:
            session = self.sessions.resolve(token)
            try:
                parent = self._parent(session.parent)
            except Unauthorized:
                self.sessions.forget(session.id)
                raise
            return Principal(
                f"session:{session.id}", parent.scopes, fingerprint, parent.tables, parent.identity
            )
        if token.startswith(API_KEY_PREFIX) and self.keys is not None:
            return _key_principal(self.keys.resolve(token), fingerprint)
        credential = self._static(_digest(token))
        return Principal(credential.name, credential.scopes, fingerprint)

    def parent_of(self, principal: Principal, token: str) -> str:
        """How a session made by ``principal`` (who presented ``token``) re-checks it."""
        if principal.name.startswith("key:"):
            return principal.name
        return "static:" + _digest(token).hex()

    def _static(self, digest: bytes) -> _Credential:
        match: _Credential | None = None
        for credential in self._credentials:  # no early exit: time independent of the match
            if hmac.compare_digest(digest, credential.digest):
                match = credential
        if match is None:
            raise Unauthorized("the token is not valid", code="invalid_token")
        if match.until is not None and self._clock() >= match.until:
            raise Unauthorized(
                "the previous admin token is no longer accepted (its deadline has passed)",
                code="token_expired",
            )
        return match

    def _parent(self, parent: str) -> Principal:
        """The credential a session was made from, as it is now (revoked, rotated: refused)."""
        kind, _, ident = parent.partition(":")
        if kind == "key" and self.keys is not None:
            try:
                key = self.keys.get(ident)
            except NotFound:
                key = None
            if key is None or not key.active(self._clock()):
                raise Unauthorized(
                    "the API key this session was made from is no longer valid",
                    code="session_revoked",
                )
            return _key_principal(key, "")
        if kind == "static":
            try:
                credential = self._static(bytes.fromhex(ident))
            except Unauthorized as exc:
                raise Unauthorized(
                    "the token this session was made from is no longer valid",
                    code="session_revoked",
                ) from exc
            return Principal(credential.name, credential.scopes, "")
        raise Unauthorized("the token is not valid", code="invalid_token")


def _key_principal(key: ApiKey, fingerprint: str) -> Principal:
    tables = frozenset(key.tables) if key.tables is not None else None
    return Principal(f"key:{key.id}", frozenset(key.scopes), fingerprint, tables)


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
