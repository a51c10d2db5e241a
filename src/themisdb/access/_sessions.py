"""Short-lived session tokens, exchanged for an API key or a static token.

Sessions live in this process's memory only: a restart logs everyone out (they are meant to
be short-lived; the credential they came from is what persists). A session is as good as its
parent credential: the caller re-checks the parent on every use, so revoking an API key or
rotating the admin token ends its sessions too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from themisdb.access._principal import Clock, split_token
from themisdb.errors import NotFound, Unauthorized

PREFIX = "ths_"
MAX_SESSIONS = 100_000
MAX_PER_OWNER = 1000


@dataclass
class Session:
    id: str
    parent: str  # what is re-checked on every use: "key:<id>" or "static:<sha256 hex>"
    owner: str  # the identity of the credential that made it
    digest: bytes
    created: float
    last_used: float

    def public(self, idle_timeout: float, lifetime: float) -> dict[str, object]:
        return {
            "id": self.id,
            "owner": self.owner,
            "created": self.created,
            "last_used": self.last_used,
            "expires": min(self.created + lifetime, self.last_used + idle_timeout),
        }


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


_DUMMY = _digest("no such session")


class SessionStore:
    def __init__(
        self,
        idle_timeout: float,
        lifetime: float,
        *,
        clock: Clock = time.time,
        on_expired: Callable[[Session], None] = lambda session: None,
    ) -> None:
        """``on_expired`` hears of every session swept after it timed out (the audit's
        session timeout). One found expired on use is reported by the request that presented
        it, which fails with ``session_expired``."""
        self.idle_timeout, self.lifetime = idle_timeout, lifetime
        self._clock = clock
        self._on_expired = on_expired
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, parent: str, owner: str) -> tuple[str, Session]:
        """A new session; the token (returned once, never stored) is ``ths_<id>_<secret>``."""
        session_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(session_id, parent, owner, _digest(secret), now, now)
        with self._lock:
            expired = self._sweep(now)
            mine = sorted(
                (s for s in self._sessions.values() if s.owner == owner), key=lambda s: s.created
            )
            for old in mine[: max(0, len(mine) - MAX_PER_OWNER + 1)]:
                del self._sessions[old.id]
            if len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions.values(), key=lambda s: s.last_used)
                del self._sessions[oldest.id]
            self._sessions[session_id] = session
        self._report(expired)
        return f"{PREFIX}{session_id}_{secret}", session

    def resolve(self, token: str) -> Session:
        """The live session of ``token`` (its idle clock restarted), or Unauthorized:
        ``invalid_token``, or ``session_expired`` for one that timed out (then forgotten)."""
        session_id, secret = split_token(token)
        now = self._clock()
        with self._lock:
            session = self._sessions.get(session_id)
            presented = _digest(secret)
            if not hmac.compare_digest(presented, session.digest if session else _DUMMY):
                raise Unauthorized("the token is not valid", code="invalid_token")
            assert session is not None
            expired = self._expired(session, now)
            if expired:
                del self._sessions[session_id]
            else:
                session.last_used = now
        if expired:
            raise Unauthorized(
                "the session has expired: create a new one (POST /auth/sessions)",
                code="session_expired",
            )
        return session

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def of_owner(self, owner: str) -> list[Session]:
        now = self._clock()
        with self._lock:
            expired = self._sweep(now)
            found = [s for s in self._sessions.values() if s.owner == owner]
        self._report(expired)
        return sorted(found, key=lambda s: s.created)

    def revoke(self, session_id: str, *, owner: str | None) -> Session:
        """Log out ``session_id``; ``owner`` None may end anyone's (admin). Someone else's
        session is reported as absent: its existence is not revealed."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or (owner is not None and session.owner != owner):
                raise NotFound(f"no session {session_id}", code="session_not_found")
            del self._sessions[session_id]
            return session

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.last_used > self.idle_timeout or now - session.created > self.lifetime

    def _sweep(self, now: float) -> list[Session]:
        expired = [s for s in self._sessions.values() if self._expired(s, now)]
        for session in expired:
            del self._sessions[session.id]
        return expired

    def _report(self, expired: list[Session]) -> None:
        for session in expired:
            self._on_expired(session)
