"""Token buckets per source address and per credential, and the brute-force lockout.

Both keep their state in memory, bounded: past ``max_keys`` entries the least recently seen
is forgotten (an attacker cycling through addresses gets fresh buckets, but cannot make the
server's memory grow).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from themisdb.access._principal import Clock

MAX_KEYS = 100_000


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: int  # whole seconds until one request is allowed again (0 when allowed)
    first_refusal: bool = False  # the first refusal after allowed requests (audit it once)


class RateLimiter:
    """A token bucket per key: ``rate`` requests per second, at most ``burst`` at once.
    ``rate`` 0 disables it (every request allowed)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Clock = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.rate, self.burst = rate, burst
        self._clock = clock
        self._max_keys = max_keys
        # key -> (tokens, when last seen, whether the last request was refused)
        self._buckets: OrderedDict[str, tuple[float, float, bool]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str) -> Decision:
        if not self.enabled:
            return Decision(True, self.burst, self.burst, 0)
        now = self._clock()
        with self._lock:
            tokens, at, refusing = self._buckets.pop(key, (float(self.burst), now, False))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            allowed = tokens >= 1
            if allowed:
                tokens -= 1
            self._buckets[key] = (tokens, now, not allowed)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        retry = 0 if allowed else max(1, math.ceil((1 - tokens) / self.rate))
        return Decision(allowed, self.burst, int(tokens), retry, not allowed and not refusing)


@dataclass
class _Failures:
    count: int
    last: float
    locked_until: float


class Lockout:
    """Locks a source out after ``threshold`` failed authentications: for 1 s, then twice as
    long on every further failure, at most ``max_seconds``. Failures are forgotten once
    ``max_seconds`` pass without one. A success does not clear the count: otherwise one valid
    credential would let a source guess others without limit. ``threshold`` 0 disables it."""

    def __init__(
        self,
        threshold: int,
        max_seconds: float,
        *,
        clock: Clock = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.threshold, self.max_seconds = threshold, max_seconds
        self._clock = clock
        self._max_keys = max_keys
        self._sources: OrderedDict[str, _Failures] = OrderedDict()
        self._lock = threading.Lock()

    def locked_for(self, source: str) -> int:
        """Whole seconds the source stays locked out (0: not locked)."""
        if self.threshold == 0:
            return 0
        with self._lock:
            state = self._sources.get(source)
            remaining = state.locked_until - self._clock() if state else 0.0
        return max(1, math.ceil(remaining)) if remaining > 0 else 0

    def failure(self, source: str) -> int:
        """Count a failed authentication; the seconds of the lockout it starts (0: none)."""
        if self.threshold == 0:
            return 0
        now = self._clock()
        with self._lock:
            state = self._sources.pop(source, None)
            if state is None or now - state.last > self.max_seconds:
                state = _Failures(0, now, 0.0)
            state.count += 1
            state.last = now
            seconds = 0.0
            if state.count >= self.threshold:
                seconds = min(self.max_seconds, 2.0 ** (state.count - self.threshold))
                state.locked_until = now + seconds
            self._sources[source] = state
            if len(self._sources) > self._max_keys:
                self._sources.popitem(last=False)
        return math.ceil(seconds)


@dataclass(frozen=True)
class Limits:
    """The API listener's limits, built once per process."""

    per_source: RateLimiter
    per_credential: RateLimiter
    lockout: Lockout

    @classmethod
    def build(
        cls,
        *,
        rate: float,
        burst: int,
        lockout_threshold: int,
        lockout_max_seconds: float,
        clock: Clock = time.monotonic,
    ) -> Limits:
        return cls(
            RateLimiter(rate, burst, clock=clock),
            RateLimiter(rate, burst, clock=clock),
            Lockout(lockout_threshold, lockout_max_seconds, clock=clock),
        )
