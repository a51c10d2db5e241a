"""Who is calling, and what they may do: scopes and an optional restriction to tables."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from themisdb.errors import Forbidden

Clock = Callable[[], float]  # seconds since the epoch; tests inject their own

DATA_READ = "data:read"
DATA_WRITE = "data:write"
PII_READ = "pii:read"  # see fields classified pii/restricted unmasked
AUDIT_READ = "audit:read"
KEYS_ADMIN = "keys:admin"  # master keys: status, rotation, re-encryption
ADMIN = "admin"  # every scope
AUTHENTICATED = "authenticated"  # any valid credential (an endpoint's scope, never granted)
ALL_SCOPES = frozenset({DATA_READ, DATA_WRITE, PII_READ, AUDIT_READ, KEYS_ADMIN, ADMIN})


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    ``name`` says what kind of credential it is (``admin``, ``readonly``, ``analyst``,
    ``key:<id>``, ``session:<id>``, ``anonymous``); ``owner`` is the credential a session was
    made from (its own name otherwise); ``fingerprint`` is the first 12 hex digits of the
    SHA-256 of the presented token, safe to log and audit. ``tables`` None means every table.
    """

    name: str
    scopes: frozenset[str]
    fingerprint: str
    tables: frozenset[str] | None = None
    owner: str = ""

    @property
    def identity(self) -> str:
        """The credential behind this caller: what sessions are listed and revoked by."""
        return self.owner or self.name

    def allows(self, scope: str) -> bool:
        return scope == AUTHENTICATED or ADMIN in self.scopes or scope in self.scopes

    def require(self, scope: str) -> None:
        if not self.allows(scope):
            raise Forbidden(f"this endpoint needs scope {scope}", code="insufficient_scope")

    def may_use_table(self, table: str) -> bool:
        return self.tables is None or table in self.tables

    def require_table(self, table: str) -> None:
        if not self.may_use_table(table):
            raise Forbidden(f"this credential may not use table {table}", code="table_forbidden")


ANONYMOUS = Principal("anonymous", ALL_SCOPES, "anonymous")


def split_token(token: str) -> tuple[str, str]:
    """(id, secret) of an API key or session token ``<prefix>_<id>_<secret>``."""
    parts = token.split("_", 2)
    return (parts[1], parts[2]) if len(parts) == 3 else ("", "")
