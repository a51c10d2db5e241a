"""The validated, frozen configuration model.

Every environment variable is a field whose alias is the variable's exact name, so validation
errors name the variable and the documentation can be generated from one place. Secrets are
``SecretStr``: they print as ``**********`` in ``str``, ``repr`` and JSON dumps.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    field_validator,
    model_validator,
)

_FROZEN = ConfigDict(frozen=True, extra="forbid", populate_by_name=False)


def _split_host_port(value: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``; raise ValueError with a readable reason."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError("expected host:port, for example siem.example.com:514")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)  # raises ValueError on garbage
    elif ":" in host:
        raise ValueError("write IPv6 addresses in brackets, for example [::1]:514")
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError("port must be between 1 and 65535")
    return host, number


def _parse_retention(value: str) -> tuple[int | None, int | None]:
    text = value.strip()
    if text.isdigit():
        if int(text) < 1:
            raise ValueError("keep at least one record")
        return int(text), None
    try:
        size = int(_BYTE_SIZE.validate_python(text))
    except ValueError:
        raise ValueError("expected a record count (1000000) or a size (512MB, 2GiB)") from None
    if size < 1024:
        raise ValueError("a size bound below 1KiB keeps nothing useful")
    return None, size


_BYTE_SIZE: TypeAdapter[ByteSize] = TypeAdapter(ByteSize)


class RotationConfig(BaseModel):
    """``logging.audit.outputs[].rotation`` of the spec: size and age bounds of one file."""

    model_config = _FROZEN
    max_size: ByteSize = Field(ByteSize(100 * 1000 * 1000), description="e.g. 100MB or 64MiB")
    max_age: int = Field(90, ge=1, description="days a file is kept before rotation")


class FileOutput(BaseModel):
    """An audit output that appends JSON lines to a local file."""

    model_config = _FROZEN
    type: Literal["file"]
    path: str = Field(min_length=1)
    rotation: RotationConfig = RotationConfig()
    fsync: Literal["always", "never"] = Field(
        "always", description="always: fsync every record; never: leave it to the OS"
    )


class SyslogOutput(BaseModel):
    """An RFC 5424 syslog/SIEM audit output."""

    model_config = _FROZEN
    type: Literal["syslog"]
    server: str
    protocol: Literal["tcp", "udp", "tls"] = "tcp"
    ca_file: str | None = Field(
        None, description="protocol tls: CA bundle that verifies the server (default: system)"
    )
    server_name: str | None = Field(
        None, description="protocol tls: name checked against the server certificate"
    )

    @field_validator("server")
    @classmethod
    def _server_is_host_port(cls, value: str) -> str:
        _split_host_port(value)
        return value

    @property
    def address(self) -> tuple[str, int]:
        return _split_host_port(self.server)


AuditOutput = Annotated[FileOutput | SyslogOutput, Field(discriminator="type")]


class SigningConfig(BaseModel):
    """``logging.audit.signing``: the ECDSA-signed hash chain."""

    model_config = _FROZEN
    enabled: bool = False
    algorithm: Literal["ECDSA-P256"] = "ECDSA-P256"
    checkpoint_every: int = Field(1000, ge=1, description="events between signed checkpoints")
    checkpoint_seconds: float = Field(60, gt=0, description="seconds between checkpoints")


class AuditConfig(BaseModel):
    """The spec's ``logging.audit`` YAML block, exactly as written there."""

    model_config = _FROZEN
    enabled: bool = True
    outputs: tuple[AuditOutput, ...] = ()
    signing: SigningConfig = SigningConfig()
    on_failure: Literal["spool", "block"] = "spool"

    @property
    def external_outputs(self) -> tuple[SyslogOutput, ...]:
        """Outputs that leave this machine (the spec's SIEM / syslog sinks)."""
        return tuple(o for o in self.outputs if isinstance(o, SyslogOutput))


@dataclass(frozen=True)
class SecretSource:
    """Where a secret came from; never holds the value itself."""

    kind: Literal["env", "file", "config"]
    path: str | None = None  # the *_FILE path or the YAML file

    def describe(self, variable: str) -> str:
        if self.kind == "file":
            return f"read from {variable}_FILE ({self.path})"
        if self.kind == "config":
            return f"written in the config file {self.path}"
        return f"taken from the environment variable {variable}"


