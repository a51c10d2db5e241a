"""The one exception tree of ThemisDB.

    ThemisError
    ├── ConfigError            the configuration cannot be used (CLI exit 78, EX_CONFIG)
    └── ClientError            the request was wrong; carries an HTTP status and a stable code

Later subsystems add their classes here (IntegrityError, KeyProviderUnavailable, ...), so that
the API maps exceptions to responses in one table. Messages never contain secret values: code
that raises these is responsible for naming variables, not echoing what they hold.
"""

from __future__ import annotations

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
