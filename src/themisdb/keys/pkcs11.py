"""Master keys in a PKCS#11 token (an HSM, or SoftHSM2 in tests): the ``pkcs11`` provider.

Each master key version is an AES-256 secret key object labelled ``<hsm_key_label>-v<N>``,
generated inside the token as persistent, private, SENSITIVE and not EXTRACTABLE: its value
never leaves the token. ``wrap`` is AES-GCM computed by the token (CKM_AES_GCM, a fresh 12-byte
IV, the AAD as GCM associated data, a 128-bit tag); the wrapped DEK is
``themis:v<N>:`` + IV + ciphertext + tag.

Facts this adapter is built around (measured with SoftHSM2 2.6.1 and python-pkcs11 0.10.1):

* **One process-wide lock.** python-pkcs11 calls ``C_Initialize(NULL)`` (no locking callbacks)
  and releases the GIL around every call; two threads inside SoftHSM at once segfault even on
  separate sessions (16 unlocked threads: SIGSEGV on every run). Every call into the library
  (load, login, find, generate, encrypt, decrypt, close, reset) holds :data:`PKCS11_LOCK`.
  Other code of this process that uses python-pkcs11 must hold it as well.
* **Login is per application.** ``C_Login`` logs the whole process in; a second login raises
  UserAlreadyLoggedIn *without checking the PIN*, and closing the session that logged in logs
  every session out. So the login is shared process state here (:class:`_Library`): the first
  provider on a token logs in, later ones check their PIN against an HMAC of the PIN that
  succeeded, and the login ends when the last provider using it closes.
* **Recovery needs a re-initialisation.** Once SoftHSM touched a token whose directory had gone,
  that token stays broken in this process (C_GetTokenInfo: GeneralError, key handles invalid,
  finds empty) even after the files come back; only ``C_Finalize`` + ``C_Initialize`` makes it
  read the token again. After a failure the next call (at most every ``recovery_interval``
  seconds) re-initialises the library, logs in again and re-finds the keys. Other providers in
  the process notice the new library generation and rebuild their sessions before their next
  call (never touching the dead handles). If the token refuses the PIN on such a re-login (it
  was changed meanwhile), the provider stops retrying: a real HSM locks a PIN after a few
  failures.
* **SoftHSM reports a GCM tag mismatch as CKR_GENERAL_ERROR**, the same code as a failing
  token. A failed decryption therefore asks the token whether it is alive: if it answers, the
  input was bad (IntegrityError), otherwise the token is (KeyProviderUnavailable).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NoReturn, Protocol, cast

import pkcs11
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.exceptions import (
    DataInvalid,
    DataLenRange,
    EncryptedDataInvalid,
    EncryptedDataLenRange,
    GeneralError,
    MultipleTokensReturned,
    NoSuchToken,
    PinExpired,
    PinIncorrect,
    PinLocked,
    PKCS11Error,
    UserAlreadyLoggedIn,
    UserPinNotInitialized,
)
from pkcs11.mechanisms import GCMParams
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters
from pydantic import SecretStr

from themisdb.errors import (
    ConfigError,
    IntegrityError,
    KeyProviderUnavailable,
    MasterKeyMissing,
    ThemisError,
)
from themisdb.keys._base import Health, key_id, split_header, with_header

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Pkcs11Module
    from pkcs11.types import Object, Session, Token

    from themisdb.settings import Settings

__all__ = ["PKCS11_LOCK", "HsmFacts", "Pkcs11KeyProvider"]

PKCS11_LOCK: Final = threading.Lock()
"""Held around every call into a PKCS#11 library in this process (see the module docstring)."""

_IV_BYTES = 12
_TAG_BITS = 128
_TAG_BYTES = _TAG_BITS // 8
_KEY_BITS = 256
_PROVIDER = "pkcs11"

_PIN_FAILURES = (PinIncorrect, PinLocked, PinExpired, UserPinNotInitialized)

