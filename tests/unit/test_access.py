"""Access control pieces with an injected clock: rate limits, lockout, sessions, API keys,
and the admin token rotation deadline."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from themisdb.access import (
    ADMIN,
    ALL_SCOPES,
    DATA_READ,
    DATA_WRITE,
    ApiKeyStore,
    Lockout,
    Principal,
    RateLimiter,
    Session,
    SessionStore,
)
from themisdb.access._limits import MAX_KEYS
from themisdb.api.auth import Authenticator
from themisdb.errors import Forbidden, NotFound, Unauthorized, Unprocessable
from themisdb.posture import generate_token
from themisdb.settings import load_settings
from themisdb.storage import Storage


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- rate limits -----------------------------------------------------------------------------


def test_bucket_allows_the_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(2, 3, clock=clock)
    decisions = [limiter.take("a") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    refused = decisions[3]
    assert refused.retry_after == 1
    assert refused.limit == 3
    assert refused.first_refusal
    assert not limiter.take("a").first_refusal  # the same run of refusals: audited once
    assert limiter.take("b").allowed  # another key has its own bucket
    clock.now += 0.5  # one token back at 2/s
    assert limiter.take("a").allowed
    assert not limiter.take("a").allowed
    clock.now += 100
    assert limiter.take("a").remaining == 2  # refilled to the burst, never beyond


def test_zero_rate_disables_the_limiter() -> None:
    limiter = RateLimiter(0, 5, clock=Clock())
    assert not limiter.enabled
    assert all(limiter.take("a").allowed for _ in range(100))


def test_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(1, 1, clock=Clock(), max_keys=10)
    for i in range(50):
        limiter.take(f"source-{i}")
    assert len(limiter._buckets) == 10
    assert MAX_KEYS >= 10_000


# --- lockout ---------------------------------------------------------------------------------


def test_lockout_starts_at_the_threshold_and_doubles() -> None:
    clock = Clock()
    lockout = Lockout(3, 60, clock=clock)
    assert [lockout.failure("s") for _ in range(2)] == [0, 0]
    assert lockout.locked_for("s") == 0
    assert lockout.failure("s") == 1
    assert lockout.locked_for("s") == 1
    assert lockout.locked_for("other") == 0
    clock.now += 1.5
    assert lockout.locked_for("s") == 0
    assert lockout.failure("s") == 2
    clock.now += 2.5
    assert lockout.failure("s") == 4
    clock.now += 61  # more than max_seconds without a failure: forgotten, counted anew
    assert [lockout.failure("s") for _ in range(3)] == [0, 0, 1]
    for _ in range(20):
        lockout.failure("t")
    assert lockout.locked_for("t") == 60  # capped


def test_lockout_threshold_zero_disables_it() -> None:
    lockout = Lockout(0, 60, clock=Clock())
    assert all(lockout.failure("s") == 0 for _ in range(20))
    assert lockout.locked_for("s") == 0


# --- sessions --------------------------------------------------------------------------------


def test_session_idle_timeout_and_absolute_lifetime() -> None:
    clock = Clock()
    swept: list[Session] = []
    store = SessionStore(10, 25, clock=clock, on_expired=swept.append)
    token, session = store.create("static:ab", "admin")
    assert token.startswith("ths_")
    assert session.id in token
    for _ in range(2):
        clock.now += 9  # used within the idle timeout: stays alive
        assert store.resolve(token).id == session.id
    clock.now += 9  # 27 s after creation: past the absolute lifetime though never idle
    with pytest.raises(Unauthorized) as info:
        store.resolve(token)
    assert info.value.code == "session_expired"
    with pytest.raises(Unauthorized) as info:
        store.resolve(token)  # forgotten
    assert info.value.code == "invalid_token"

    idle, _ = store.create("static:ab", "admin")
    clock.now += 10.5
    with pytest.raises(Unauthorized, match="expired"):
        store.resolve(idle)
    other, _ = store.create("static:ab", "admin")
    clock.now += 11
    assert store.of_owner("admin") == []  # swept, and reported for the audit's timeout
    assert [s.owner for s in swept] == ["admin"]
    assert other


def test_session_secret_must_match_and_revocation_is_per_owner() -> None:
    store = SessionStore(100, 100, clock=Clock())
    token, session = store.create("key:abc", "key:abc")
    forged = token[:-4] + "AAAA"
    with pytest.raises(Unauthorized):
        store.resolve(forged)
    with pytest.raises(Unauthorized):
        store.resolve(f"ths_{session.id}")
    with pytest.raises(NotFound):
        store.revoke(session.id, owner="someone-else")  # not revealed
    assert store.resolve(token).id == session.id
    store.revoke(session.id, owner="key:abc")
    with pytest.raises(Unauthorized):
        store.resolve(token)


# --- API keys --------------------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    store = Storage(tmp_path)
    yield store
    store.close()


def test_api_key_lifecycle(storage: Storage, tmp_path: Path) -> None:
    clock = Clock()
    keys = ApiKeyStore(storage, clock=clock)
    token, key = keys.create("etl", [DATA_READ, DATA_WRITE], ["orders"], expires=clock.now + 60)
    assert token.startswith(f"thk_{key.id}_")
    assert keys.resolve(token) == key
    assert "digest" not in key.public()
    secret = token.split("_", 2)[2]
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert secret.encode() not in raw  # only the hash is stored
    assert key.digest.encode() in raw

    before, after = keys.change(key.id, scopes=[DATA_READ], tables=None, all_tables=True)
    assert before.scopes == (DATA_READ, DATA_WRITE)
    assert (after.scopes, after.tables) == ((DATA_READ,), None)
    assert keys.resolve(token).scopes == (DATA_READ,)  # the next use sees the change

    clock.now += 61
    with pytest.raises(Unauthorized) as info:
        keys.resolve(token)
    assert info.value.code == "api_key_expired"

    token2, key2 = keys.create("ops", [ADMIN])
    keys.revoke(key2.id)
    with pytest.raises(Unauthorized) as info:
        keys.resolve(token2)
    assert info.value.code == "api_key_revoked"
    assert [k.id for k in keys.all()] == [key.id, key2.id]


@pytest.mark.parametrize(
    "token",
    ["thk_", "thk_000000000000_x", "thk_zz_secret", "thk_" + "a" * 12, "thk_../../etc_passwd"],
)
def test_unknown_or_malformed_api_keys_are_invalid(storage: Storage, token: str) -> None:
    with pytest.raises(Unauthorized) as info:
        ApiKeyStore(storage).resolve(token)
    assert info.value.code == "invalid_token"


def test_api_key_input_is_checked(storage: Storage) -> None:
    keys = ApiKeyStore(storage)
    with pytest.raises(Unprocessable, match="unknown: root"):
        keys.create("k", ["root"])
    with pytest.raises(Unprocessable):
        keys.create("k", [])
    with pytest.raises(Unprocessable):
        keys.create("bad name!", [DATA_READ])
    with pytest.raises(Unprocessable):
        keys.create("k", [DATA_READ], ["no such table!"])
    with pytest.raises(Unprocessable):
        keys.create("k", [DATA_READ], expires=1.0)
    assert sorted(ALL_SCOPES) == sorted(
        ["data:read", "data:write", "pii:read", "audit:read", "keys:admin", "admin"]
    )


def test_principal_scopes_and_tables() -> None:
    reader = Principal("key:x", frozenset({DATA_READ}), "f", frozenset({"a"}))
    assert reader.allows(DATA_READ)
    assert not reader.allows(DATA_WRITE)
    with pytest.raises(Forbidden):
        reader.require(DATA_WRITE)
    with pytest.raises(Forbidden) as info:
        reader.require_table("b")
    assert info.value.code == "table_forbidden"
    reader.require_table("a")
    assert Principal("key:y", frozenset({ADMIN}), "f").allows("keys:admin")


# --- the previous admin token ----------------------------------------------------------------


def test_previous_admin_token_is_accepted_until_its_deadline() -> None:
    current, old = generate_token(), generate_token()
    until = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    settings = load_settings(
        {
            "THEMIS_TOKEN_ADMIN": current,
            "THEMIS_TOKEN_ADMIN_PREVIOUS": old,
            "THEMIS_TOKEN_ADMIN_PREVIOUS_UNTIL": until.isoformat(),
        }
    )
    clock = Clock(until.timestamp() - 1)
    auth = Authenticator(settings, clock=clock)
    assert auth.resolve(old).name == "admin-previous"
    assert auth.resolve(old).allows(ADMIN)
    clock.now = until.timestamp()
    with pytest.raises(Unauthorized) as info:
        auth.resolve(old)
    assert info.value.code == "token_expired"
    assert auth.resolve(current).name == "admin"


def test_a_session_dies_with_the_credential_it_came_from(storage: Storage) -> None:
    clock = Clock()
    keys = ApiKeyStore(storage, clock=clock)
    sessions = SessionStore(100, 1000, clock=clock)
    auth = Authenticator(load_settings({}), keys=keys, sessions=sessions, clock=clock)
    token, key = keys.create("app", [DATA_READ], ["t"])
    principal = auth.resolve(token)
    session_token, _ = sessions.create(auth.parent_of(principal, token), principal.identity)
    via_session = auth.resolve(session_token)
    assert via_session.identity == f"key:{key.id}"
    assert via_session.tables == frozenset({"t"})
    keys.change(key.id, scopes=[DATA_READ, DATA_WRITE], tables=None, all_tables=False)
    assert auth.resolve(session_token).allows(DATA_WRITE)  # follows the key's scopes
    keys.revoke(key.id)
    with pytest.raises(Unauthorized) as info:
        auth.resolve(session_token)
    assert info.value.code == "session_revoked"