# Variables whose value may also be read from a file named by VARIABLE_FILE.
SECRET_FILE_VARIABLES = (
    "THEMIS_TOKEN_ADMIN",
    "THEMIS_TOKEN_ADMIN_PREVIOUS",
    "THEMIS_TOKEN_READONLY",
    "THEMIS_TOKEN_ANALYST",
    "THEMIS_VAULT_TOKEN",
    "THEMIS_HSM_PIN",
    "THEMIS_PKI_KEY_PASSPHRASE",
)

Port = Annotated[int, Field(ge=1, le=65535)]


class Settings(BaseModel):
    """Every setting of a ThemisDB process. Built once by ``load_settings`` and passed down."""

    model_config = _FROZEN

    # --- mode --------------------------------------------------------------------------------
    production_mode: bool = Field(
        False,
        alias="THEMIS_PRODUCTION_MODE",
        description="1 enforces the production checklist at startup (also on when "
        "THEMIS_ENVIRONMENT is anything but development).",
    )
    environment: str = Field(
        "development",
        alias="THEMIS_ENVIRONMENT",
        description="development (default) or production; any other value (staging, ...) "
        "is treated as production, as the spec requires for every non-development environment.",
    )

    # --- server ------------------------------------------------------------------------------
    http_bind_address: str = Field(
        "127.0.0.1", alias="THEMIS_HTTP_BIND_ADDRESS", description="address of the API listener"
    )
    http_port: Port = Field(8765, alias="THEMIS_HTTP_PORT", description="port of the API listener")
    health_bind_address: str = Field(
        "127.0.0.1",
        alias="THEMIS_HEALTH_BIND_ADDRESS",
        description="address of the internal listener (/health/*, /metrics)",
    )
    health_port: Port = Field(
        9090, alias="THEMIS_HEALTH_PORT", description="port of the internal listener"
    )
    data_dir: str = Field(
        "./data", alias="THEMIS_DATA_DIR", description="directory of the database files"
    )
    config_file: str | None = Field(
        None,
        alias="THEMIS_CONFIG",
        description="YAML config file (same as --config); environment variables override it",
    )

    # --- authentication ----------------------------------------------------------------------
    token_admin: SecretStr | None = Field(
        None,
        alias="THEMIS_TOKEN_ADMIN",
        description="admin API token: base64 of at least 32 random bytes "
        "(`themisdb token generate`); also THEMIS_TOKEN_ADMIN_FILE",
    )

    token_readonly: SecretStr | None = Field(
        None,
        alias="THEMIS_TOKEN_READONLY",
        description="token with scope data:read only; also THEMIS_TOKEN_READONLY_FILE",
    )
    token_analyst: SecretStr | None = Field(
        None,
        alias="THEMIS_TOKEN_ANALYST",
        description="token with scope data:read, never of fields classified pii/restricted; "
        "also THEMIS_TOKEN_ANALYST_FILE",
    )

    token_admin_previous: SecretStr | None = Field(
        None,
        alias="THEMIS_TOKEN_ADMIN_PREVIOUS",
        description="the admin token being rotated out: also accepted until "
        "THEMIS_TOKEN_ADMIN_PREVIOUS_UNTIL, then refused; also THEMIS_TOKEN_ADMIN_PREVIOUS_FILE",
    )
    token_admin_previous_until: AwareDatetime | None = Field(
        None,
        alias="THEMIS_TOKEN_ADMIN_PREVIOUS_UNTIL",
        description="RFC 3339 time with offset (2026-03-01T00:00:00Z) after which "
        "THEMIS_TOKEN_ADMIN_PREVIOUS is refused; required with it",
    )
    session_idle_timeout: float = Field(
        900,
        gt=0,
        alias="THEMIS_SESSION_IDLE_TIMEOUT",
        description="seconds a session token may go unused before it expires",
    )
    session_lifetime: float = Field(
        28800,
        gt=0,
        alias="THEMIS_SESSION_LIFETIME",
        description="seconds after which a session token expires however much it is used",
    )
    rate_limit_rps: float = Field(
        1000,
        ge=0,
        alias="THEMIS_RATE_LIMIT_RPS",
        description="API requests per second allowed per source address and per credential "
        "(token bucket; 0 disables rate limiting)",
    )
    rate_limit_burst: int = Field(
        2000,
        ge=1,
        alias="THEMIS_RATE_LIMIT_BURST",
        description="bucket size: requests a source or credential may send at once",
    )
    auth_lockout_threshold: int = Field(
        5,
        ge=0,
        alias="THEMIS_AUTH_LOCKOUT_THRESHOLD",
        description="failed authentications from one source address before it is locked out "
        "(1 s, then doubling on every further failure; 0 disables the lockout)",
    )
    auth_lockout_max_seconds: float = Field(
        900,
        gt=0,
        alias="THEMIS_AUTH_LOCKOUT_MAX_SECONDS",
        description="longest lockout; failures older than this are forgotten",
    )

    # --- storage and API limits --------------------------------------------------------------
    sync: Literal["full", "normal"] = Field(
        "full",
        alias="THEMIS_SYNC",
        description="full (default): a write is acknowledged after it is on disk; normal: "
        "faster, but the last commits can be lost on power failure",
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        alias="THEMIS_MAX_BODY_BYTES",
        description="largest request body accepted (413 beyond)",
    )
    query_max_results: int = Field(
        10000,
        ge=1,
        alias="THEMIS_QUERY_MAX_RESULTS",
        description="most rows one query or page returns (the response says truncated)",
    )

    # --- key management ----------------------------------------------------------------------
    hsm_enabled: bool = Field(
        False, alias="THEMIS_HSM_ENABLED", description="1 uses the PKCS#11 HSM for master keys"
    )
    allow_hsm_stub: bool | None = Field(
        None,
        alias="THEMIS_ALLOW_HSM_STUB",
        description="development only: allows the software HSM simulation. Production refuses "
        "to start while it is set at all.",
    )
    hsm_pin: SecretStr | None = Field(
        None, alias="THEMIS_HSM_PIN", description="PKCS#11 user PIN; also THEMIS_HSM_PIN_FILE"
    )
    hsm_session_pool: int = Field(
        4, ge=1, le=1024, alias="THEMIS_HSM_SESSION_POOL", description="PKCS#11 sessions to keep"
    )
    hsm_library: str = Field(
        "/usr/lib/softhsm/libsofthsm2.so",
        alias="THEMIS_HSM_LIBRARY",
        description="PKCS#11 module (default: SoftHSM2's)",
    )
    hsm_token_label: str = Field(
        "themisdb", alias="THEMIS_HSM_TOKEN_LABEL", description="label of the PKCS#11 token"
    )
    hsm_key_label: str = Field(
        "themisdb-master",
        alias="THEMIS_HSM_KEY_LABEL",
        description="label prefix of the master key objects (versions are -v1, -v2, ...)",
    )
    vault_addr: str | None = Field(
        None, alias="THEMIS_VAULT_ADDR", description="HashiCorp Vault address (transit engine)"
    )
    vault_token: SecretStr | None = Field(
        None,
        alias="THEMIS_VAULT_TOKEN",
        description="Vault token; prefer THEMIS_VAULT_TOKEN_FILE (a Vault agent sink)",
    )
    vault_transit_mount: str = Field(
        "transit", alias="THEMIS_VAULT_TRANSIT_MOUNT", description="mount path of transit"
    )
    vault_transit_key: str | None = Field(
        None,
        alias="THEMIS_VAULT_TRANSIT_KEY",
        description="transit key name (default: themisdb-<THEMIS_CLUSTER_ID>)",
    )
    dek_cache_ttl: float = Field(
        300,
        ge=0,
        alias="THEMIS_DEK_CACHE_TTL",
        description="seconds an unwrapped data key stays cached in memory",
    )
    key_rotation_days: int = Field(
        90,
        ge=0,
        alias="THEMIS_KEY_ROTATION_DAYS",
        description="master key rotation schedule in days (0 disables the schedule)",
    )
    cluster_id: str | None = Field(
        None,
        alias="THEMIS_CLUSTER_ID",
        description="names this cluster's own transit key / HSM key (never shared by clusters)",
    )

    # --- PII and downloads -------------------------------------------------------------------
    pii_strict: bool = Field(
        False, alias="THEMIS_PII_STRICT", description="1 makes PII handling fail closed"
    )
    pii_patterns: str | None = Field(
        None,
        alias="THEMIS_PII_PATTERNS",
        description="PII pattern file (default: the shipped config/security/pii_patterns.yaml)",
    )
    pii_force_init_fail: bool | None = Field(
        None,
        alias="THEMIS_PII_FORCE_INIT_FAIL",
        description="test hook that makes PII initialisation fail; never in production",
    )
    disable_auto_download: bool = Field(
        False,
        alias="THEMIS_DISABLE_AUTO_DOWNLOAD",
        description="1 forbids fetching models or data at run time",
    )

    # --- debugging (development only) --------------------------------------------------------
    debug_enc_dir: str | None = Field(
        None,
        alias="THEMIS_DEBUG_ENC_DIR",
        description="development only: writes plaintext encryption debug records there",
    )
    debug_pki: str | None = Field(
        None,
        alias="THEMIS_DEBUG_PKI",
        description="development only: TLS key log file and PKI debug logging",
    )

    audit_signing_key_file: str | None = Field(
        None,
        alias="THEMIS_AUDIT_SIGNING_KEY_FILE",
        description="ECDSA P-256 private key (PEM) that signs audit checkpoints (development "
        "creates DATA_DIR/audit/signing-key.pem when unset)",
    )
    node_id: str | None = Field(
        None, alias="THEMIS_NODE_ID", description="node id in audit events (default: hostname)"
    )

    # --- TLS ---------------------------------------------------------------------------------
    pki_certificate: str | None = Field(
        None, alias="THEMIS_PKI_CERTIFICATE", description="API server certificate (PEM)"
    )
    pki_private_key: str | None = Field(
        None, alias="THEMIS_PKI_PRIVATE_KEY", description="API server private key (PEM)"
    )
    pki_key_passphrase: SecretStr | None = Field(
        None,
        alias="THEMIS_PKI_KEY_PASSPHRASE",
        description="passphrase of an encrypted private key; also THEMIS_PKI_KEY_PASSPHRASE_FILE",
    )
    tls_min_version: Literal["1.2", "1.3"] = Field(
        "1.2", alias="THEMIS_TLS_MIN_VERSION", description="1.2 (default) or 1.3"
    )
    tls_client_ca: str | None = Field(
        None,
        alias="THEMIS_TLS_CLIENT_CA",
        description="CA bundle of API client certificates; set, every client must present one",
    )
    tls_ca: str | None = Field(
        None, alias="THEMIS_TLS_CA", description="CA bundle of the public API certificate chain"
    )
    service_hostname: str | None = Field(
        None,
        alias="THEMIS_SERVICE_HOSTNAME",
        description="hostname clients use; certificate SANs must match it",
    )

    # --- WAL replication ---------------------------------------------------------------------
    role: Literal["standalone", "leader", "follower"] = Field(
        "standalone",
        alias="THEMIS_ROLE",
        description="standalone (single node, default), leader or follower",
    )
    wal_grpc_enable_mtls: bool = Field(
        False, alias="THEMIS_WAL_GRPC_ENABLE_MTLS", description="1 protects replication with mTLS"
    )
    wal_grpc_require_client_cert: bool = Field(
        False,
        alias="THEMIS_WAL_GRPC_REQUIRE_CLIENT_CERT",
        description="1 makes the leader demand a client certificate from followers",
    )
    wal_grpc_cert_path: str | None = Field(
        None, alias="THEMIS_WAL_GRPC_CERT_PATH", description="this node's replication certificate"
    )
    wal_grpc_key_path: str | None = Field(
        None, alias="THEMIS_WAL_GRPC_KEY_PATH", description="this node's replication private key"
    )
    wal_grpc_ca_cert_path: str | None = Field(
        None,
        alias="THEMIS_WAL_GRPC_CA_CERT_PATH",
        description="the dedicated internal CA that issues replication certificates",
    )

    wal_grpc_host: str = Field(
        "127.0.0.1",
        alias="THEMIS_WAL_GRPC_HOST",
        description="address the replication listener binds (leaders and followers)",
    )
    wal_grpc_port: int = Field(
        50051, ge=1, le=65535, alias="THEMIS_WAL_GRPC_PORT", description="replication port"
    )
    replicate_from: str | None = Field(
        None,
        alias="THEMIS_REPLICATE_FROM",
        description="follower: host:port of the leader; a comma-separated list names every "
        "peer that may lead after a failover (the follower streams from whichever leads)",
    )
    wal_grpc_allowed_peers: str | None = Field(
        None,
        alias="THEMIS_WAL_GRPC_ALLOWED_PEERS",
        description="comma-separated certificate identities (CN or SAN) allowed to replicate "
        "from this node; unset: any certificate from the replication CA",
    )
    wal_retention: str = Field(
        "1000000",
        alias="THEMIS_WAL_RETENTION",
        description="log records kept for followers at most: a count (1000000) or a size "
        "(512MB, 2GiB); a follower further behind must be re-seeded",
    )

    # --- audit (YAML only: the spec's logging.audit block) ----------------------------------
    audit: AuditConfig = Field(AuditConfig(), alias="logging.audit")

    # --- provenance, filled by the loader; not variables -------------------------------------
    secret_sources: dict[str, SecretSource] = Field(default_factory=dict, alias="_secret_sources")
    unknown_variables: tuple[str, ...] = Field((), alias="_unknown_variables")

    @field_validator("environment")
    @classmethod
    def _normalise_environment(cls, value: str) -> str:
        return value.strip().lower()

    @field_validator("vault_addr")
    @classmethod
    def _vault_addr_is_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("expected a URL such as https://vault.example.com:8200")
        return value

    @field_validator("replicate_from")
    @classmethod
    def _peers_are_host_ports(cls, value: str | None) -> str | None:
        if value is not None:
            for peer in value.split(","):
                _split_host_port(peer.strip())
        return value

    @field_validator("wal_retention")
    @classmethod
    def _retention_is_count_or_size(cls, value: str) -> str:
        _parse_retention(value)
        return value

    @model_validator(mode="after")
    def _follower_has_a_leader(self) -> Settings:
        if self.role == "follower" and not self.replicate_from:
            raise ValueError("THEMIS_ROLE=follower needs THEMIS_REPLICATE_FROM=host:port")
        return self

    @property
    def peers(self) -> tuple[tuple[str, int], ...]:
        """THEMIS_REPLICATE_FROM as (host, port) pairs, in order."""
        if not self.replicate_from:
            return ()
        return tuple(_split_host_port(p.strip()) for p in self.replicate_from.split(","))

    @property
    def allowed_peers(self) -> frozenset[str]:
        raw = self.wal_grpc_allowed_peers or ""
        return frozenset(p.strip() for p in raw.split(",") if p.strip())

    @property
    def retention(self) -> tuple[int | None, int | None]:
        """THEMIS_WAL_RETENTION as (records, bytes); one of them is None."""
        return _parse_retention(self.wal_retention)

    @model_validator(mode="after")
    def _previous_token_has_a_deadline(self) -> Settings:
        if self.token_admin_previous is not None and self.token_admin_previous_until is None:
            raise ValueError(
                "THEMIS_TOKEN_ADMIN_PREVIOUS needs THEMIS_TOKEN_ADMIN_PREVIOUS_UNTIL (RFC 3339): "
                "a previous token is accepted only until a deadline"
            )
        return self

    @property
    def production(self) -> bool:
        """True when any production signal is present: any signal enforces."""
        return self.production_mode or self.environment != "development"

    def secret(self, variable: str) -> SecretStr | None:
        """The secret held for an environment variable name, e.g. ``THEMIS_TOKEN_ADMIN``."""
        value = getattr(self, variable_fields()[variable])
        assert value is None or isinstance(value, SecretStr)
        return value


def variable_fields() -> dict[str, str]:
    """Map of every THEMIS_* environment variable to its Settings field name."""
    return {
        str(info.alias): name
        for name, info in Settings.model_fields.items()
        if info.alias and info.alias.startswith("THEMIS_")
    }


def secret_variables() -> tuple[str, ...]:
    """Every THEMIS_* variable that holds a secret."""
    return tuple(
        str(info.alias)
        for info in Settings.model_fields.values()
        if info.alias and info.alias.startswith("THEMIS_") and info.annotation == SecretStr | None
    )
