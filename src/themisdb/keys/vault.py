"""Master keys in the transit engine of HashiCorp Vault (or OpenBao): the ``vault`` provider.

The master key never leaves Vault. Wrapping a DEK is a transit ``encrypt``; unwrapping is a
transit ``decrypt``; rotation and rewrapping happen inside Vault.

Layout of a wrapped DEK::

    b"themis:v<N>:" + b"vault:v<N>:<base64>"

the ThemisDB header (``_base.with_header``) in front of Vault's own ciphertext; both carry the
transit key version N and must agree. Transit has no associated data, so the AAD travels inside
the encrypted plaintext (``pack_aad``) and is compared after decryption (``unpack_aad``).

The transit key (``THEMIS_VAULT_TRANSIT_KEY``, default ``themisdb-<THEMIS_CLUSTER_ID>``) is created
by ``themisdb keys init`` as aes256-gcm96, ``derived`` (every request passes a context from
which Vault derives the actual key), not exportable, with no plaintext backup. The context is
the cluster id (or the key name when no cluster id is set): a ciphertext wrapped for another
cluster's context does not decrypt here even under the same key name.

Token: ``THEMIS_VAULT_TOKEN_FILE`` (a Vault agent sink) is re-read whenever the file changes;
with no token at all, requests go without one, to a Vault agent that adds its own (auto-auth
API proxy).

Errors: anything Vault refuses to decrypt is ``IntegrityError`` (one message, no cause); Vault
unreachable, sealed, failing, slow or refusing the token is ``KeyProviderUnavailable``, whose
message names the provider, the operation and the kind of failure, never the token; no transit
key is ``MasterKeyMissing``. The provider holds no state that an outage breaks: once Vault is
back, the same object works again.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import hvac  # type: ignore[import-untyped]
import hvac.exceptions  # type: ignore[import-untyped]
import requests

from themisdb.errors import ConfigError, IntegrityError, KeyProviderUnavailable, MasterKeyMissing
from themisdb.keys._base import Health, key_id, pack_aad, split_header, unpack_aad, with_header
from themisdb.settings import Settings

__all__ = ["VaultFacts", "VaultKeyProvider"]

NAME = "vault"
KEY_TYPE = "aes256-gcm96"
DEFAULT_TIMEOUT = 5.0
# Items per batch request. OpenBao refuses JSON bodies with more than 1000 strings by default
# (listener max_request_json_strings); one batch item is 4 strings.
DEFAULT_BATCH_SIZE = 200

_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MOUNT_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CIPHERTEXT = re.compile(rb"vault:v([1-9][0-9]{0,8}):([A-Za-z0-9+/]+={0,2})")
_KEY_NOT_FOUND = ("key not found", "no existing key", "encryption key not found")


@dataclass(frozen=True)
class VaultFacts:
    """What Vault says about itself, the token and the transit key (for ``themisdb check``)."""

    reachable: bool
    sealed: bool | None
    token_ttl_seconds: int | None  # 0: the token never expires
    token_is_root: bool | None
    key_exists: bool
    key_exportable: bool | None
    error: str | None


class _Refused(Exception):
    """Vault answered 400/404: it understood and refused this request (bad ciphertext, no such
    key or mount). Callers decide what that means; everything else is KeyProviderUnavailable."""

    def __init__(self, status: int, errors: tuple[str, ...], original: Exception) -> None:
        super().__init__(status)
        self.status = status
        self.errors = errors
        self.original = original

    @property
    def key_missing(self) -> bool:
        text = " ".join(self.errors).lower()
        return self.status == 404 or any(marker in text for marker in _KEY_NOT_FOUND)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode_canonical(text: bytes) -> bytes | None:
    """Strict base64: None unless ``text`` is exactly the canonical encoding of its bytes (so a
    flipped bit in unused padding bits cannot make a second valid spelling)."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if base64.b64encode(data) == text else None


def _public_addr(addr: str) -> str:
    """The address without any user:password part, for messages."""
    parts = urlsplit(addr)
    if parts.username is None and parts.password is None:
        return addr
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _chunks(count: int, size: int) -> Iterator[range]:
    for start in range(0, count, size):
        yield range(start, min(start + size, count))