# Decryption failures that a bad input can cause; GeneralError is SoftHSM's GCM tag mismatch.
_INPUT_FAILURES = (DataInvalid, DataLenRange, EncryptedDataInvalid, EncryptedDataLenRange)
_INPUT_OR_DEVICE_FAILURES = (*_INPUT_FAILURES, GeneralError)

# An HMAC key that lives only in this process: PINs are compared by tag, never kept in clear
# outside the provider that was given one.
_PIN_TAG_KEY: Final = secrets.token_bytes(32)


class _CipherKey(Protocol):
    """The part of python-pkcs11's secret key objects used here (its stubs omit the mixins)."""

    label: str

    def encrypt(self, data: bytes, **kwargs: Any) -> bytes: ...

    def decrypt(self, data: bytes, **kwargs: Any) -> bytes: ...

    def get_attributes(self, keys: list[Attribute]) -> dict[Attribute, Any]: ...


@dataclass(frozen=True)
class HsmFacts:
    """What the posture engine needs to know about the HSM, read live from the token.

    ``key_versions`` are master key ids (``v1``, ``v2``...) found in the token;
    ``all_non_extractable`` is True only when there is at least one and every one is
    SENSITIVE and not EXTRACTABLE. ``error`` says why the token could not be read."""

    login_ok: bool
    key_versions: tuple[str, ...]
    all_non_extractable: bool
    error: str | None
    audit_key_exists: bool = False


@dataclass
class _Login:
    """This process's login to one token (C_Login is per application, not per session)."""

    session: Session | None  # the session whose C_Login logged in; None: code outside did
    pin_tag: bytes
    holders: set[int] = field(default_factory=set)


class _Library:
    """One loaded PKCS#11 module and the state every provider using it shares."""

    def __init__(self, path: str, module: Pkcs11Module) -> None:
        self.path = path
        self.module = module
        self.generation = 0  # bumped by reset(): sessions and handles of older ones are dead
        self.logins: dict[bytes, _Login] = {}  # by token serial
        self.last_reset = float("-inf")

    def reset(self) -> None:
        """C_Finalize + C_Initialize: drops every session, login and handle of the process and
        makes the module read its tokens again. Caller holds PKCS11_LOCK."""
        self.generation += 1
        self.logins.clear()
        self.last_reset = time.monotonic()
        with contextlib.suppress(PKCS11Error):  # broken anyway; initialize() says if it is back
            self.module.finalize()
        self.module.initialize()


_LIBRARIES: dict[str, _Library] = {}


def _load_library(path: str) -> _Library:
    """The shared _Library for ``path``, loading it once. Caller holds PKCS11_LOCK."""
    library = _LIBRARIES.get(path)
    try:
        if library is None:
            library = _Library(path, pkcs11.lib(path))
            _LIBRARIES[path] = library
        elif not library.module.initialized:  # an earlier reset failed half-way
            library.module.initialize()
    except (PKCS11Error, OSError) as exc:
        # python-pkcs11 reports dlopen's reason (a path and an OS message), nothing secret.
        reason = str(exc)[:300] or type(exc).__name__
        raise KeyProviderUnavailable(
            f"{_PROVIDER}: cannot load the PKCS#11 library {path}: {reason}"
        ) from exc
    return library


def _pin_tag(pin: SecretStr) -> bytes:
    return hmac.new(_PIN_TAG_KEY, pin.get_secret_value().encode(), hashlib.sha256).digest()


def _describe(exc: PKCS11Error) -> str:
    """The kind of failure, for messages: never the exception text (it may echo templates)."""
    kind = type(exc).__name__
    if isinstance(exc, PinIncorrect):
        return f"the token rejected the PIN ({kind})"
    if isinstance(exc, _PIN_FAILURES):
        return f"the user PIN cannot be used ({kind})"
    return f"the token or library answered {kind}"


