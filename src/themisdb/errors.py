"""The one exception tree of ThemisDB.

    ThemisError
    ├── ConfigError            the configuration cannot be used (CLI exit 78, EX_CONFIG)
    ├── ClientError            the request was wrong; carries an HTTP status and a stable code
    │   ├── BadRequest         400 (malformed JSON, invalid query)
    │   ├── Unauthorized       401
    │   ├── Forbidden          403
    │   ├── NotFound           404
    │   ├── Conflict           409
    │   ├── PayloadTooLarge    413
    │   ├── UnsupportedMedia   415
    │   ├── Unprocessable      422 (well-formed JSON of the wrong shape)
    │   └── TooManyRequests    429 (rate limit, brute-force lockout; carries Retry-After)
    ├── IntegrityError         ciphertext or wrapped key failed authentication (one message)
    ├── KeyProviderUnavailable the key manager cannot be reached or refused (503)
    ├── MasterKeyMissing       the key manager has no master key (run `themisdb keys init`)
    ├── AuditUnavailable       block mode: no audit sink can write, the request is refused (503)
    ├── StorageError           the storage engine failed (503; clients see no detail)
    ├── ReplicationError       a replication peer or log cannot be followed (diverged, stale)
    └── InternalError          a bug; clients see only an id

Later subsystems add their classes here (IntegrityError, KeyProviderUnavailable, ...), so that
the API maps exceptions to responses in one table. Messages never contain secret values: code
that raises these is responsible for naming variables, not echoing what they hold.
"""

from __future__ import annotations

EX_UNAVAILABLE = 69  # sysexits.h: a service is unavailable
EX_CONFIG = 78  # sysexits.h: configuration error


class ThemisError(Exception):
    """Base class of every error ThemisDB raises on purpose."""


class ConfigError(ThemisError):
    """The configuration is unusable. Holds every problem found, not just the first."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))

    def render(self) -> str:
        """Human-readable text listing each problem on its own line."""
        lines = ["configuration error:"] + [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class ClientError(ThemisError):
    """A request the client must change before retrying."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class BadRequest(ClientError):
    status, code = 400, "bad_request"


class Unauthorized(ClientError):
    status, code = 401, "unauthorized"


class Forbidden(ClientError):
    status, code = 403, "forbidden"


class NotFound(ClientError):
    status, code = 404, "not_found"


class Conflict(ClientError):
    status, code = 409, "conflict"


class PayloadTooLarge(ClientError):
    status, code = 413, "payload_too_large"


class UnsupportedMedia(ClientError):
    status, code = 415, "unsupported_media_type"


class Unprocessable(ClientError):
    status, code = 422, "unprocessable_entity"


class TooManyRequests(ClientError):
    status, code = 429, "rate_limited"

    def __init__(
        self, message: str, *, code: str, retry_after: int, headers: dict[str, str]
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after
        self.headers = headers


class IntegrityError(ThemisError):
    """Decryption or unwrapping failed. Deliberately one message for every cause (wrong key,
    wrong AAD, modified bytes, truncated header) so that nothing is learned from which."""

    def __init__(self) -> None:
        super().__init__("integrity check failed")


class KeyProviderUnavailable(ThemisError):
    """The key manager cannot serve: HSM token gone, library failing, Vault down or sealed.
    The message names the provider and the kind of failure, never key material or PINs."""


class MasterKeyMissing(ThemisError):
    """The key manager holds no master key for this cluster."""


class AuditUnavailable(ThemisError):
    """``on_failure: block`` and no audit sink can take an event: nothing may happen."""


class StorageError(ThemisError):
    """The storage engine could not do what was asked (disk full, unwritable, closed)."""


class ReplicationError(ThemisError):
    """Replication cannot go on as asked: the logs diverged, a record does not apply, a peer's
    epoch is stale, or the follower is behind the leader's retained log. ``code`` is stable."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class InternalError(ThemisError):
    """An unexpected failure; the client sees only an identifier to quote."""
