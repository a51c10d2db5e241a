"""The server-side SSLContext of the API listener: the specification's TLS profile."""

from __future__ import annotations

import ctypes
import logging
import ssl
from collections.abc import Callable

from themisdb.errors import ConfigError
from themisdb.settings import Settings

_log = logging.getLogger("themisdb.tls")

# TLS 1.3: exactly the specification's two suites.
TLS13_SUITES = ("TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
# TLS 1.2: ECDHE key exchange with AEAD ciphers only (forward secrecy, no CBC, no RSA kex).
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
    ]
)


_SSL_CTRL_SET_SESS_CACHE_MODE = 44
_SSL_SESS_CACHE_OFF = 0


def _libssl(symbol: str) -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    try:
        return getattr(ctypes.CDLL(None), symbol)  # the libssl Python's _ssl already loaded
    except (OSError, AttributeError):
        return getattr(ctypes.CDLL("libssl.so.3"), symbol)


def _ssl_ctx(ctx: ssl.SSLContext) -> int:
    """The SSL_CTX* of a context: the first field after PyObject_HEAD of CPython's _ssl
    context object. Python's ssl does not expose the two settings below; every use is checked
    through the public API or a test, and anything unexpected refuses to serve."""
    pointer = ctypes.c_void_p.from_address(id(ctx) + 2 * ctypes.sizeof(ctypes.c_void_p)).value
    if not pointer:
        raise ConfigError("TLS: cannot reach the OpenSSL context")
    return pointer


def _no_session_cache(ctx: ssl.SSLContext) -> None:
    """No server-side session cache: TLS 1.2 session-ID resumption is off as well as tickets
    (a cached session outlives the connection's keys, as a ticket does)."""
    ctrl = _libssl("SSL_CTX_ctrl")
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    ctrl.restype = ctypes.c_long
    ctrl(_ssl_ctx(ctx), _SSL_CTRL_SET_SESS_CACHE_MODE, _SSL_SESS_CACHE_OFF, None)


def _set_tls13_suites(ctx: ssl.SSLContext) -> None:
    """Python's ssl cannot choose TLS 1.3 suites (set_ciphers covers TLS <= 1.2): call
    OpenSSL's SSL_CTX_set_ciphersuites, then check the result through ``get_ciphers``."""
    setter = _libssl("SSL_CTX_set_ciphersuites")
    setter.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    setter.restype = ctypes.c_int
    if setter(_ssl_ctx(ctx), ":".join(TLS13_SUITES).encode()) != 1:
        raise ConfigError("TLS: cannot restrict the TLS 1.3 cipher suites")
    offered = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"}
    if offered != set(TLS13_SUITES):
        raise ConfigError(f"TLS: TLS 1.3 suites are {sorted(offered)}, not {list(TLS13_SUITES)}")


def profile_context(minimum: ssl.TLSVersion) -> ssl.SSLContext:
    """A server context with the specification's profile and no certificate yet: the API's
    listener and the replication listener share it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = minimum
    ctx.set_ciphers(TLS12_CIPHERS)
    _set_tls13_suites(ctx)
    # No session tickets in any version: OP_NO_TICKET covers TLS 1.2 only; TLS 1.3 tickets
    # are governed by num_tickets. No compression, no renegotiation.
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.num_tickets = 0
    _no_session_cache(ctx)
    return ctx


def build_context(settings: Settings, certificate: str, private_key: str) -> ssl.SSLContext:
    """A new context for this pair (raises ConfigError naming the variables on failure)."""
    ctx = profile_context(
        ssl.TLSVersion.TLSv1_3 if settings.tls_min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    if settings.tls_client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cafile=settings.tls_client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"THEMIS_TLS_CLIENT_CA: cannot load {settings.tls_client_ca}"
            ) from exc
    load_pair(ctx, settings, certificate, private_key)
    if settings.debug_pki and not settings.production:
        # THEMIS_DEBUG_PKI (development only; production refuses it): TLS secrets in the NSS
        # key log format, what Wireshark reads. The danger the spec names, behind the gate.
        ctx.keylog_filename = settings.debug_pki
        _log.warning("THEMIS_DEBUG_PKI: writing TLS session secrets to %s", settings.debug_pki)
    return ctx


def load_pair(ctx: ssl.SSLContext, settings: Settings, certificate: str, private_key: str) -> None:
    passphrase = settings.pki_key_passphrase
    try:
        ctx.load_cert_chain(
            certificate,
            private_key,
            password=passphrase.get_secret_value() if passphrase else None,
        )
    except (OSError, ssl.SSLError) as exc:
        # Neither the passphrase nor key bytes are in the message: name the variables only.
        raise ConfigError(
            "THEMIS_PKI_CERTIFICATE / THEMIS_PKI_PRIVATE_KEY: cannot load the pair "
            f"({getattr(exc, 'strerror', None) or 'bad file, wrong passphrase or mismatched key'})"
        ) from exc


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The API's SSLContext, or None when no certificate is configured (plain HTTP)."""
    if not (settings.pki_certificate and settings.pki_private_key):
        return None
    return build_context(settings, settings.pki_certificate, settings.pki_private_key)


_ALERT = 21  # TLS record content type
_FATAL = 2  # alert level


def watch_handshake_failures(ctx: ssl.SSLContext, on_failure: Callable[[str], None]) -> None:
    """Call ``on_failure(direction)`` for every fatal TLS alert on this context (what a failed
    handshake ends with: ours when we refuse, the client's when it refuses us). asyncio hides
    handshake errors outside debug mode, so they are observed here, through OpenSSL's message
    callback (CPython's private ``_msg_callback``, set at the C level to avoid its per-record
    enum conversions; it must not raise)."""

    def callback(
        conn: object, direction: str, version: int, content_type: int, msg_type: int, data: bytes
    ) -> None:
        if content_type == _ALERT and data[:1] == bytes([_FATAL]):
            try:
                on_failure(direction)
            except Exception:
                _log.exception("handshake failure hook failed")

    ssl._SSLContext._msg_callback.__set__(ctx, callback)  # type: ignore[attr-defined]