@dataclass
class _Lane:
    """One pooled session and the key objects found through it (handles are per session in
    python-pkcs11, so each lane finds its own)."""

    session: Session
    keys: dict[int, _CipherKey] = field(default_factory=dict)


@dataclass
class _Open:
    """Everything valid for one library generation."""

    generation: int
    token: Token
    serial: bytes
    lanes: deque[_Lane]


class Pkcs11KeyProvider:
    """Wraps DEKs with AES-256-GCM inside a PKCS#11 token. See the module docstring."""

    name: str = _PROVIDER

    def __init__(
        self,
        *,
        library: str,
        token_label: str,
        key_label: str,
        pin: SecretStr,
        pool_size: int = 4,
        create: bool,
        recovery_interval: float = 0.5,
    ) -> None:
        if pool_size < 1:
            raise ConfigError("THEMIS_HSM_SESSION_POOL must be at least 1")
        self._library_path = library
        self._token_label = token_label
        self._key_label = key_label
        self._pin = pin
        self._pool_size = pool_size
        self._recovery_interval = recovery_interval
        self._label_pattern = re.compile(re.escape(key_label) + r"-v([1-9][0-9]{0,8})")
        self._versions: tuple[int, ...] = ()
        self._open: _Open | None = None
        self._stale: _Open | None = None  # what a failure left behind, released at close()
        self._failed_generation: int | None = None
        self._pin_refused: str | None = None  # set when a re-login was refused: never retried
        self._closed = False
        with PKCS11_LOCK:
            self._lib = _load_library(library)
            self._open = self._build(create=create)

    @classmethod
    def from_settings(cls, settings: Settings, *, create: bool) -> Pkcs11KeyProvider:
        """The provider THEMIS_HSM_* describe. ``create`` makes v1 when the token has none."""
        if settings.hsm_pin is None:
            raise ConfigError(
                "THEMIS_HSM_ENABLED=1 needs the token's user PIN: set THEMIS_HSM_PIN_FILE "
                "(or THEMIS_HSM_PIN)"
            )
        return cls(
            library=settings.hsm_library,
            token_label=settings.hsm_token_label,
            key_label=settings.hsm_key_label,
            pin=settings.hsm_pin,
            pool_size=settings.hsm_session_pool,
            create=create,
        )

    @property
    def token_label(self) -> str:
        return self._token_label

    @property
    def key_label(self) -> str:
        """The label prefix of the master key objects (``<key_label>-v<N>``)."""
        return self._key_label

    @property
    def audit_key_label(self) -> str:
        """The label of the audit chain's ECDSA key pair (``<key_label>-audit``)."""
        return f"{self._key_label}-audit"

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._open is None:
            state = "unavailable"
        else:
            state = "open"
        return (
            f"Pkcs11KeyProvider(token={self._token_label!r}, key_label={self._key_label!r}, "
            f"versions={list(self._versions)}, state={state})"
        )

    # --- the contract -------------------------------------------------------------------------

    def current_key_id(self) -> str:
        return key_id(self._current)

    def wrap(self, dek: bytes, *, aad: bytes) -> bytes:
        iv = secrets.token_bytes(_IV_BYTES)
        with PKCS11_LOCK:
            lane = self._lane()
            version = self._current
            try:
                body = lane.keys[version].encrypt(dek, **_gcm(iv, aad))
            except PKCS11Error as exc:
                self._fail("wrapping a data key", exc)
        return with_header(version, iv + body)

    def unwrap(self, wrapped: bytes, *, aad: bytes) -> bytes:
        version, body = split_header(wrapped)
        if len(body) < _IV_BYTES + _TAG_BYTES:
            raise IntegrityError
        iv, ciphertext = body[:_IV_BYTES], body[_IV_BYTES:]
        with PKCS11_LOCK:
            lane = self._lane()
            key = lane.keys.get(version)
            if key is None:
                key = self._newer_version(version)
            try:
                return key.decrypt(ciphertext, **_gcm(iv, aad))
            except _INPUT_OR_DEVICE_FAILURES as exc:
                if isinstance(exc, _INPUT_FAILURES) or self._token_answers():
                    raise IntegrityError from None
                self._fail("unwrapping a data key", exc)
            except PKCS11Error as exc:
                self._fail("unwrapping a data key", exc)

    def rotate(self) -> str:
        with PKCS11_LOCK:
            self._lane()
            assert self._open is not None
            lanes = self._open.lanes
            try:
                # Scan afresh: another process (``themisdb keys rotate``) may have added one.
                found = self._scan(lanes[0].session)
                if not set(self._versions) <= set(found):
                    raise KeyProviderUnavailable(
                        f"{_PROVIDER}: master key objects labelled {self._key_label}-v* are "
                        "missing from the token; not rotating"
                    )
                version = max(found) + 1
                found[version] = self._generate(lanes[0].session, version)
                self._versions = tuple(sorted(found))
                for lane in lanes:
                    lane.keys = found if lane is lanes[0] else self._find(lane.session)
            except PKCS11Error as exc:
                self._fail("creating a master key version", exc)
        return key_id(version)

    def health(self) -> Health:
        with PKCS11_LOCK:
            try:
                lane = self._lane()
                assert self._open is not None
                info = self._open.token.slot.get_token()  # C_GetTokenInfo
                lane.keys[self._current].get_attributes([Attribute.LABEL])
            except ThemisError as exc:
                return Health(False, str(exc))
            except PKCS11Error as exc:
                self._mark_failed()
                return Health(False, f"{_PROVIDER}: token check failed: {_describe(exc)}")
        return Health(
            True,
            f"{_PROVIDER}: token {info.label!r} answers; "
            f"{len(self._versions)} master key version(s), current {self.current_key_id()}",
        )

    def probe_facts(self) -> HsmFacts:
        """Login state and the master key objects as the token reports them now; never raises
        for token failures (they are in ``error``)."""
        with PKCS11_LOCK:
            try:
                lane = self._lane()
                versions: list[str] = []
                protected: list[bool] = []
                for version, key in sorted(self._scan(lane.session, verify=False).items()):
                    versions.append(key_id(version))
                    protected.append(_is_protected(key))
                audit_key = any(
                    lane.session.get_objects(
                        {
                            Attribute.LABEL: self.audit_key_label,
                            Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                        }
                    )
                )
            except ThemisError as exc:
                return HsmFacts(False, (), False, str(exc))
            except PKCS11Error as exc:
                self._mark_failed()
                return HsmFacts(False, (), False, f"{_PROVIDER}: {_describe(exc)}")
        return HsmFacts(True, tuple(versions), bool(protected) and all(protected), None, audit_key)

    def audit_signer(self, *, create: bool) -> tuple[bytes, Callable[[bytes], bytes]]:
        """The audit chain's ECDSA P-256 key pair in the token: (SubjectPublicKeyInfo DER of
        the public key, a function signing a message with the private key, returning DER).
        The private key is generated inside the token, sensitive and non-extractable. SoftHSM2
        has no CKM_ECDSA_SHA256: the message is hashed here and signed with CKM_ECDSA."""
        label = self.audit_key_label
        with PKCS11_LOCK:
            lane = self._lane()
            try:
                private = list(
                    lane.session.get_objects(
                        {Attribute.LABEL: label, Attribute.CLASS: ObjectClass.PRIVATE_KEY}
                    )
                )
                public = list(
                    lane.session.get_objects(
                        {Attribute.LABEL: label, Attribute.CLASS: ObjectClass.PUBLIC_KEY}
                    )
                )
                if not private:
                    if not create:
                        raise MasterKeyMissing(
                            f"{_PROVIDER}: no audit signing key {label!r} in the token; run "
                            "`themisdb keys init`"
                        )
                    params = lane.session.create_domain_parameters(
                        KeyType.EC,
                        {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                        local=True,
                    )
                    pub, priv = params.generate_keypair(
                        store=True,
                        label=label,
                        private_template={
                            Attribute.SENSITIVE: True,
                            Attribute.EXTRACTABLE: False,
                            Attribute.PRIVATE: True,
                            Attribute.SIGN: True,
                        },
                    )
                    private, public = [priv], [pub]
                spki = encode_ec_public_key(cast(pkcs11.PublicKey, public[0]))
            except PKCS11Error as exc:
                self._fail("preparing the audit signing key", exc)
        key: Any = private[0]  # python-pkcs11 declares no sign() on its key types

        def sign(message: bytes) -> bytes:
            digest = hashlib.sha256(message).digest()
            with PKCS11_LOCK:
                try:
                    raw = key.sign(digest, mechanism=Mechanism.ECDSA)
                except PKCS11Error as exc:
                    self._fail("signing an audit checkpoint", exc)
            half = len(raw) // 2
            return encode_dss_signature(
                int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
            )

        return spki, sign

    def close(self) -> None:
        with PKCS11_LOCK:
            if self._closed:
                return
            self._closed = True
            for state in (self._open, self._stale):
                if state is not None and state.generation == self._lib.generation:
                    self._release(state)
            self._open = self._stale = None

    # --- sessions, login, recovery ------------------------------------------------------------

    @property
    def _current(self) -> int:
        return max(self._versions)

    def _lane(self) -> _Lane:
        """A session of the current library generation, rebuilding (and, after a failure,
        re-initialising the library) when needed. Caller holds PKCS11_LOCK."""
        if self._closed:
            raise KeyProviderUnavailable(f"{_PROVIDER}: the provider is closed")
        if self._pin_refused is not None:
            raise KeyProviderUnavailable(self._pin_refused)
        library = self._lib
        if self._open is not None and self._open.generation != library.generation:
            self._open = None  # another provider re-initialised the library: handles are dead
        if self._stale is not None and self._stale.generation != library.generation:
            self._stale = None
        if self._open is None:
            # After our own failure (or a reset that failed half-way) only a reset helps.
            if self._failed_generation == library.generation or not library.module.initialized:
                wait = library.last_reset + self._recovery_interval - time.monotonic()
                if wait > 0:
                    raise KeyProviderUnavailable(
                        f"{_PROVIDER}: token {self._token_label!r} unavailable; "
                        f"next reconnection attempt in {wait:.1f}s"
                    )
                try:
                    library.reset()
                except PKCS11Error as exc:
                    self._failed_generation = library.generation
                    raise KeyProviderUnavailable(
                        f"{_PROVIDER}: re-initialising the library failed: {_describe(exc)}"
                    ) from exc
            try:
                self._open = self._build(create=False)
            except KeyProviderUnavailable as exc:
                self._failed_generation = library.generation
                if isinstance(exc.__cause__, _PIN_FAILURES):
                    # Retrying a refused PIN every few seconds would lock it on a real HSM.
                    self._pin_refused = f"{exc}; not retrying with this PIN: correct it and restart"
                    raise KeyProviderUnavailable(self._pin_refused) from exc
                raise
            self._failed_generation = None
        lanes = self._open.lanes
        lanes.rotate(-1)
        return lanes[-1]

    def _build(self, *, create: bool) -> _Open:
        """Find the token, log in, open the pool, find (or create) the master keys."""
        library = self._lib
        stage = f"finding the token labelled {self._token_label!r}"
        lanes: deque[_Lane] = deque()
        token: Token | None = None
        try:
            token = library.module.get_token(token_label=self._token_label)
            stage = "logging in to the token"
            self._login(token)
            stage = "opening sessions"
            for _ in range(self._pool_size):
                lanes.append(_Lane(token.open(rw=True)))
            stage = "finding the master keys"
            found = self._scan(lanes[0].session)
            if self._versions and not set(self._versions) <= set(found):
                raise KeyProviderUnavailable(
                    f"{_PROVIDER}: master key objects labelled {self._key_label}-v* are "
                    "missing from the token; it is not fully available"
                )
            if not found:
                if not create:
                    raise MasterKeyMissing(
                        f"{_PROVIDER}: token {self._token_label!r} holds no master key labelled "
                        f"{self._key_label}-v*; run `themisdb keys init`"
                    )
                stage = "creating the master key"
                found = {1: self._generate(lanes[0].session, 1)}
            self._versions = tuple(sorted(found))
            lanes[0].keys = found
            for lane in list(lanes)[1:]:
                lane.keys = self._find(lane.session)
            return _Open(library.generation, token, token.serial, lanes)
        except BaseException as exc:
            self._abandon(token, lanes)
            if isinstance(exc, NoSuchToken | MultipleTokensReturned):
                raise KeyProviderUnavailable(
                    f"{_PROVIDER}: {stage} failed: no single token has that label "
                    f"({type(exc).__name__})"
                ) from exc
            if isinstance(exc, PKCS11Error):
                raise KeyProviderUnavailable(
                    f"{_PROVIDER}: {stage} failed: {_describe(exc)}"
                ) from exc
            raise

    def _login(self, token: Token) -> None:
        logins = self._lib.logins
        tag = _pin_tag(self._pin)
        login = logins.get(token.serial)
        if login is None:
            session: Session | None
            try:
                session = token.open(rw=True, user_pin=self._pin.get_secret_value())
            except UserAlreadyLoggedIn:
                session = None  # logged in by code outside this module: cannot check the PIN
            login = logins[token.serial] = _Login(session, tag)
        elif not hmac.compare_digest(login.pin_tag, tag):
            raise KeyProviderUnavailable(
                f"{_PROVIDER}: this process is already logged in to token "
                f"{self._token_label!r} with a different PIN (C_Login is per process)"
            )
        login.holders.add(id(self))

    def _release(self, current: _Open) -> None:
        """Close this provider's sessions and its share of the login (same generation only)."""
        for lane in current.lanes:
            with contextlib.suppress(PKCS11Error):
                lane.session.close()
        self._logout(current.serial)

    def _abandon(self, token: Token | None, lanes: deque[_Lane]) -> None:
        """Undo a half-built state, ignoring failures (the build already failed)."""
        for lane in lanes:
            with contextlib.suppress(PKCS11Error):
                lane.session.close()
        if token is not None:
            self._logout(token.serial)

    def _logout(self, serial: bytes) -> None:
        login = self._lib.logins.get(serial)
        if login is None:
            return
        login.holders.discard(id(self))
        if not login.holders:
            del self._lib.logins[serial]
            if login.session is not None:
                with contextlib.suppress(PKCS11Error):
                    login.session.close()  # C_Logout + C_CloseSession

    def _mark_failed(self) -> None:
        """Forget every handle (without calling the library: they may be dead) so that the next
        call re-initialises. Caller holds PKCS11_LOCK."""
        if self._open is not None:
            self._stale = self._open
        self._open = None
        self._failed_generation = self._lib.generation

    def _fail(self, action: str, exc: PKCS11Error) -> NoReturn:
        self._mark_failed()
        raise KeyProviderUnavailable(f"{_PROVIDER}: {action} failed: {_describe(exc)}") from exc

    def _token_answers(self) -> bool:
        assert self._open is not None
        try:
            self._open.token.slot.get_token()
        except PKCS11Error:
            return False
        return True

    # --- key objects --------------------------------------------------------------------------

    def _scan(self, session: Session, *, verify: bool = True) -> dict[int, _CipherKey]:
        """Every master key version in the token, each verified to be a protected AES-256 key
        (KeyProviderUnavailable otherwise) unless ``verify`` is False."""
        found: dict[int, _CipherKey] = {}
        objects: list[Object] = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}))
        for obj in objects:
            key = cast(_CipherKey, obj)
            match = self._label_pattern.fullmatch(key.label)
            if match is None:
                continue
            version = int(match.group(1))
            if version in found:
                raise KeyProviderUnavailable(
                    f"{_PROVIDER}: two objects are labelled {key.label!r}; refusing to guess"
                )
            if verify:
                _verify(key)
            found[version] = key
        return found

    def _find(self, session: Session) -> dict[int, _CipherKey]:
        """The known versions' key objects, seen through another session of the pool."""
        keys: dict[int, _CipherKey] = {}
        for version in self._versions:
            obj = session.get_key(
                object_class=ObjectClass.SECRET_KEY, label=f"{self._key_label}-v{version}"
            )
            keys[version] = cast(_CipherKey, obj)
        return keys

    def _newer_version(self, version: int) -> _CipherKey:
        """A version above the ones loaded may have been made by another process; anything else
        is not ours. Caller holds PKCS11_LOCK and has an open state."""
        if not self._versions or version <= max(self._versions):
            raise IntegrityError
        assert self._open is not None
        lanes = self._open.lanes
        try:
            found = self._scan(lanes[0].session)
            if version not in found:
                raise IntegrityError
            self._versions = tuple(sorted(set(self._versions) | set(found)))
            for lane in lanes:
                lane.keys = found if lane is lanes[0] else self._find(lane.session)
        except PKCS11Error as exc:
            self._fail("finding a master key version", exc)
        return lanes[-1].keys[version]

    def _generate(self, session: Session, version: int) -> _CipherKey:
        label = f"{self._key_label}-v{version}"
        if list(session.get_objects({Attribute.LABEL: label})):
            raise KeyProviderUnavailable(
                f"{_PROVIDER}: an object labelled {label!r} already exists; not creating it"
            )
        obj = session.generate_key(
            KeyType.AES,
            _KEY_BITS,
            label=label,
            store=True,
            capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
            template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
                Attribute.WRAP: False,
                Attribute.UNWRAP: False,
                Attribute.SIGN: False,
                Attribute.VERIFY: False,
                Attribute.DERIVE: False,
            },
        )
        key = cast(_CipherKey, obj)
        _verify(key)
        return key


