"""Building the audit broker from Settings (the serve command's job, kept out of serve.py)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from themisdb.audit._sink import Sink, SinkError
from themisdb.audit.broker import AuditBroker
from themisdb.audit.chain import Signer
from themisdb.audit.file import FileSink
from themisdb.audit.syslog import SyslogSink
from themisdb.errors import ConfigError
from themisdb.settings import FileOutput, Settings, SyslogOutput

DEFAULT_SIGNING_KEY = "signing-key.pem"


def signer_for(settings: Settings) -> Signer | None:
    """The checkpoint signer: THEMIS_AUDIT_SIGNING_KEY_FILE, or in development a key created
    once under DATA_DIR/audit. Production without a key file refuses to start."""
    if not settings.audit.signing.enabled:
        return None
    if settings.audit_signing_key_file:
        path = Path(settings.audit_signing_key_file)
        try:
            return Signer.load(path)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"THEMIS_AUDIT_SIGNING_KEY_FILE: cannot load an unencrypted ECDSA P-256 PEM key "
                f"from {path} ({type(exc).__name__})"
            ) from exc
    if settings.hsm_enabled:
        return hsm_signer(settings, create=not settings.production)
    if settings.production:
        raise ConfigError(
            "logging.audit.signing is enabled: set THEMIS_AUDIT_SIGNING_KEY_FILE or use the HSM "
            "(THEMIS_HSM_ENABLED=1)"
        )
    path = Path(settings.data_dir) / "audit" / DEFAULT_SIGNING_KEY
    return Signer.load(path) if path.exists() else Signer.create(path)


def hsm_signer(settings: Settings, *, create: bool) -> Signer:
    """Checkpoints signed inside the PKCS#11 token with the key pair
    ``<THEMIS_HSM_KEY_LABEL>-audit`` (created by `themisdb keys init`)."""
    from themisdb.keys.pkcs11 import Pkcs11KeyProvider  # noqa: PLC0415 - HSM only

    provider = Pkcs11KeyProvider.from_settings(settings, create=False)
    spki, sign = provider.audit_signer(create=create)
    return Signer.from_hsm(spki, sign)  # the closure keeps the provider (its session) alive


def build_broker(
    settings: Settings,
    *,
    on_event: Callable[[str], None] = lambda category: None,
    on_sink_failure: Callable[[str], None] = lambda sink: None,
) -> AuditBroker | None:
    audit = settings.audit
    if not audit.enabled:
        return None
    data = Path(settings.data_dir)
    outputs = list(audit.outputs)
    implicit: FileOutput | None = None
    if not any(isinstance(o, FileOutput) for o in outputs):
        # The chain's local record (and what GET /api/audit reads): always present.
        implicit = FileOutput(type="file", path=str(data / "audit" / "audit.log"))
        outputs.insert(0, implicit)
    sinks: list[Sink] = []
    uncounted: tuple[Sink, ...] = ()
    for output in outputs:
        if isinstance(output, FileOutput):
            sinks.append(FileSink(output))
            if output is implicit and len(outputs) > 1:
                uncounted = (sinks[-1],)  # block mode waits for a configured output
        elif isinstance(output, SyslogOutput):
            try:
                sinks.append(SyslogSink.from_output(output))
            except SinkError as exc:
                raise ConfigError(f"logging.audit syslog output {output.server}: {exc}") from exc
    return AuditBroker(
        sinks,
        data_dir=data,
        node=settings.node_id or socket.gethostname(),
        signer=signer_for(settings),
        block=audit.on_failure == "block",
        uncounted=uncounted,
        checkpoint_every=audit.signing.checkpoint_every,
        checkpoint_seconds=audit.signing.checkpoint_seconds,
        on_event=on_event,
        on_sink_failure=on_sink_failure,
    )
