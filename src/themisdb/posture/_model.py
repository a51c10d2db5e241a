"""Types of the posture engine: rules, outcomes, probes and the evaluated report."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

from themisdb.settings import Settings

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Severity(StrEnum):
    MUST = "must"  # production refuses to start while it fails
    SHOULD = "should"  # the spec says "recommended", "prefer" or "if possible": a warning


class Status(StrEnum):
    PASS = "pass"  # noqa: S105 - a status, not a password
    FAIL = "fail"
    UNVERIFIED = "unverified"  # holds as far as configuration shows; a probe could not confirm
    NOT_APPLICABLE = "n/a"
    MANUAL = "manual"  # a process item no program can check: a person must tick it


@dataclass(frozen=True)
class Outcome:
    status: Status
    detail: str


def passed(detail: str) -> Outcome:
    return Outcome(Status.PASS, detail)


def failed(detail: str) -> Outcome:
    return Outcome(Status.FAIL, detail)


def unverified(detail: str) -> Outcome:
    return Outcome(Status.UNVERIFIED, detail)


def not_applicable(detail: str) -> Outcome:
    return Outcome(Status.NOT_APPLICABLE, detail)


def manual(detail: str) -> Outcome:
    return Outcome(Status.MANUAL, detail)


@dataclass(frozen=True)
class ProbeKind(Generic[T]):
    """Names a kind of I/O fact a rule may ask for; the result type is T."""

    name: str
    description: str


class Probe(Protocol[T_co]):
    """Does the I/O for one ProbeKind. Must not raise: failures belong in the result."""

    @property
    def kind(self) -> ProbeKind[Any]: ...

    def run(self, settings: Settings) -> T_co: ...


class ProbeUnavailable(Exception):
    """Raised by Context.probe when the caller handed in no probe of that kind."""

    def __init__(self, kind: ProbeKind[Any]) -> None:
        super().__init__(kind.name)
        self.kind = kind


@dataclass
class Context:
    """What a check sees: the settings, the time, and the probes its caller provided."""

    settings: Settings
    now: datetime
    probes: Mapping[str, Probe[Any]]
    _results: dict[str, Any] = field(default_factory=dict)

    def probe(self, kind: ProbeKind[T]) -> T:
        """Run (once per evaluation) the probe of this kind, or raise ProbeUnavailable."""
        if kind.name not in self._results:
            probe = self.probes.get(kind.name)
            if probe is None:
                raise ProbeUnavailable(kind)
            self._results[kind.name] = probe.run(self.settings)
        result: T = self._results[kind.name]
        return result


Check = Callable[[Context], Outcome]


@dataclass(frozen=True)
class Rule:
    """One promise of the specification, checkable."""

    id: str
    title: str
    severity: Severity
    variables: tuple[str, ...]
    risk: str
    remediation: str
    check: Check
    sections: tuple[str, ...]
    # The spec's wording of the unsafe default this rule detects, if it is one of the rows of
    # "Unsafe Defaults — Development Mode"; shown in the development banner while active.
    unsafe_default: str | None = None


@dataclass(frozen=True)
class Finding:
    rule: Rule
    outcome: Outcome

    @property
    def status(self) -> Status:
        return self.outcome.status

    @property
    def blocking(self) -> bool:
        """A must-rule that fails: production refuses to start."""
        return self.rule.severity is Severity.MUST and self.status is Status.FAIL


@dataclass(frozen=True)
class Report:
    findings: Sequence[Finding]
    production: bool
    assumed_production: bool  # evaluated with --mode production rather than the real mode
    unknown_variables: tuple[str, ...] = ()

    def with_status(self, *statuses: Status) -> list[Finding]:
        return [f for f in self.findings if f.status in statuses]

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if f.blocking]

    @property
    def warnings(self) -> list[Finding]:
        """Failing should-rules and every unverified rule: reported, not blocking."""
        return [
            f
            for f in self.findings
            if f.status is Status.UNVERIFIED
            or (f.status is Status.FAIL and f.rule.severity is Severity.SHOULD)
        ]

    @property
    def active_unsafe_defaults(self) -> list[Finding]:
        return [f for f in self.findings if f.rule.unsafe_default and f.status is Status.FAIL]

    def production_ready(self, *, strict: bool = False) -> bool:
        """No failing must-rule; with strict, no unverified must-rule either."""
        if self.blocking:
            return False
        if strict:
            return not any(
                f.status is Status.UNVERIFIED and f.rule.severity is Severity.MUST
                for f in self.findings
            )
        return True