def _per_item(aad: bytes | Sequence[bytes], count: int) -> list[bytes]:
    if isinstance(aad, bytes | bytearray | memoryview):
        return [bytes(aad)] * count
    aads = [bytes(a) for a in aad]
    if len(aads) != count:
        raise ValueError(f"expected one aad or {count}, got {len(aads)}")
    return aads


def _as_dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


class VaultKeyProvider:
    """Key wrapping with one transit key of Vault, bound to this cluster's derivation context."""

    name = NAME

    def __init__(
        self,
        addr: str,
        *,
        key_name: str,
        context: str,
        create: bool,
        mount: str = "transit",
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if not _KEY_NAME.fullmatch(key_name):
            raise ConfigError(
                f"{NAME}: transit key name {key_name!r} must be 1-128 letters, digits, '.', '_' "
                "or '-' (THEMIS_VAULT_TRANSIT_KEY / THEMIS_CLUSTER_ID)"
            )
        mount = mount.strip("/")
        if not all(_MOUNT_SEGMENT.fullmatch(part) for part in mount.split("/")) or any(
            part in (".", "..") for part in mount.split("/")
        ):
            raise ConfigError(f"{NAME}: THEMIS_VAULT_TRANSIT_MOUNT {mount!r} is not a mount path")
        if not context:
            raise ConfigError(f"{NAME}: the derivation context must not be empty")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        try:
            self._addr = _public_addr(addr.rstrip("/"))
        except ValueError:
            raise ConfigError(f"{NAME}: THEMIS_VAULT_ADDR is not a valid URL") from None
        self._key = key_name
        self._mount = mount
        self._context = _b64(context.encode("utf-8"))
        self._timeout = timeout
        self._batch_size = batch_size
        self._lock = threading.Lock()
        self._token_file = Path(token_file) if token_file is not None else None
        self._token_stamp: tuple[int, int, int] | None = None
        self._has_token = bool(token) or self._token_file is not None
        # token="" rather than None: hvac would otherwise fall back to VAULT_TOKEN or
        # ~/.vault-token, and an empty token sends no X-Vault-Token header (Vault agent proxy).
        self._client: Any = hvac.Client(url=addr, token=token or "", timeout=timeout)
        self._closed = False
        try:
            self._version = self._open(create)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_settings(cls, settings: Settings, *, create: bool) -> VaultKeyProvider:
        if not settings.vault_addr:
            raise ConfigError(f"{NAME}: THEMIS_VAULT_ADDR is not set")
        key_name = settings.vault_transit_key or (
            f"themisdb-{settings.cluster_id}" if settings.cluster_id else None
        )
        if key_name is None:
            raise ConfigError(
                f"{NAME}: set THEMIS_CLUSTER_ID (the transit key is themisdb-<cluster id>) "
                "or THEMIS_VAULT_TRANSIT_KEY"
            )
        source = settings.secret_sources.get("THEMIS_VAULT_TOKEN")
        token_file = source.path if source is not None and source.kind == "file" else None
        token = settings.vault_token.get_secret_value() if settings.vault_token else None
        return cls(
            settings.vault_addr,
            key_name=key_name,
            context=settings.cluster_id or key_name,
            create=create,
            mount=settings.vault_transit_mount,
            token=token,
            token_file=token_file,
        )

    def __repr__(self) -> str:
        # Short (a log line), and never the token: only where it comes from.
        token = "file" if self._token_file else "static" if self._has_token else "agent"
        key = f"{self._mount}/{self._key}"
        return (
            f"VaultKeyProvider(addr={self._addr[:60]!r}, key={key[:80]!r}, "
            f"current=v{self._version}, token={token})"
        )

    # --- the KeyProvider contract --------------------------------------------------------------

    def current_key_id(self) -> str:
        """The newest transit key version this process has seen (read at start, after
        ``rotate``, and raised by every wrap that Vault did with a newer one)."""
        return key_id(self._version)

    def wrap(self, dek: bytes, *, aad: bytes) -> bytes:
        data = self._transit(
            "encrypt",
            "encrypt_data",
            plaintext=_b64(pack_aad(aad, dek)),
            context=self._context,
        )
        return self._stored(data)

    def unwrap(self, wrapped: bytes, *, aad: bytes) -> bytes:
        ciphertext = self._vault_ciphertext(wrapped)
        data = self._transit(
            "decrypt", "decrypt_data", integrity=True, ciphertext=ciphertext, context=self._context
        )
        return self._plaintext(data, aad)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.adapter.close()

    # --- Rotatable, rewrap ------------------------------------------------------------------

    def rotate(self) -> str:
        data = self._transit("rotate", "rotate_key")
        latest = data.get("latest_version")
        if not isinstance(latest, int):  # Vault before 1.15 answers 204 with no body
            latest = self._key_info()[1]
        with self._lock:
            self._version = max(self._version, latest)
        return self.current_key_id()

    def rewrap(self, wrapped: bytes, aad: bytes) -> bytes:
        """Re-encrypt under the newest key version inside Vault: the DEK is never seen here.

        ``aad`` is not checked (it cannot be without decrypting); it stays bound inside the
        ciphertext and the next ``unwrap`` compares it."""
        del aad
        ciphertext = self._vault_ciphertext(wrapped)
        data = self._transit(
            "rewrap", "rewrap_data", integrity=True, ciphertext=ciphertext, context=self._context
        )
        return self._stored(data)

    # --- batches -----------------------------------------------------------------------------

    def wrap_many(self, deks: Sequence[bytes], *, aad: bytes | Sequence[bytes]) -> list[bytes]:
        """``wrap`` for many DEKs in batch requests; ``aad`` is one for all or one per DEK."""
        aads = _per_item(aad, len(deks))
        out: list[bytes] = []
        for chunk in _chunks(len(deks), self._batch_size):
            batch = [
                {"plaintext": _b64(pack_aad(aads[i], deks[i])), "context": self._context}
                for i in chunk
            ]
            results = self._batch("encrypt", "encrypt_data", batch, integrity=False)
            out.extend(self._stored(item) for item in results)
        return out

    def unwrap_many(self, wrapped: Sequence[bytes], *, aad: bytes | Sequence[bytes]) -> list[bytes]:
        """``unwrap`` for many in batch requests. All or nothing: IntegrityError if any fails."""
        aads = _per_item(aad, len(wrapped))
        ciphertexts = [self._vault_ciphertext(item) for item in wrapped]
        out: list[bytes] = []
        for chunk in _chunks(len(wrapped), self._batch_size):
            batch = [{"ciphertext": ciphertexts[i], "context": self._context} for i in chunk]
            results = self._batch("decrypt", "decrypt_data", batch, integrity=True)
            out.extend(
                self._plaintext(item, aads[i]) for i, item in zip(chunk, results, strict=True)
            )
        return out

    def rewrap_many(self, wrapped: Sequence[bytes]) -> list[bytes]:
        """``rewrap`` for many in batch requests. IntegrityError if any is not ours."""
        ciphertexts = [self._vault_ciphertext(item) for item in wrapped]
        out: list[bytes] = []
        for chunk in _chunks(len(wrapped), self._batch_size):
            batch = [{"ciphertext": ciphertexts[i], "context": self._context} for i in chunk]
            results = self._batch("rewrap", "rewrap_data", batch, integrity=True)
            out.extend(self._stored(item) for item in results)
        return out

    # --- health and facts --------------------------------------------------------------------

    def health(self) -> Health:
        """Reachable, unsealed, token accepted, transit key present. Never raises."""
        facts = self.probe_facts()
        if not facts.reachable:
            return Health(False, f"{NAME}: {self._addr} unreachable: {facts.error}")
        if facts.sealed:
            return Health(False, f"{NAME}: {self._addr} is sealed")
        if facts.error:
            return Health(False, f"{NAME}: {facts.error}")
        if not facts.key_exists:
            return Health(False, f"{NAME}: transit key {self._key!r} does not exist")
        ttl = (
            "no token (Vault agent)"
            if facts.token_ttl_seconds is None
            else "token never expires"
            if facts.token_ttl_seconds == 0
            else f"token expires in {facts.token_ttl_seconds} s"
        )
        return Health(
            True,
            f"{NAME}: {self._addr} unsealed, {ttl}, transit key {self._key!r} "
            f"at {self.current_key_id()}",
        )

    def probe_facts(self) -> VaultFacts:
        """Ask Vault about itself (sys/health), the token (lookup-self) and the transit key.
        Never raises: what could not be learned is None and ``error`` says why."""
        try:
            return self._probe_facts()
        except Exception as exc:  # a bug or a very odd answer: still a fact, not a crash
            return VaultFacts(
                False, None, None, None, False, None, f"probe failed ({type(exc).__name__})"
            )

    def _probe_facts(self) -> VaultFacts:
        sealed: bool | None = None
        try:
            self._refresh_token()
            response = self._client.sys.read_health_status(method="GET")
            body = response if isinstance(response, dict) else response.json()
            sealed_value = _as_dict(body).get("sealed")
            sealed = sealed_value if isinstance(sealed_value, bool) else None
        except (requests.RequestException, ValueError, hvac.exceptions.VaultError) as exc:
            return VaultFacts(False, None, None, None, False, None, self._describe(exc))
        if sealed:
            return VaultFacts(True, True, None, None, False, None, "Vault is sealed")

        ttl: int | None = None
        is_root: bool | None = None
        errors: list[str] = []
        try:
            token = _as_dict(self._call("token lookup-self", self._client.auth.token.lookup_self))
            info = _as_dict(token.get("data"))
            raw_ttl, policies = info.get("ttl"), info.get("policies")
            ttl = raw_ttl if isinstance(raw_ttl, int) else None
            is_root = "root" in policies if isinstance(policies, list) else None
        except (KeyProviderUnavailable, _Refused) as exc:
            errors.append(self._describe(exc))

        exists, exportable = False, None
        try:
            key = self._read_key()
            exists = True
            flag = key.get("exportable")
            exportable = flag if isinstance(flag, bool) else None
        except _Refused as exc:
            if not exc.key_missing:
                errors.append(self._describe(exc))
        except KeyProviderUnavailable as exc:
            errors.append(self._describe(exc))
        return VaultFacts(True, sealed, ttl, is_root, exists, exportable, "; ".join(errors) or None)

    # --- internals ---------------------------------------------------------------------------

    def _open(self, create: bool) -> int:
        try:
            info, version = self._key_info()
        except _Refused as exc:
            if not exc.key_missing:
                raise self._unavailable("read transit key", exc.original) from exc.original
            if not create:
                raise MasterKeyMissing(
                    f"{NAME}: transit key {self._key!r} does not exist at {self._addr} "
                    f"(mount {self._mount!r}); run `themisdb keys init`"
                ) from None
            self._create_key()
            info, version = self._key_info()
        if info.get("derived") is not True:
            raise ConfigError(
                f"{NAME}: transit key {self._key!r} is not derived; ThemisDB binds every wrap to "
                "the cluster context and needs a key created with derived=true "
                "(`themisdb keys init` creates one)"
            )
        return version

    def _create_key(self) -> None:
        try:
            self._call(
                "create transit key",
                self._client.secrets.transit.create_key,
                name=self._key,
                key_type=KEY_TYPE,
                derived=True,
                exportable=False,
                allow_plaintext_backup=False,
                mount_point=self._mount,
            )
        except _Refused as exc:
            raise self._unavailable("create transit key", exc.original) from exc.original

    def _read_key(self) -> dict[str, object]:
        data = self._call(
            "read transit key",
            self._client.secrets.transit.read_key,
            name=self._key,
            mount_point=self._mount,
        )
        return _as_dict(data.get("data"))

    def _key_info(self) -> tuple[dict[str, object], int]:
        info = self._read_key()
        latest = info.get("latest_version")
        if not isinstance(latest, int) or latest < 1:
            raise KeyProviderUnavailable(
                f"{NAME}: read transit key {self._key!r}: Vault's answer has no latest_version"
            )
        return info, latest

    def _transit(
        self, operation: str, method: str, *, integrity: bool = False, **kwargs: object
    ) -> dict[str, object]:
        """One transit call on our key; the ``data`` of the answer."""
        operation = f"{operation} with transit key {self._key!r}"
        try:
            answer = self._call(
                operation,
                getattr(self._client.secrets.transit, method),
                name=self._key,
                mount_point=self._mount,
                **kwargs,
            )
        except _Refused as exc:
            raise self._refusal(operation, exc, integrity=integrity) from (
                None if integrity and not exc.key_missing else exc.original
            )
        except KeyProviderUnavailable as exc:
            # A token allowed only "update" on transit/encrypt/<key> (no upsert) gets 403 for a
            # key that no longer exists: say that rather than "permission denied".
            if isinstance(exc.__cause__, hvac.exceptions.Forbidden) and self._key_is_missing():
                raise self._refusal(
                    operation, _Refused(404, (), exc.__cause__), integrity=integrity
                ) from exc.__cause__
            raise
        return _as_dict(answer.get("data"))

    def _key_is_missing(self) -> bool:
        """True only when Vault positively says the transit key does not exist."""
        try:
            self._read_key()
        except _Refused as exc:
            return exc.key_missing
        except KeyProviderUnavailable:
            return False
        return False

    def _batch(
        self, operation: str, method: str, batch: list[dict[str, str]], *, integrity: bool
    ) -> list[dict[str, object]]:
        # hvac's rewrap_data (unlike encrypt/decrypt) requires ``ciphertext`` even for a batch.
        single = {"ciphertext": None} if method == "rewrap_data" else {}
        data = self._transit(
            f"batch {operation}", method, integrity=integrity, batch_input=batch, **single
        )
        results = data.get("batch_results")
        if not isinstance(results, list) or len(results) != len(batch):
            raise KeyProviderUnavailable(
                f"{NAME}: batch {operation} with transit key {self._key!r}: "
                "Vault's answer has the wrong number of results"
            )
        items = [_as_dict(item) for item in results]
        if any(item.get("error") for item in items):
            if integrity:
                raise IntegrityError
            raise KeyProviderUnavailable(
                f"{NAME}: batch {operation} with transit key {self._key!r}: "
                "Vault refused some items"
            )
        return items

    def _refusal(self, operation: str, exc: _Refused, *, integrity: bool) -> Exception:
        if exc.key_missing:
            return MasterKeyMissing(
                f"{NAME}: {operation} failed: the key does not exist at {self._addr} "
                f"(mount {self._mount!r}); run `themisdb keys init`"
            )
        if integrity:
            return IntegrityError()
        return self._unavailable(operation, exc.original)

    def _call(
        self, operation: str, function: Callable[..., Any], **kwargs: object
    ) -> dict[str, object]:
        """Call hvac. 400/404 become _Refused; every other failure KeyProviderUnavailable."""
        if self._closed:
            raise KeyProviderUnavailable(f"{NAME}: {operation}: the provider is closed")
        self._refresh_token()
        try:
            answer = function(**kwargs)
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.InvalidPath) as exc:
            status = 404 if isinstance(exc, hvac.exceptions.InvalidPath) else 400
            errors = tuple(str(e) for e in (exc.errors or ()))
            raise _Refused(status, errors, exc) from exc
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise self._unavailable(operation, exc) from exc
        # JSON for 200; 204 (no body) comes back as a Response object.
        return _as_dict(answer)

    def _unavailable(self, operation: str, exc: BaseException) -> KeyProviderUnavailable:
        return KeyProviderUnavailable(f"{NAME}: {operation} failed: {self._describe(exc)}")

    def _describe(self, exc: BaseException) -> str:
        """The kind of failure, in words fit for a log line: no token, no key material."""
        if isinstance(exc, KeyProviderUnavailable):
            return self._describe(exc.__cause__) if exc.__cause__ else str(exc)
        if isinstance(exc, _Refused):
            return self._describe(exc.original)
        if isinstance(exc, requests.Timeout):
            return f"{self._addr} did not answer within {self._timeout:g} s (timeout)"
        if isinstance(exc, requests.ConnectionError):
            return f"cannot connect to {self._addr} (unreachable)"
        if isinstance(exc, requests.RequestException):
            return f"request to {self._addr} failed ({type(exc).__name__})"
        if isinstance(exc, hvac.exceptions.VaultDown):
            detail = self._errors_text(exc)
            return (
                "Vault is sealed (HTTP 503)"
                if "sealed" in detail.lower()
                else (f"Vault is unavailable (HTTP 503): {detail}")
            )
        if isinstance(exc, hvac.exceptions.Forbidden):
            return (
                "permission denied (HTTP 403): the token is missing, expired or revoked, or its "
                "policy does not allow this"
            )
        if isinstance(exc, hvac.exceptions.Unauthorized):
            return "unauthorized (HTTP 401)"
        if isinstance(exc, hvac.exceptions.RateLimitExceeded):
            return "rate limited by Vault (HTTP 429)"
        if isinstance(exc, hvac.exceptions.VaultNotInitialized):
            return "Vault is not initialized (HTTP 501)"
        if isinstance(exc, hvac.exceptions.InternalServerError | hvac.exceptions.BadGateway):
            return f"Vault server error: {self._errors_text(exc)}"
        if isinstance(exc, hvac.exceptions.InvalidPath):
            return f"not found (HTTP 404): {self._errors_text(exc)}"
        if isinstance(exc, hvac.exceptions.InvalidRequest):
            return f"refused (HTTP 400): {self._errors_text(exc)}"
        if isinstance(exc, hvac.exceptions.VaultError):
            return f"unexpected answer from Vault: {self._errors_text(exc)}"
        if isinstance(exc, ValueError):
            return "Vault's answer is not JSON"
        return type(exc).__name__

    def _errors_text(self, exc: BaseException) -> str:
        """Vault's own error strings, shortened, with the token blanked should one appear."""
        errors = getattr(exc, "errors", None)
        text = "; ".join(str(e) for e in errors) if errors else "no detail"
        text = " ".join(text.split())[:200]
        token = self._client.token
        if token:
            text = text.replace(token, "[token]")
        return text

    def _refresh_token(self) -> None:
        """Re-read THEMIS_VAULT_TOKEN_FILE when it changed (Vault agent rewrites its sink).
        A file that is missing, unreadable or empty for a moment keeps the token we have."""
        if self._token_file is None:
            return
        try:
            st = os.stat(self._token_file)
        except OSError:
            return
        stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
        if stamp == self._token_stamp:
            return
        with self._lock:
            if stamp == self._token_stamp:
                return
            try:
                token = self._token_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                return
            if token:
                self._client.token = token
                self._token_stamp = stamp

    def _vault_ciphertext(self, wrapped: bytes) -> str:
        """Vault's ciphertext inside ``wrapped``; IntegrityError unless it is well formed, its
        version agrees with the ThemisDB header and its base64 is canonical."""
        version, body = split_header(wrapped)
        match = _CIPHERTEXT.fullmatch(body)
        if match is None or int(match.group(1)) != version:
            raise IntegrityError
        if _b64decode_canonical(match.group(2)) is None:
            raise IntegrityError
        return body.decode("ascii")

    def _stored(self, data: dict[str, object]) -> bytes:
        """``with_header(N, ciphertext)`` from an encrypt or rewrap answer."""
        ciphertext = data.get("ciphertext")
        match = (
            _CIPHERTEXT.fullmatch(ciphertext.encode("ascii", "replace"))
            if isinstance(ciphertext, str)
            else None
        )
        if match is None:
            raise KeyProviderUnavailable(
                f"{NAME}: Vault returned a ciphertext of unexpected form for transit key "
                f"{self._key!r}"
            )
        version = int(match.group(1))
        if version > self._version:
            with self._lock:
                self._version = max(self._version, version)
        return with_header(version, match.group(0))

    def _plaintext(self, data: dict[str, object], aad: bytes) -> bytes:
        encoded = data.get("plaintext")
        if not isinstance(encoded, str):
            raise IntegrityError
        plaintext = _b64decode_canonical(encoded.encode("ascii", "replace"))
        if plaintext is None:
            raise IntegrityError
        return unpack_aad(plaintext, aad)
