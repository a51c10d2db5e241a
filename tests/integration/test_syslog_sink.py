"""The syslog audit sink against a real rsyslog (tests/services/rsyslog.py): what rsyslog's
RFC 5424 parser sees over tcp, udp and tls, certificate checks, SD escaping, and no loss
across a server outage when the broker replays what ``write`` refused."""

from __future__ import annotations

import collections
import concurrent.futures
import datetime as dt
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services.rsyslog import Record, Rsyslog, write_ca
from themisdb.audit._sink import AuditRecord, Sink, SinkError
from themisdb.audit.syslog import SD_ID, SyslogSink
from themisdb.settings import SyslogOutput

pytestmark = pytest.mark.integration


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(fields: dict[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def event(
    seq: int,
    *,
    category: str = "authentication",
    outcome: str = "success",
    action: str = "login",
    padding: str = "",
) -> AuditRecord:
    fields: dict[str, Any] = {
        "seq": seq,
        "time": now_rfc3339(),
        "node": "node-1",
        "category": category,
        "action": action,
        "actor": "admin",
        "source": "127.0.0.1",
        "resource": "/entities/users:42",
        "outcome": outcome,
        "reason": padding or None,
        "request_id": secrets.token_hex(8),
        "prev_hash": "0" * 64,
        "hash": secrets.token_hex(32),
    }
    return AuditRecord("event", canonical(fields), fields)


def checkpoint(seq: int) -> AuditRecord:
    fields: dict[str, Any] = {
        "seq": seq,
        "hash": secrets.token_hex(32),
        "time": now_rfc3339(),
        "key_id": "audit-key-1",
        "signature": secrets.token_hex(64),
    }
    return AuditRecord("checkpoint", canonical(fields), fields)


def port_of(rsyslog: Rsyslog, listener: str) -> int:
    port: int = getattr(rsyslog, f"{listener}_port")
    return port


def output_for(rsyslog: Rsyslog, listener: str, **extra: Any) -> SyslogOutput:
    """An output to one of the fixture's listeners: tcp, udp, tls (TLS 1.2) or tls13."""
    protocol = "tls" if listener.startswith("tls") else listener
    if protocol == "tls":
        extra.setdefault("ca_file", str(rsyslog.ca_file))
    server = f"127.0.0.1:{port_of(rsyslog, listener)}"
    return SyslogOutput(type="syslog", server=server, protocol=protocol, **extra)


@pytest.fixture
def hostname() -> str:
    """Each test's own HOSTNAME: the session's rsyslog writes everyone's records to one file."""
    return f"test-{secrets.token_hex(6)}"


@pytest.fixture
def sinks() -> Iterator[list[SyslogSink]]:
    """Sinks appended here are closed at teardown."""
    opened: list[SyslogSink] = []
    yield opened
    for sink in opened:
        sink.close()


def open_sink(sinks: list[SyslogSink], output: SyslogOutput, hostname: str) -> SyslogSink:
    sink = SyslogSink.from_output(output, hostname=hostname)
    sinks.append(sink)
    return sink


def mine(records: list[Record], hostname: str) -> list[Record]:
    return [r for r in records if r["hostname"] == hostname]


def sd_params(record: Record) -> dict[str, str]:
    params: dict[str, str] = record["sd"][SD_ID]
    return params


def test_tls_listeners_speak_tls12_and_tls13(rsyslog: Rsyslog) -> None:
    assert rsyslog.tls_version(rsyslog.tls_port) == "TLSv1.2"
    assert rsyslog.tls_version(rsyslog.tls13_port) == "TLSv1.3"


@pytest.mark.parametrize("listener", ["tcp", "udp", "tls", "tls13"])
def test_records_arrive_as_rfc5424(
    rsyslog: Rsyslog, sinks: list[SyslogSink], hostname: str, listener: str
) -> None:
    output = output_for(rsyslog, listener)
    sink: Sink = open_sink(sinks, output, hostname)  # mypy: SyslogSink is a Sink
    assert sink.name == f"syslog:{output.protocol}://127.0.0.1:{port_of(rsyslog, listener)}"
    sink.test_write()
    sent = [
        event(1, category="authentication", outcome="success"),
        event(2, category="data_access", outcome="denied", padding="Zürich ✓"),
        checkpoint(3),
        event(4, category="authorization", outcome="granted"),
    ]
    for record in sent:
        sink.write(record)

    received = mine(rsyslog.wait_for(lambda rs: len(mine(rs, hostname)) >= 4), hostname)
    # One connection for all four records (a needless reconnect would resend the window).
    assert [r["input"] for r in received] == [listener] * 4
    assert [sd_params(r)["seq"] for r in received] == ["1", "2", "3", "4"]
    for record, got in zip(sent, received, strict=True):
        assert got["protocol_version"] == "1"
        assert got["app_name"] == "themisdb"
        assert got["facility"] == "13"
        assert got["timestamp"] == record.fields["time"]
        assert got["msg"] == record.line  # no BOM, nothing escaped: the signed bytes
        assert json.loads(got["msg"]) == record.fields
        params = sd_params(got)
        assert params["kind"] == record.kind
        if record.kind == "event":
            assert got["msgid"] == record.fields["category"]
            assert params["category"] == record.fields["category"]
            assert params["outcome"] == record.fields["outcome"]
        else:
            assert got["msgid"] == "checkpoint"
            assert "category" not in params
    assert [r["severity"] for r in received] == ["5", "4", "5", "5"]


@pytest.mark.parametrize("listener", ["tcp", "udp", "tls13"])
def test_write_many_delivers_a_batch_in_order(
    rsyslog: Rsyslog, sinks: list[SyslogSink], hostname: str, listener: str
) -> None:
    """The broker's optional batch capability: on a stream, the batch goes in one send."""
    sink = open_sink(sinks, output_for(rsyslog, listener), hostname)
    batch = [event(seq) for seq in range(1, 101)]
    sink.write_many(batch)
    received = mine(rsyslog.wait_for(lambda rs: len(mine(rs, hostname)) >= 100), hostname)
    assert [r["msg"] for r in received] == [record.line for record in batch]


def test_tls_rejects_a_server_of_another_ca(
    rsyslog: Rsyslog, sinks: list[SyslogSink], hostname: str, tmp_path: Path
) -> None:
    other_ca, _ = write_ca(tmp_path, "other-ca")
    sink = open_sink(sinks, output_for(rsyslog, "tls", ca_file=str(other_ca)), hostname)
    with pytest.raises(SinkError, match="certificate") as caught:
        sink.test_write()
    assert sink.name in str(caught.value)
    with pytest.raises(SinkError, match="certificate"):
        sink.write(event(1))


def test_tls_checks_the_server_name(
    rsyslog: Rsyslog, sinks: list[SyslogSink], hostname: str
) -> None:
    wrong = open_sink(sinks, output_for(rsyslog, "tls", server_name="siem.example"), hostname)
    with pytest.raises(SinkError, match="certificate"):
        wrong.test_write()
    right = open_sink(sinks, output_for(rsyslog, "tls", server_name="localhost"), hostname)
    right.test_write()


def test_structured_data_escaping_survives(
    rsyslog: Rsyslog, sinks: list[SyslogSink], hostname: str
) -> None:
    category, outcome = 'we"ird]cat\\egory', 'de"nied] \\ "x"'
    sink = open_sink(sinks, output_for(rsyslog, "tcp"), hostname)
    record = event(1, category=category, outcome=outcome)
    sink.write(record)
    (got,) = mine(rsyslog.wait_for(lambda rs: bool(mine(rs, hostname))), hostname)
    params = sd_params(got)  # as rsyslog's mmpstrucdata parsed and unescaped them
    assert (params["category"], params["outcome"]) == (category, outcome)
    assert got["msgid"] == category  # printable US-ASCII without spaces: allowed as it is
    assert got["severity"] == "4"
    assert json.loads(got["msg"]) == record.fields


def test_oversized_udp_record_is_refused_not_truncated(
    rsyslog: Rsyslog, sinks: list[SyslogSink], hostname: str
) -> None:
    sink = open_sink(sinks, output_for(rsyslog, "udp"), hostname)
    marker = secrets.token_hex(8)
    huge = event(1, padding=marker * 5000)  # 80,000 characters
    with pytest.raises(SinkError, match="datagram") as caught:
        sink.write(huge)
    assert marker not in str(caught.value)
    sink.write(event(2))  # the sink still works
    received = mine(rsyslog.wait_for(lambda rs: bool(mine(rs, hostname))), hostname)
    assert [sd_params(r)["seq"] for r in received] == ["2"]


def test_reopen_reconnects_and_close_is_final(
    rsyslog: Rsyslog, sinks: list[SyslogSink], hostname: str
) -> None:
    sink = open_sink(sinks, output_for(rsyslog, "tls13"), hostname)
    sink.write(event(1))
    sink.reopen()
    sink.write(event(2))
    received = mine(
        rsyslog.wait_for(lambda rs: any(sd_params(r)["seq"] == "2" for r in mine(rs, hostname))),
        hostname,
    )
    # The new connection began with the resend window: seq 1 twice, then seq 2.
    assert [sd_params(r)["seq"] for r in received] == ["1", "1", "2"]
    sink.close()
    with pytest.raises(SinkError, match="closed"):
        sink.write(event(3))


def test_concurrent_writers_interleave_whole_messages(
    rsyslog: Rsyslog, sinks: list[SyslogSink], hostname: str
) -> None:
    sink = open_sink(sinks, output_for(rsyslog, "tls"), hostname)
    threads, each = 4, 250

    def writer(first: int) -> None:
        for seq in range(first, first + each):
            sink.write(event(seq))

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(writer, 1 + n * each) for n in range(threads)]:
            future.result()
    total = threads * each
    received = mine(rsyslog.wait_for(lambda rs: len(mine(rs, hostname)) >= total), hostname)
    assert sorted(int(sd_params(r)["seq"]) for r in received) == list(range(1, total + 1))
    for got in received:
        assert json.loads(got["msg"])["seq"] == int(sd_params(got)["seq"])


@pytest.mark.parametrize("listener", ["tcp", "tls13"])
def test_a_write_after_a_server_restart_reconnects(
    rsyslog: Rsyslog, sinks: list[SyslogSink], hostname: str, listener: str
) -> None:
    """The server went away and came back between two writes: the next write notices the
    dead connection before sending, reconnects, sends the window again and succeeds."""
    sink = open_sink(sinks, output_for(rsyslog, listener), hostname)
    for seq in range(1, 11):
        sink.write(event(seq))
    try:
        rsyslog.stop()
    finally:
        rsyslog.start()
    sink.write(event(11))
    received = mine(
        rsyslog.wait_for(lambda rs: any(sd_params(r)["seq"] == "11" for r in mine(rs, hostname))),
        hostname,
    )
    seqs = [int(sd_params(r)["seq"]) for r in received]
    assert list(dict.fromkeys(seqs)) == list(range(1, 12))
    assert seqs[-11:] == list(range(1, 12))  # the window 1..10, then 11


@pytest.mark.parametrize("listener", ["tcp", "tls13"])
def test_no_record_lost_across_an_outage(
    rsyslog: Rsyslog, sinks: list[SyslogSink], hostname: str, listener: str
) -> None:
    """2,000 records; rsyslog stops after the 700th write and starts again after
    the 1,200th. The test plays the broker: what ``write`` refuses is kept and written again,
    in order, before anything newer."""
    total, stop_at, start_at = 2000, 700, 1200
    marker = f"secret-looking-{secrets.token_hex(8)}"
    records = [event(seq, category="data_access", padding=marker) for seq in range(1, total + 1)]
    sink = open_sink(sinks, output_for(rsyslog, listener), hostname)
    sink.test_write()

    pending: collections.deque[AuditRecord] = collections.deque()
    errors: list[SinkError] = []
    refused_while_down = 0

    def drain() -> bool:
        """Write pending records in order; False at the first refusal."""
        while pending:
            try:
                sink.write(pending[0])
            except SinkError as exc:
                errors.append(exc)
                return False
            pending.popleft()
        return True

    try:
        for index, record in enumerate(records, start=1):
            if index == stop_at:
                rsyslog.stop()
            if index == start_at:
                rsyslog.start()
            pending.append(record)
            delivered = drain()
            if stop_at <= index < start_at:
                refused_while_down += not delivered
        deadline = time.monotonic() + 30
        while not drain():
            assert time.monotonic() < deadline, "the sink never recovered"
            time.sleep(0.1)
    finally:
        rsyslog.start()  # whatever happened, the session's rsyslog runs again

    # Everything written while the server was down was refused, not swallowed.
    assert refused_while_down == start_at - stop_at
    assert errors
    for error in errors:
        text = str(error)
        assert text.startswith(sink.name)
        assert marker not in text
        assert "data_access" not in text

    def all_seen(rs: list[Record]) -> bool:
        return len({sd_params(r)["seq"] for r in mine(rs, hostname)}) >= total

    received = mine(rsyslog.wait_for(all_seen, timeout=30), hostname)
    arrivals = [int(sd_params(r)["seq"]) for r in received]
    first_seen = list(dict.fromkeys(arrivals))
    assert first_seen == list(range(1, total + 1))  # none lost, first arrivals in order
    for got in received:  # duplicates are whole, identical records
        assert got["msg"] == records[int(sd_params(got)["seq"]) - 1].line
    duplicates = len(arrivals) - total
    replay_start = arrivals.index(1, 1) if arrivals.count(1) > 1 else len(arrivals)
    recovered = [s for s in first_seen if arrivals.index(s) >= replay_start and s < stop_at]
    print(
        f"outage: {len(errors)} refused writes, {duplicates} duplicates, "
        f"{len(recovered)} records only the resend window delivered: {recovered[:5]}..."
    )
