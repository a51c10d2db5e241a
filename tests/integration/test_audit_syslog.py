"""The real server's audit events through the broker to a real rsyslog, including an outage:
stop rsyslog mid-stream, keep writing, start it again: after deduplication by seq every event
arrived, in order; none lost."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import start_server
from themisdb.audit import Signer

pytestmark = pytest.mark.integration


def _events_from_rsyslog(rsyslog: Any, node: str) -> list[dict[str, Any]]:
    events = []
    for record in rsyslog.records():
        if record.get("app_name") != "themisdb":
            continue
        try:
            body = json.loads(record["msg"])
        except ValueError:
            continue
        if body.get("node") == node and body.get("type") != "checkpoint":
            events.append({**body, "_msgid": record["msgid"], "_sd": record["sd"]})
    return events


def _spooled(internal_url: str) -> float:
    """Records waiting in every sink's spool, from the server's own metrics."""
    text = httpx.get(f"{internal_url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "themisdb_audit_spool_depth"
    )


def test_events_reach_rsyslog_through_an_outage(rsyslog: Any, tmp_path: Path) -> None:
    node = f"node-{tmp_path.name[-12:]}"
    config = tmp_path / "themis.yaml"
    config.write_text(
        "logging:\n  audit:\n    outputs:\n"
        f"      - type: syslog\n        server: 127.0.0.1:{rsyslog.tcp_port}\n"
        "        protocol: tcp\n"
        f"      - type: file\n        path: {tmp_path / 'audit.log'}\n"
        "    signing:\n      enabled: true\n    on_failure: spool\n"
    )
    Signer.create(tmp_path / "key.pem")
    server = start_server(
        {
            "THEMIS_CONFIG": str(config),
            "THEMIS_AUDIT_SIGNING_KEY_FILE": str(tmp_path / "key.pem"),
            "THEMIS_DATA_DIR": str(tmp_path / "data"),
            "THEMIS_NODE_ID": node,
        }
    )
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as api:
            for i in range(60):
                assert api.put(f"/entities/syslogged:{i}", json={"i": i}).status_code == 200
            rsyslog.wait_for(lambda _: len(_events_from_rsyslog(rsyslog, node)) >= 180)
            first = _events_from_rsyslog(rsyslog, node)
            write = next(e for e in first if e["category"] == "data_access")
            assert write["_msgid"] == "data_access"
            sd = next(iter(write["_sd"].values()))
            assert sd["category"] == "data_access"
            assert sd["outcome"] == "success"
            assert sd["seq"] == str(write["seq"])

            rsyslog.stop()
            try:
                for i in range(60, 120):  # the sink fails; events go to the spool
                    assert api.put(f"/entities/syslogged:{i}", json={"i": i}).status_code == 200
            finally:
                rsyslog.start()
            for i in range(120, 150):
                assert api.put(f"/entities/syslogged:{i}", json={"i": i}).status_code == 200
            # The spool drains while the server runs (a spool left at shutdown waits on disk
            # for the next start: not lost, but not what this test is about).
            deadline = time.monotonic() + 60
            while _spooled(server.internal_url) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _spooled(server.internal_url) == 0
    finally:
        code, log = server.stop()
    assert code == 0, log
    local = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    expected = [e["seq"] for e in local if e.get("type") != "checkpoint"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        arrived = _events_from_rsyslog(rsyslog, node)
        if {e["seq"] for e in arrived} >= set(expected):
            break
        time.sleep(0.2)
    arrived = _events_from_rsyslog(rsyslog, node)
    first_arrival: dict[int, int] = {}
    for position, event in enumerate(arrived):
        first_arrival.setdefault(event["seq"], position)
    assert sorted(first_arrival) == expected  # every event, none invented
    order = [seq for seq, _ in sorted(first_arrival.items(), key=lambda item: item[1])]
    assert order == expected  # in order of first arrival
    by_seq = {e["seq"]: e for e in arrived}
    assert all(
        by_seq[e["seq"]]["hash"] == e["hash"]
        for e in local
        if "hash" in e and e.get("type") != "checkpoint"
    )


def test_block_mode_with_only_a_siem_refuses_while_the_siem_is_down(
    rsyslog: Any, tmp_path: Path
) -> None:
    """The local file the broker always keeps does not count: a SIEM outage blocks."""
    config = tmp_path / "themis.yaml"
    config.write_text(
        "logging:\n  audit:\n    outputs:\n"
        f"      - type: syslog\n        server: 127.0.0.1:{rsyslog.tcp_port}\n"
        "        protocol: tcp\n    on_failure: block\n"
    )
    server = start_server({"THEMIS_CONFIG": str(config), "THEMIS_DATA_DIR": str(tmp_path / "d")})
    ready = f"{server.internal_url}/health/ready"
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as api:
            assert api.put("/entities/siem:before", json={"v": 1}).status_code == 200
            rsyslog.stop()
            try:
                # rsyslog's socket is gone; the first write that tries it finds out.
                refused = api.put("/entities/siem:during", json={"v": 2})
                assert (refused.status_code, refused.json()["error"]) == (503, "audit_unavailable")
                assert httpx.get(ready).status_code == 503
            finally:
                rsyslog.start()
            deadline = time.monotonic() + 60
            while httpx.get(ready).status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert api.put("/entities/siem:after", json={"v": 3}).status_code == 200
            assert api.get("/entities/siem:during").status_code == 404  # it never happened
    finally:
        code, output = server.stop()
    assert code == 0, output
