"""The checks behind the rule table (rules.py): pure functions of a Context."""

from __future__ import annotations

import hmac
import ipaddress

from themisdb.posture._model import (
    Check,
    Context,
    Outcome,
    failed,
    manual,
    not_applicable,
    passed,
    unverified,
)
from themisdb.posture._token import token_weakness
from themisdb.posture.probes import (
    AUDIT_SINKS,
    CERTIFICATES,
    FILES,
    KEY_MANAGER,
    MASTER_KEY_AGE,
)
from themisdb.settings import SecretSource
from themisdb.tls import MAX_VALIDITY_DAYS, CertificateFacts

MODES = "Security Modes Overview"
UNSAFE = "Unsafe Defaults — Development Mode"
CHECKLIST = "Production Hardening Checklist"
REQUIRED = "Required Production Settings"
HSM = "HSM Configuration"
TOKENS = "Token and Secret Management"
TLS = "TLS / mTLS Configuration"
AUDIT = "Audit Logging Requirements"
PII = "PII and Data Classification"
WAL = "WAL Replication Security"
INTEGRATOR = "Actionable Integrator Checklist"
THREATS = "Threat Model Quick Reference"
# Not a section of the spec: promises of our own, kept in the same table.
STORAGE = "ThemisDB-Python: storage durability"

TOKEN_MAX_AGE_DAYS = 90
PREVIOUS_TOKEN_MAX_DAYS = 30  # our limit on a rotation's overlap: the spec's rotation is 90
WAL_CERT_MAX_DAYS = 30
EXPIRY_WARNING_DAYS = 30
_WELL_KNOWN_PINS = {
    "0000",
    "1111",
    "1234",
    "12345",
    "123456",
    "1234567",
    "12345678",
    "pin",
    "userpin",
    "user-pin",
    "changeme",
    "password",
}


# --- mode ------------------------------------------------------------------------------------


def _production_flag(ctx: Context) -> Outcome:
    s = ctx.settings
    if s.production_mode:
        return passed("THEMIS_PRODUCTION_MODE=1")
    if s.production:
        return failed(
            f"THEMIS_ENVIRONMENT={s.environment} asks for production but THEMIS_PRODUCTION_MODE "
            "is not set: set both"
        )
    return failed("THEMIS_PRODUCTION_MODE is not set: the server runs in development mode")


def _environment(ctx: Context) -> Outcome:
    s = ctx.settings
    if s.environment == "production":
        return passed("THEMIS_ENVIRONMENT=production")
    if s.environment != "development":
        return failed(
            f"THEMIS_ENVIRONMENT={s.environment}: every non-development environment, staging "
            "included, must run with THEMIS_ENVIRONMENT=production"
        )
    if s.production_mode:
        return failed("THEMIS_PRODUCTION_MODE=1 but THEMIS_ENVIRONMENT is development: set both")
    return failed("THEMIS_ENVIRONMENT is development (the default)")


# --- authentication ----------------------------------------------------------------------------


def _admin_token(ctx: Context) -> Outcome:
    token = ctx.settings.token_admin
    if token is None:
        return failed("THEMIS_TOKEN_ADMIN is not set: the API accepts any client without a token")
    weakness = token_weakness(token.get_secret_value())
    if weakness:
        return failed(f"THEMIS_TOKEN_ADMIN {weakness}")
    return passed("set, decodes to at least 32 bytes and looks random")