def _gcm(iv: bytes, aad: bytes) -> dict[str, Any]:
    return {"mechanism": Mechanism.AES_GCM, "mechanism_param": GCMParams(iv, aad, _TAG_BITS)}


_PROTECTION = [Attribute.SENSITIVE, Attribute.EXTRACTABLE]
_SHAPE = [Attribute.KEY_TYPE, Attribute.VALUE_LEN, Attribute.ENCRYPT, Attribute.DECRYPT]


def _is_protected(key: _CipherKey) -> bool:
    attrs = key.get_attributes(_PROTECTION)
    return attrs.get(Attribute.SENSITIVE) is True and attrs.get(Attribute.EXTRACTABLE) is False


def _verify(key: _CipherKey) -> None:
    """Refuse a master key object whose value could leave the token, or of the wrong kind."""
    if not _is_protected(key):
        raise KeyProviderUnavailable(
            f"{_PROVIDER}: master key object {key.label!r} is extractable or not sensitive; "
            "refusing to use it (create master keys with `themisdb keys init` only)"
        )
    attrs = key.get_attributes(_SHAPE)
    if (
        attrs.get(Attribute.KEY_TYPE) != KeyType.AES
        or attrs.get(Attribute.VALUE_LEN) != _KEY_BITS // 8
        or attrs.get(Attribute.ENCRYPT) is not True
        or attrs.get(Attribute.DECRYPT) is not True
    ):
        raise KeyProviderUnavailable(
            f"{_PROVIDER}: master key object {key.label!r} is not an AES-256 encryption key"
        )
