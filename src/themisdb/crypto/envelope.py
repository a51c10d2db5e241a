"""Envelope encryption of entity fields. The only place that encrypts bulk data.

Each table has data keys (DEKs), one per master key version; the newest encrypts new writes.
A DEK is stored only wrapped by the key provider; unwrapped DEKs are cached for
THEMIS_DEK_CACHE_TTL seconds, so provider calls track the number of DEKs, not of writes.

A field value is JSON-encoded, then sealed with AES-256-GCM under the table's DEK. The AAD binds
table, primary key, field name and DEK version: a ciphertext copied to another entity, field or
table fails to decrypt (IntegrityError), never yields another entity's plaintext. Stored form:
``"$themis$enc$v<version>$<base64(nonce || ciphertext || tag)>"``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from themisdb.errors import IntegrityError, KeyProviderUnavailable
from themisdb.keys import Health, HealthChecked, KeyProvider, Rewrappable, split_header
from themisdb.storage import Op, Storage

_T = TypeVar("_T")

_log = logging.getLogger(__name__)
PREFIX = "$themis$enc$v"
_NONCE = 12


def is_ciphertext(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def _field_aad(table: str, pk: str, field: str, version: int) -> bytes:
    return b"themis:field\x1f%s\x1f%s\x1f%s\x1fv%d" % (
        table.encode(),
        pk.encode(),
        field.encode(),
        version,
    )


def _dek_aad(table: str, version: int) -> bytes:
    return b"themis:dek\x1f%s\x1fv%d" % (table.encode(), version)


@dataclass
class _Cached:
    dek: AESGCM
    expires: float


class Envelope:
    """Encrypts and decrypts the fields named by the schema, with per-table DEKs."""

    def __init__(
        self,
        provider: KeyProvider,
        storage: Storage,
        *,
        ttl: float,
        debug_dir: str | None = None,
        _clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.storage = storage
        self.ttl = ttl
        self.provider_calls = 0  # wrap + unwrap calls made, for metrics and the benchmark
        self._clock = _clock
        self._cache: dict[tuple[str, int], _Cached] = {}
        self._current: dict[str, int] = {}  # newest DEK version per table (this process writes)
        self._lock = threading.Lock()
        self._create_lock = threading.Lock()  # two writers must never create rival DEKs
        self._debug = Path(debug_dir) if debug_dir else None
        # Writes need the key manager to be there *now*, not just a cached DEK: a monitor
        # thread keeps this flag current, and every failed provider call clears it at once.
        self._available = True
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    # --- key manager availability ---------------------------------------------------------------

    def check_health(self) -> Health:
        """Ask the provider now and update the availability that writes consult."""
        if not isinstance(self.provider, HealthChecked):
            return Health(True, f"{self.provider.name}: no health probe")
        health = self.provider.health()
        if health.ok != self._available:
            state = "available again" if health.ok else health.detail
            _log.warning("key provider %s: %s", self.provider.name, state)
        self._available = health.ok
        return health

    def start_monitor(self, interval: float = 1.0) -> None:
        if not isinstance(self.provider, HealthChecked) or self._monitor is not None:
            return

        def watch() -> None:
            while not self._stop.wait(interval):
                self.check_health()

        self._monitor = threading.Thread(target=watch, name="themis-key-monitor", daemon=True)
        self._monitor.start()

    def stop_monitor(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=10)

    @property
    def available(self) -> bool:
        return self._available

    def _call(self, operation: Callable[[], _T]) -> _T:
        self.provider_calls += 1
        try:
            return operation()
        except KeyProviderUnavailable:
            self._available = False
            raise

    # --- data keys ------------------------------------------------------------------------------

    def _current_version(self, table: str) -> int | None:
        if table not in self._current:
            deks = self.storage.deks(table)
            if not deks:
                return None
            self._current[table] = deks[-1][1]
        return self._current[table]

    def _dek(self, table: str, version: int) -> AESGCM:
        now = self._clock()
        with self._lock:
            cached = self._cache.get((table, version))
            if cached is not None and cached.expires > now:
                return cached.dek
        wrapped = next((w for t, v, w, _ in self.storage.deks(table) if v == version), None)
        if wrapped is None:
            raise IntegrityError  # a ciphertext naming a DEK this database never had
        raw = self._call(
            lambda: self.provider.unwrap(base64.b64decode(wrapped), aad=_dek_aad(table, version))
        )
        dek = AESGCM(raw)
        with self._lock:
            self._cache[(table, version)] = _Cached(dek, now + self.ttl)
        return dek

    def ensure_dek(self, table: str) -> int:
        """The table's DEK version for new writes; creates (and durably stores) the first one
        or one for a newer master key version."""
        master = int(self.provider.current_key_id().removeprefix("v"))
        current = self._current_version(table)
        if current is not None and current >= master:
            return current
        with self._create_lock:
            current = self._current_version(table)
            if current is not None and current >= master:
                return current  # another writer created it while we waited
            raw = secrets.token_bytes(32)
            wrapped = self._call(lambda: self.provider.wrap(raw, aad=_dek_aad(table, master)))
            encoded = base64.b64encode(wrapped).decode("ascii")
            self.storage.write([Op("put_dek", table, str(master), encoded)])
            with self._lock:
                self._cache[(table, master)] = _Cached(AESGCM(raw), self._clock() + self.ttl)
            self._current[table] = master
        return master

    def rewrap_all(self) -> int:
        """After a master key rotation: rewrap every stored DEK under the newest master key
        version, then give each table a DEK of that version for new writes."""
        deks = self.storage.deks()
        if isinstance(self.provider, Rewrappable):
            # Inside the key manager, in batches: the data keys never come out (Vault rewrap).
            provider = self.provider
            olds = [base64.b64decode(wrapped) for _, _, wrapped, _ in deks]
            news = self._call(lambda: provider.rewrap_many(olds)) if olds else []
        else:
            news = []
            for table, version, wrapped, _ in deks:
                aad = _dek_aad(table, version)
                raw = self._call(partial(self.provider.unwrap, base64.b64decode(wrapped), aad=aad))
                news.append(self._call(partial(self.provider.wrap, raw, aad=aad)))
        ops = [
            Op("put_dek", table, str(version), base64.b64encode(new).decode("ascii"))
            for (table, version, _, _), new in zip(deks, news, strict=True)
        ]
        if ops:
            self.storage.write(ops)  # one transaction: all rewrapped, or none
        for table in {t for t, _, _, _ in deks}:
            self.ensure_dek(table)
        return len(ops)

    def forget(self) -> None:
        """Drop every cached DEK (tests and shutdown)."""
        with self._lock:
            self._cache.clear()

    # --- fields ---------------------------------------------------------------------------------

    def encrypt_fields(
        self, table: str, pk: str, entity: dict[str, Any], fields: frozenset[str]
    ) -> dict[str, Any]:
        present = [f for f in fields if f in entity]
        if not present:
            return entity
        if not self._available:
            raise KeyProviderUnavailable(f"{self.provider.name}: the key manager is unavailable")
        version = self.ensure_dek(table)
        dek = self._dek(table, version)
        sealed = dict(entity)
        for field in present:
            plaintext = json.dumps(entity[field], ensure_ascii=False, separators=(",", ":"))
            nonce = secrets.token_bytes(_NONCE)
            body = nonce + dek.encrypt(
                nonce, plaintext.encode(), _field_aad(table, pk, field, version)
            )
            sealed[field] = f"{PREFIX}{version}${base64.b64encode(body).decode('ascii')}"
            self._debug_record("encrypt", table, pk, field, plaintext, sealed[field])
        return sealed

    def decrypt_fields(self, table: str, pk: str, entity: dict[str, Any]) -> dict[str, Any]:
        """Decrypt every ciphertext field (whatever the schema says now: a field that stopped
        being encrypted still has old ciphertexts)."""
        opened = entity
        for field, value in entity.items():
            if not is_ciphertext(value):
                continue
            if opened is entity:
                opened = dict(entity)
            opened[field] = self._open(table, pk, field, value)
        return opened

    def _open(self, table: str, pk: str, field: str, value: str) -> Any:
        try:
            version_text, encoded = value[len(PREFIX) :].split("$", 1)
            version = int(version_text)
            body = base64.b64decode(encoded, validate=True)
        except (ValueError, binascii.Error):
            raise IntegrityError from None
        if len(body) < _NONCE + 16:
            raise IntegrityError
        dek = self._dek(table, version)
        try:
            plaintext = dek.decrypt(
                body[:_NONCE], body[_NONCE:], _field_aad(table, pk, field, version)
            )
        except InvalidTag:
            raise IntegrityError from None
        self._debug_record("decrypt", table, pk, field, plaintext.decode(), value)
        return json.loads(plaintext)

    def master_versions(self) -> str:
        return self.provider.current_key_id()

    def _debug_record(
        self, op: str, table: str, pk: str, field: str, plaintext: str, ciphertext: str
    ) -> None:
        """THEMIS_DEBUG_ENC_DIR (development only; production refuses it): the danger the spec
        names, kept behind the gate. Never writes key material."""
        if self._debug is None:
            return
        record = {
            "time": time.time(),
            "op": op,
            "table": table,
            "key": pk,
            "field": field,
            "plaintext": plaintext,
            "ciphertext_header": ciphertext[: ciphertext.index("$", len(PREFIX)) + 1],
        }
        try:
            self._debug.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(self._debug / "encryption-debug.ndjson", "a", encoding="utf-8") as out:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as exc:
            _log.warning("THEMIS_DEBUG_ENC_DIR: cannot write a debug record: %s", exc.strerror)


def wrapped_version(wrapped_b64: str) -> int:
    """The master key version a stored wrapped DEK was wrapped under."""
    return split_header(base64.b64decode(wrapped_b64))[0]


__all__ = ["PREFIX", "Envelope", "KeyProviderUnavailable", "is_ciphertext", "wrapped_version"]