def _admin_token_age(ctx: Context) -> Outcome:
    s = ctx.settings
    if s.token_admin is None:
        return not_applicable("no admin token is set (see auth.admin_token)")
    source = s.secret_sources.get("THEMIS_TOKEN_ADMIN")
    if source is None or source.kind != "file" or source.path is None:
        return unverified(
            "the token's age is unknown when it comes from "
            f"{'the config file' if source and source.kind == 'config' else 'the environment'}; "
            "set THEMIS_TOKEN_ADMIN_FILE so its modification time shows when it was rotated"
        )
    info = ctx.probe(FILES).info(source.path)
    if info.problem:
        return failed(info.problem)
    age = ctx.now.timestamp() - info.mtime
    days = int(age // 86400)
    if age > TOKEN_MAX_AGE_DAYS * 86400:
        return failed(f"the token file was last changed {days} days ago (limit 90): rotate it")
    return passed(f"the token file was last changed {days} days ago")


def _previous_admin_token(ctx: Context) -> Outcome:
    s = ctx.settings
    previous, until = s.token_admin_previous, s.token_admin_previous_until
    if previous is None or until is None:  # settings refuse one without the other
        return not_applicable("no previous admin token is set")
    weakness = token_weakness(previous.get_secret_value())
    if weakness:
        return failed(f"THEMIS_TOKEN_ADMIN_PREVIOUS {weakness}")
    if s.token_admin is not None and hmac.compare_digest(
        previous.get_secret_value(), s.token_admin.get_secret_value()
    ):
        return failed("THEMIS_TOKEN_ADMIN_PREVIOUS is the current admin token: nothing rotated")
    days = (until - ctx.now).total_seconds() / 86400
    if days > PREVIOUS_TOKEN_MAX_DAYS:
        return failed(
            f"THEMIS_TOKEN_ADMIN_PREVIOUS is accepted for {days:.0f} more days "
            f"(limit {PREVIOUS_TOKEN_MAX_DAYS})"
        )
    if days <= 0:
        return passed(f"refused since {until.isoformat()} (see auth.admin_token_previous_expired)")
    return passed(f"accepted until {until.isoformat()} ({days:.1f} days)")


def _previous_admin_token_expired(ctx: Context) -> Outcome:
    until = ctx.settings.token_admin_previous_until
    if ctx.settings.token_admin_previous is None or until is None:
        return not_applicable("no previous admin token is set")
    if until <= ctx.now:
        return failed(f"its deadline {until.isoformat()} has passed: remove it")
    return passed(f"its deadline {until.isoformat()} is ahead")


def _rate_limited(ctx: Context) -> Outcome:
    s = ctx.settings
    off = [
        name
        for name, value in (
            ("THEMIS_RATE_LIMIT_RPS", s.rate_limit_rps),
            ("THEMIS_AUTH_LOCKOUT_THRESHOLD", s.auth_lockout_threshold),
        )
        if not value
    ]
    if off:
        return failed(f"{' and '.join(off)} = 0: disabled")
    return passed(
        f"{s.rate_limit_rps:g} requests/s (burst {s.rate_limit_burst}) per source and per "
        f"credential; lockout after {s.auth_lockout_threshold} failures"
    )


def _secondary_tokens(ctx: Context) -> Outcome:
    s = ctx.settings
    tokens = {"THEMIS_TOKEN_READONLY": s.token_readonly, "THEMIS_TOKEN_ANALYST": s.token_analyst}
    present = {name: t.get_secret_value() for name, t in tokens.items() if t is not None}
    if not present:
        return not_applicable("no read-only or analyst token is set")
    problems = [f"{name} {weak}" for name, v in present.items() if (weak := token_weakness(v))]
    values = list(present.values())
    if s.token_admin is not None:
        values.append(s.token_admin.get_secret_value())
    if len(set(values)) < len(values):
        problems.append("two of the tokens are identical: every role needs its own secret")
    if problems:
        return failed("; ".join(problems))
    return passed(f"{', '.join(present)}: strong and distinct")


# --- key management ----------------------------------------------------------------------------


def _hsm_stub(ctx: Context) -> Outcome:
    s = ctx.settings
    if s.allow_hsm_stub is None:
        return passed("THEMIS_ALLOW_HSM_STUB is absent")
    if s.allow_hsm_stub and not (s.hsm_enabled or s.vault_addr):
        return failed("THEMIS_ALLOW_HSM_STUB is set: master keys live in a software HSM stub")
    return failed(
        "THEMIS_ALLOW_HSM_STUB is set; production requires the variable to be absent, "
        "whatever its value"
    )


def _key_manager(ctx: Context) -> Outcome:
    s = ctx.settings
    if s.hsm_enabled:
        if s.hsm_pin is None:
            return failed("THEMIS_HSM_ENABLED=1 but no THEMIS_HSM_PIN / THEMIS_HSM_PIN_FILE")
        return passed("PKCS#11 HSM (THEMIS_HSM_ENABLED=1)")
    if s.vault_addr:
        return passed(f"Vault transit at {s.vault_addr}")
    if s.allow_hsm_stub:
        return failed("no Vault or HSM: the software HSM stub holds the master key")
    return failed(
        "no Vault or HSM is configured: the file key provider keeps the master key beside the data"
    )


def _vault_token_short_lived(ctx: Context) -> Outcome:
    s = ctx.settings
    if not s.vault_addr or s.hsm_enabled:
        return not_applicable("Vault is not the key manager")
    source = s.secret_sources.get("THEMIS_VAULT_TOKEN")
    if s.vault_token is None:
        return passed("no static token: requests go through Vault agent's auto-auth")
    if source and source.kind == "file":
        return passed(f"token read from a Vault agent sink file ({source.path})")
    if source and source.kind == "config":
        return failed("THEMIS_VAULT_TOKEN is written in the config file: a static token")
    facts = ctx.probe(KEY_MANAGER)
    if facts.token_ttl_seconds is None:
        return failed(f"Vault did not confirm the token: {facts.error or 'no answer'}")
    if facts.token_ttl_seconds == 0:
        return failed("the Vault token never expires (a root or non-expiring token)")
    return passed(f"the Vault token expires in {facts.token_ttl_seconds} s")


def _vault_not_root(ctx: Context) -> Outcome:
    s = ctx.settings
    if not s.vault_addr or s.hsm_enabled or s.vault_token is None:
        return not_applicable("no static Vault token is used")
    facts = ctx.probe(KEY_MANAGER)
    if facts.token_is_root is None:
        return unverified(f"Vault did not say: {facts.error or 'no answer'}")
    if facts.token_is_root:
        return failed("the Vault token has the root policy")
    return passed("the Vault token is not a root token")


def _master_key_usable(ctx: Context) -> Outcome:
    s = ctx.settings
    if not (s.hsm_enabled or s.vault_addr):
        return not_applicable("no HSM or Vault (see keys.key_manager)")
    facts = ctx.probe(KEY_MANAGER)
    if not facts.reachable:
        return failed(f"{facts.provider}: unreachable: {facts.error or 'no answer'}")
    if not facts.key_exists:
        return failed(f"{facts.provider}: {facts.error or 'no master key'}")
    if facts.key_protected is not True:
        what = "extractable" if facts.provider == "pkcs11" else "exportable"
        return failed(f"{facts.provider}: the master key is {what} (or could not be checked)")
    what = "sensitive and non-extractable" if facts.provider == "pkcs11" else "not exportable"
    return passed(f"{facts.provider}: reachable; the master key exists and is {what}")


def _vault_agent(ctx: Context) -> Outcome:
    s = ctx.settings
    if not s.vault_addr or s.hsm_enabled:
        return not_applicable("Vault is not the key manager")
    source = s.secret_sources.get("THEMIS_VAULT_TOKEN")
    if s.vault_token is None or (source and source.kind == "file"):
        return passed("the token comes from Vault agent")
    return failed("a static THEMIS_VAULT_TOKEN is used instead of Vault agent")


def _hsm_pin(ctx: Context) -> Outcome:
    s = ctx.settings
    if not s.hsm_enabled:
        return not_applicable("no HSM is configured")
    if s.hsm_pin is None:
        return failed("THEMIS_HSM_ENABLED=1 but no THEMIS_HSM_PIN / THEMIS_HSM_PIN_FILE")
    if s.hsm_pin.get_secret_value().strip().lower() in _WELL_KNOWN_PINS:
        return failed("THEMIS_HSM_PIN is a well-known default PIN")
    return _secret_origin(s.secret_sources["THEMIS_HSM_PIN"], "THEMIS_HSM_PIN")


def _rotation_schedule(ctx: Context) -> Outcome:
    days = ctx.settings.key_rotation_days
    if days <= 0:
        return failed("THEMIS_KEY_ROTATION_DAYS=0 disables master key rotation")
    return passed(f"master keys rotate every {days} days")


def _master_key_age(ctx: Context) -> Outcome:
    days = ctx.settings.key_rotation_days
    if days <= 0:
        return not_applicable("no rotation schedule (see keys.rotation_schedule)")
    since = ctx.probe(MASTER_KEY_AGE)
    if since is None:
        return unverified("no record of the master key's age yet (the server records it at start)")
    age = (ctx.now.timestamp() - since) / 86400
    if age > days:
        return failed(
            f"the master key has been in use {age:.0f} days (THEMIS_KEY_ROTATION_DAYS="
            f"{days}): run `themisdb keys rotate`"
        )
    return passed(f"the master key has been in use {age:.0f} of {days} days")


def _rotation_90_days(ctx: Context) -> Outcome:
    days = ctx.settings.key_rotation_days
    if 0 < days <= 90:
        return passed(f"{days} days")
    return failed(f"THEMIS_KEY_ROTATION_DAYS={days}; 90 or fewer is recommended")


def _dedicated_key(ctx: Context) -> Outcome:
    s = ctx.settings
    if not (s.vault_addr or s.hsm_enabled):
        return not_applicable("no Vault or HSM is configured (see keys.key_manager)")
    if not s.cluster_id:
        return failed("THEMIS_CLUSTER_ID is not set: the master key name is not cluster-specific")
    return passed(f"master key named for cluster {s.cluster_id!r}")


# --- TLS ---------------------------------------------------------------------------------------


def _certificate_configured(ctx: Context) -> Outcome:
    s = ctx.settings
    missing = [
        name
        for name, value in (
            ("THEMIS_PKI_CERTIFICATE", s.pki_certificate),
            ("THEMIS_PKI_PRIVATE_KEY", s.pki_private_key),
        )
        if not value
    ]
    if missing:
        return failed(f"{' and '.join(missing)} not set: the API is served without TLS")
    assert s.pki_certificate
    assert s.pki_private_key
    problems = _file_problems(ctx, s.pki_certificate, s.pki_private_key)
    if problems:
        return failed("; ".join(problems))
    api = ctx.probe(CERTIFICATES).api
    assert api is not None
    if api.error:
        return failed(f"THEMIS_PKI_CERTIFICATE: {api.error}")
    if api.key_error:
        return failed(f"THEMIS_PKI_PRIVATE_KEY: {api.key_error}")
    if api.key_matches is False:
        return failed("THEMIS_PKI_PRIVATE_KEY does not belong to THEMIS_PKI_CERTIFICATE")
    return passed("certificate and matching private key are readable")


def _api_certificate(ctx: Context) -> CertificateFacts | Outcome:
    if not ctx.settings.pki_certificate:
        return not_applicable("no API certificate is configured (see tls.certificate_configured)")
    api = ctx.probe(CERTIFICATES).api
    assert api is not None
    if api.error:
        return failed(f"THEMIS_PKI_CERTIFICATE: {api.error}")
    return api


def _san_matches(ctx: Context) -> Outcome:
    api = _api_certificate(ctx)
    if isinstance(api, Outcome):
        return api
    s = ctx.settings
    hostname = s.service_hostname
    if not hostname:
        bind = s.http_bind_address
        if bind in ("0.0.0.0", "::", ""):  # noqa: S104 - comparing, not binding
            return failed("THEMIS_SERVICE_HOSTNAME is not set and the bind address is a wildcard")
        hostname = bind
    if api.matches_hostname(hostname):
        return passed(f"the certificate's SANs cover {hostname}")
    sans = ", ".join(api.dns_names + api.ip_addresses) or "none"
    return failed(f"no SAN matches {hostname} (SANs: {sans})")


def _key_strength(ctx: Context) -> Outcome:
    api = _api_certificate(ctx)
    if isinstance(api, Outcome):
        return api
    if api.key_strong:
        return passed(api.key_description)
    return failed(f"{api.key_description}: RSA >= 3072 bits or ECDSA P-256/P-384 required")


def _validity(ctx: Context) -> Outcome:
    api = _api_certificate(ctx)
    if isinstance(api, Outcome):
        return api
    assert api.not_before is not None
    assert api.not_after is not None
    if ctx.now < api.not_before:
        return failed(f"not valid before {api.not_before:%Y-%m-%d %H:%M} UTC")
    if ctx.now > api.not_after:
        return failed(f"expired on {api.not_after:%Y-%m-%d %H:%M} UTC")
    if api.validity_days > MAX_VALIDITY_DAYS:
        return failed(f"valid for {api.validity_days:.0f} days; at most 397 allowed")
    return passed(f"valid for {api.validity_days:.0f} days, until {api.not_after:%Y-%m-%d}")


def _key_file_private(ctx: Context) -> Outcome:
    key = ctx.settings.pki_private_key
    if not key:
        return not_applicable("no API private key is configured")
    info = ctx.probe(FILES).info(key)
    if info.problem:
        return failed(f"THEMIS_PKI_PRIVATE_KEY: {info.problem}")
    if info.mode & 0o077:
        return failed(
            f"THEMIS_PKI_PRIVATE_KEY {key} has mode {info.mode:04o}: group or others "
            "can read it (chmod 600)"
        )
    return passed(f"mode {info.mode:04o}")


def _chain(ctx: Context) -> Outcome:
    s = ctx.settings
    if not s.tls_ca:
        return not_applicable("THEMIS_TLS_CA is not set: no chain to check")
    api = _api_certificate(ctx)
    if isinstance(api, Outcome):
        return api
    problem = ctx.probe(CERTIFICATES).api_chain_problem
    if problem:
        return failed(problem)
    return passed("the chain verifies against THEMIS_TLS_CA")


def _expiring(ctx: Context) -> Outcome:
    api = _api_certificate(ctx)
    if isinstance(api, Outcome):
        return api
    assert api.not_after is not None
    days = (api.not_after - ctx.now).total_seconds() / 86400
    if days < EXPIRY_WARNING_DAYS:
        return failed(f"expires in {days:.0f} days ({api.not_after:%Y-%m-%d}): renew it")
    return passed(f"expires in {days:.0f} days")


def _tls13(ctx: Context) -> Outcome:
    if ctx.settings.tls_min_version == "1.3":
        return passed("THEMIS_TLS_MIN_VERSION=1.3")
    return failed("TLS 1.2 is still accepted; THEMIS_TLS_MIN_VERSION=1.3 is strongly recommended")


# --- WAL replication ---------------------------------------------------------------------------


def _wal_mtls(ctx: Context) -> Outcome:
    s = ctx.settings
    if s.role == "standalone":
        return not_applicable("single node (THEMIS_ROLE=standalone): no replication traffic")
    if not s.wal_grpc_enable_mtls:
        return failed(f"THEMIS_ROLE={s.role} replicates in plaintext: THEMIS_WAL_GRPC_ENABLE_MTLS")
    if not s.wal_grpc_require_client_cert:
        return failed("mTLS is on but THEMIS_WAL_GRPC_REQUIRE_CLIENT_CERT is not set")
    return passed("mutual TLS with required client certificates")


def _wal_files(ctx: Context) -> Outcome:
    s = ctx.settings
    if s.role == "standalone" and not s.wal_grpc_enable_mtls:
        return not_applicable("single node: no replication")
    paths = {
        "THEMIS_WAL_GRPC_CERT_PATH": s.wal_grpc_cert_path,
        "THEMIS_WAL_GRPC_KEY_PATH": s.wal_grpc_key_path,
        "THEMIS_WAL_GRPC_CA_CERT_PATH": s.wal_grpc_ca_cert_path,
    }
    missing = [name for name, value in paths.items() if not value]
    if missing:
        return failed(f"not set: {', '.join(missing)}")
    problems = [
        f"{name}: {problem}"
        for name, value in paths.items()
        if value and (problem := ctx.probe(FILES).info(value).problem)
    ]
    if problems:
        return failed("; ".join(problems))
    wal = ctx.probe(CERTIFICATES).wal
    assert wal is not None
    if wal.error:
        return failed(f"THEMIS_WAL_GRPC_CERT_PATH: {wal.error}")
    if wal.key_error or wal.key_matches is False:
        return failed(f"THEMIS_WAL_GRPC_KEY_PATH: {wal.key_error or 'does not match the cert'}")
    chain = ctx.probe(CERTIFICATES).wal_chain_problem
    if chain:
        return failed(f"THEMIS_WAL_GRPC_CERT_PATH {chain}")
    return passed("replication certificate, key and CA are readable, match and chain")


def _wal_dedicated_ca(ctx: Context) -> Outcome:
    s = ctx.settings
    if not s.wal_grpc_ca_cert_path:
        return not_applicable("no replication CA is configured")
    if not s.tls_ca:
        return passed("no public API CA is configured beside the replication CA")
    files = ctx.probe(FILES)
    wal, api = files.info(s.wal_grpc_ca_cert_path), files.info(s.tls_ca)
    if wal.sha256 is not None and wal.sha256 == api.sha256:
        return failed("THEMIS_WAL_GRPC_CA_CERT_PATH and THEMIS_TLS_CA are the same CA")
    return passed("the replication CA differs from the API CA")


def _wal_short_lived(ctx: Context) -> Outcome:
    s = ctx.settings
    if not s.wal_grpc_cert_path:
        return not_applicable("no replication certificate is configured")
    wal = ctx.probe(CERTIFICATES).wal
    assert wal is not None
    if wal.error:
        return failed(f"THEMIS_WAL_GRPC_CERT_PATH: {wal.error}")
    if wal.validity_days > WAL_CERT_MAX_DAYS:
        return failed(f"valid for {wal.validity_days:.0f} days; 30 or fewer is recommended")
    return passed(f"valid for {wal.validity_days:.0f} days")


# --- data safety -------------------------------------------------------------------------------


def _pii_strict(ctx: Context) -> Outcome:
    if ctx.settings.pii_strict:
        return passed("THEMIS_PII_STRICT=1")
    return failed("THEMIS_PII_STRICT is off: PII may reach logs and query results")


def _auto_download(ctx: Context) -> Outcome:
    if ctx.settings.disable_auto_download:
        return passed("THEMIS_DISABLE_AUTO_DOWNLOAD=1")
    return failed("THEMIS_DISABLE_AUTO_DOWNLOAD is not set")


def _must_be_absent(variable: str, value: object) -> Outcome:
    if value is None:
        return passed(f"{variable} is not set")
    return failed(f"{variable} is set")


def _pii_force_init_fail(ctx: Context) -> Outcome:
    return _must_be_absent("THEMIS_PII_FORCE_INIT_FAIL", ctx.settings.pii_force_init_fail)


def _debug_enc(ctx: Context) -> Outcome:
    outcome = _must_be_absent("THEMIS_DEBUG_ENC_DIR", ctx.settings.debug_enc_dir)
    if outcome.status == "fail":
        return failed(f"THEMIS_DEBUG_ENC_DIR={ctx.settings.debug_enc_dir}: plaintext dumps")
    return outcome


def _debug_pki(ctx: Context) -> Outcome:
    return _must_be_absent("THEMIS_DEBUG_PKI", ctx.settings.debug_pki)


def _durable_commits(ctx: Context) -> Outcome:
    if ctx.settings.sync == "full":
        return passed("THEMIS_SYNC=full: a write is acknowledged once it is on disk")
    return failed("THEMIS_SYNC=normal: acknowledged writes can be lost on power failure")


# --- audit, operations, secrets ----------------------------------------------------------------


def _audit_sink(ctx: Context) -> Outcome:
    audit = ctx.settings.audit
    if not audit.enabled:
        return failed("logging.audit.enabled is false")
    external = audit.external_outputs
    if not external:
        return failed("no syslog/SIEM output in logging.audit.outputs: events stay on this host")
    return passed(", ".join(f"syslog {o.protocol}://{o.server}" for o in external))


def _audit_sink_reachable(ctx: Context) -> Outcome:
    audit = ctx.settings.audit
    if not audit.enabled or not audit.external_outputs:
        return not_applicable("no syslog/SIEM output is configured (see audit.external_sink)")
    results = ctx.probe(AUDIT_SINKS)
    down = [
        f"{server}: {problem}"
        for server, problem in results.items()
        if problem not in (None, "udp")
    ]
    if down:
        return failed("; ".join(down))
    udp = [server for server, problem in results.items() if problem == "udp"]
    if udp:
        return unverified(f"udp cannot confirm delivery: {', '.join(udp)}")
    return passed(f"answering now: {', '.join(results)}")


def _signed_chain(ctx: Context) -> Outcome:
    s = ctx.settings
    if not s.audit.enabled:
        return failed("logging.audit.enabled is false")
    if not s.audit.signing.enabled:
        return failed("logging.audit.signing.enabled is false: the chain is not signed")
    if not s.audit_signing_key_file:
        if s.hsm_enabled:
            label = f"{s.hsm_key_label}-audit"
            facts = ctx.probe(KEY_MANAGER)
            if facts.audit_key_exists is None:
                return failed(f"the HSM could not be asked for {label}: {facts.error or '?'}")
            if not facts.audit_key_exists:
                return failed(f"no audit signing key {label} in the HSM: run `themisdb keys init`")
            return passed(f"ECDSA P-256 checkpoints signed inside the HSM ({label})")
        return failed(
            "no THEMIS_AUDIT_SIGNING_KEY_FILE and no HSM (development creates a key beside the "
            "data; production needs its own)"
        )
    problem = ctx.probe(FILES).info(s.audit_signing_key_file).problem
    if problem:
        return failed(f"THEMIS_AUDIT_SIGNING_KEY_FILE: {problem}")
    return passed("ECDSA P-256 checkpoints signed with THEMIS_AUDIT_SIGNING_KEY_FILE")


def _audit_blocks(ctx: Context) -> Outcome:
    if ctx.settings.audit.on_failure == "block":
        return passed("on_failure: block: nothing happens that is not audited")
    return failed("on_failure: spool: requests go on while no audit sink can write (spooled)")


def _health_internal(ctx: Context) -> Outcome:
    bind = ctx.settings.health_bind_address
    if bind == "localhost":
        return passed("localhost")
    try:
        address = ipaddress.ip_address(bind.strip("[]"))
    except ValueError:
        return unverified(f"{bind} is a name; make sure it resolves to an internal address only")
    if address.is_unspecified:
        return failed(f"{bind} listens on every interface")
    if address.is_loopback or address.is_private or address.is_link_local:
        return passed(f"{bind} is internal")
    return failed(f"{bind} is a public address")


def _secrets_from_store(ctx: Context) -> Outcome:
    s = ctx.settings
    in_config = [n for n, src in s.secret_sources.items() if src.kind == "config"]
    if in_config:
        return failed(f"written in the config file {s.config_file}: {', '.join(in_config)}")
    from_env = sorted(n for n, src in s.secret_sources.items() if src.kind == "env")
    if from_env:
        return unverified(
            f"{', '.join(from_env)} come from plain environment variables; cannot tell whether "
            "your platform injected them from a secret store (the *_FILE variants make it visible)"
        )
    return passed("every secret is read from a *_FILE or none is set")


def _secret_origin(source: SecretSource, variable: str) -> Outcome:
    if source.kind == "config":
        return failed(f"{variable} is {source.describe(variable)}: hardcoded")
    if source.kind == "env":
        return unverified(
            f"{variable} is {source.describe(variable)}; use {variable}_FILE so "
            "injection by a secrets manager is visible"
        )
    return passed(f"{variable} is {source.describe(variable)}")


def _file_problems(ctx: Context, *paths: str) -> list[str]:
    files = ctx.probe(FILES)
    return [p for p in (files.info(path).problem for path in paths) if p]


def _process(text: str) -> Check:
    def check(ctx: Context) -> Outcome:
        return manual(text)

    return check
