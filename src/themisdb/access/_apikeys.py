"""Named API keys with scopes, an optional table restriction and an optional expiry.

Only the SHA-256 of a key's secret is stored (in the database's meta table, through the one
writer, so the change is in the logical log). The secret is returned once, at creation:
``thk_<id>_<secret>``. Every use reads the key's record afresh (a point read), so a revocation
or a scope change holds from the very next request, in every process that reads this data.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, replace

from themisdb.access._principal import ALL_SCOPES, Clock, split_token
from themisdb.errors import NotFound, Unauthorized, Unprocessable
from themisdb.storage import Op, Storage, check_table

PREFIX = "thk_"
_META = "api_key:"
_ID = re.compile(r"[0-9a-f]{12}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_DUMMY = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: tuple[str, ...]
    tables: tuple[str, ...] | None  # None: every table
    created: float
    expires: float | None
    revoked: float | None
    digest: str  # SHA-256 hex of the secret

    def public(self) -> dict[str, object]:
        """What may be shown: everything but the digest."""
        shown = asdict(self)
        del shown["digest"]
        return shown

    def active(self, now: float) -> bool:
        return self.revoked is None and (self.expires is None or now < self.expires)


def check_scopes(scopes: list[str]) -> tuple[str, ...]:
    unknown = sorted(set(scopes) - ALL_SCOPES)
    if unknown or not scopes:
        raise Unprocessable(
            f"scopes must be a non-empty list of: {', '.join(sorted(ALL_SCOPES))}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else ""),
            code="invalid_scopes",
        )
    return tuple(sorted(set(scopes)))


def check_tables(tables: list[str] | None) -> tuple[str, ...] | None:
    if tables is None:
        return None
    if not tables:
        raise Unprocessable(
            "tables must be omitted (every table) or non-empty", code="invalid_tables"
        )
    return tuple(sorted({check_table(t) for t in tables}))


class ApiKeyStore:
    def __init__(self, storage: Storage, *, clock: Clock = time.time) -> None:
        self._storage = storage
        self._clock = clock

    def create(
        self,
        name: str,
        scopes: list[str],
        tables: list[str] | None = None,
        expires: float | None = None,
    ) -> tuple[str, ApiKey]:
        """A new key and its secret token (shown once; only its hash is kept)."""
        if not _NAME.fullmatch(name):
            raise Unprocessable(
                "name: 1-64 characters of letters, digits and _ . @ -, starting with a letter "
                "or digit",
                code="invalid_name",
            )
        now = self._clock()
        if expires is not None and expires <= now:
            raise Unprocessable("expires must be in the future", code="invalid_expiry")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        key = ApiKey(
            key_id,
            name,
            check_scopes(scopes),
            check_tables(tables),
            now,
            expires,
            None,
            hashlib.sha256(secret.encode()).hexdigest(),
        )
        self._save(key)
        return f"{PREFIX}{key_id}_{secret}", key

    def get(self, key_id: str) -> ApiKey:
        raw = self._storage.meta(_META + key_id) if _ID.fullmatch(key_id) else None
        if raw is None:
            raise NotFound(f"no API key {key_id}", code="api_key_not_found")
        return _decode(raw)

    def all(self) -> list[ApiKey]:
        keys = [_decode(raw) for raw in self._storage.meta_items(_META).values()]
        return sorted(keys, key=lambda k: k.created)

    def change(
        self, key_id: str, *, scopes: list[str] | None, tables: list[str] | None, all_tables: bool
    ) -> tuple[ApiKey, ApiKey]:
        """(before, after) of a change of scopes and/or tables (a role change)."""
        before = self.get(key_id)
        if before.revoked is not None:
            raise Unprocessable(f"API key {key_id} is revoked", code="api_key_revoked")
        after = before
        if scopes is not None:
            after = replace(after, scopes=check_scopes(scopes))
        if all_tables:
            after = replace(after, tables=None)
        elif tables is not None:
            after = replace(after, tables=check_tables(tables))
        self._save(after)
        return before, after

    def revoke(self, key_id: str) -> ApiKey:
        key = self.get(key_id)
        if key.revoked is None:
            key = replace(key, revoked=self._clock())
            self._save(key)
        return key

    def resolve(self, token: str) -> ApiKey:
        """The active key of ``token``, or Unauthorized. Unknown ids cost the same hash and
        comparison as known ones; only the holder of the right secret learns that a key has
        expired or was revoked."""
        key_id, secret = split_token(token)
        try:
            key: ApiKey | None = self.get(key_id)
        except NotFound:
            key = None
        presented = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
        if not hmac.compare_digest(presented, key.digest if key else _DUMMY) or key is None:
            raise Unauthorized("the token is not valid", code="invalid_token")
        if key.revoked is not None:
            raise Unauthorized("this API key was revoked", code="api_key_revoked")
        if not key.active(self._clock()):
            raise Unauthorized("this API key has expired", code="api_key_expired")
        return key

    def _save(self, key: ApiKey) -> None:
        body = json.dumps(asdict(key), sort_keys=True, separators=(",", ":"))
        self._storage.write([Op("set_meta", "_meta", _META + key.id, body)])


def _decode(raw: str) -> ApiKey:
    data = json.loads(raw)
    tables = data["tables"]
    return ApiKey(
        id=str(data["id"]),
        name=str(data["name"]),
        scopes=tuple(data["scopes"]),
        tables=tuple(tables) if tables is not None else None,
        created=float(data["created"]),
        expires=None if data["expires"] is None else float(data["expires"]),
        revoked=None if data["revoked"] is None else float(data["revoked"]),
        digest=str(data["digest"]),
    )
