"""`themisdb audit verify` and `themisdb audit public-key` as an operator would run them.

Exit codes of ``audit verify``: 0 intact; 1 tampered (the output names the first bad seq);
2 usage errors and files or keys that cannot be read. Never a traceback.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.helpers import run_cli, start_server
from themisdb.audit import CATEGORIES, AuditBroker, FileSink, Signer, load_public_key, verify
from themisdb.audit.chain import canonical
from themisdb.settings import FileOutput

pytestmark = pytest.mark.integration

SIGNING_YAML = "logging:\n  audit:\n    signing:\n      enabled: true\n"


def write_chain(
    directory: Path,
    signer: Signer,
    events: int = 300,
    *,
    rotation: dict[str, str] | None = None,
) -> list[Path]:
    """A chain of ``events`` events, a checkpoint every 100; returns its files, oldest first."""
    output = FileOutput(
        type="file",
        path=str(directory / "audit.log"),
        fsync="never",
        **({"rotation": rotation} if rotation else {}),
    )
    sink = FileSink(output)
    broker = AuditBroker(
        [sink],
        data_dir=directory,
        node="n1",
        signer=signer,
        block=False,
        checkpoint_every=100,
        checkpoint_seconds=3600,
    )
    broker.start()
    for n in range(1, events + 1):
        broker.emit(
            CATEGORIES[n % len(CATEGORIES)],
            "entity.put",
            outcome="success" if n % 3 else "denied",
            actor=f"admin:{n:012x}",
            resource={"table": "users", "key": f"users:{n}"},
            request_id=f"req-{n}",
        )
    broker.close()
    return sink.files()


def public_pem(directory: Path, signer: Signer, name: str = "public.pem") -> Path:
    path = directory / name
    path.write_text(signer.public_pem())
    return path


def audit_verify(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_cli(["audit", "verify", *map(str, args)], {})


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in output(result), output(result)


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return Signer.create(tmp_path / "signing-key.pem")


def rewrite_event(path: Path, seq: int, **changes: object) -> None:
    """Change fields of event ``seq`` in place, keeping the line canonical JSON."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        record = json.loads(line)
        if record.get("type") != "checkpoint" and record["seq"] == seq:
            record.update(changes)
            lines[number] = canonical(record)
            break
    else:
        raise AssertionError(f"no event {seq} in {path}")
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


# --- audit verify -----------------------------------------------------------------------------


def test_an_intact_chain_exits_0(tmp_path: Path, signer: Signer) -> None:
    (path,) = write_chain(tmp_path, signer)
    result = audit_verify(path, "--public-key", public_pem(tmp_path, signer))
    assert result.returncode == 0, output(result)
    assert result.stdout.strip() == "intact: 300 events, 3 checkpoints"


def test_a_rotated_file_set_exits_0_oldest_first(tmp_path: Path, signer: Signer) -> None:
    files = write_chain(tmp_path, signer, rotation={"max_size": "16KB"})
    assert len(files) >= 3
    key = public_pem(tmp_path, signer)
    result = audit_verify(*files, "--public-key", key)
    assert result.returncode == 0, output(result)
    assert result.stdout.startswith("intact: 300 events")
    # What remains after retention removed the oldest file still verifies ...
    assert audit_verify(*files[1:], "--public-key", key).returncode == 0
    # ... but the files in the wrong order do not.
    backwards = audit_verify(*reversed(files), "--public-key", key)
    assert backwards.returncode == 1, output(backwards)


def test_a_modified_event_exits_1_naming_its_seq(tmp_path: Path, signer: Signer) -> None:
    (path,) = write_chain(tmp_path, signer)
    rewrite_event(path, 137, outcome="success", resource={"table": "users", "key": "users:1"})
    result = audit_verify(path, "--public-key", public_pem(tmp_path, signer))
    assert result.returncode == 1, output(result)
    assert "TAMPERED (first bad seq 137)" in result.stderr
    assert "seq 137 was modified" in result.stderr
    assert f"{path}:" in result.stderr  # the file and the line
    assert_no_traceback(result)


def test_a_deleted_event_exits_1_naming_its_seq(tmp_path: Path, signer: Signer) -> None:
    (path,) = write_chain(tmp_path, signer)
    lines = path.read_text(encoding="utf-8").splitlines()
    del lines[[json.loads(line).get("seq") for line in lines].index(42)]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    result = audit_verify(path, "--public-key", public_pem(tmp_path, signer))
    assert result.returncode == 1, output(result)
    assert "TAMPERED (first bad seq 42)" in result.stderr


def test_an_unsigned_tail_exits_1_unless_live(tmp_path: Path, signer: Signer) -> None:
    (path,) = write_chain(tmp_path, signer)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[-1])["type"] == "checkpoint"
    path.write_text("".join(line + "\n" for line in lines[:-1]), encoding="utf-8")
    key = public_pem(tmp_path, signer)
    result = audit_verify(path, "--public-key", key)
    assert result.returncode == 1, output(result)
    assert "TAMPERED (first bad seq 201)" in result.stderr
    assert "not covered by a checkpoint" in result.stderr
    live = audit_verify(path, "--public-key", key, "--live")
    assert live.returncode == 0, output(live)
    assert "seq 201.. not yet signed" in live.stdout


def test_another_key_exits_1(tmp_path: Path, signer: Signer) -> None:
    (path,) = write_chain(tmp_path, signer)
    other = Signer.create(tmp_path / "other-key.pem")
    result = audit_verify(path, "--public-key", public_pem(tmp_path, other, "other.pem"))
    assert result.returncode == 1, output(result)
    assert "TAMPERED (first bad seq 100)" in result.stderr
    assert "bad signature (modified, or another key)" in result.stderr


def test_a_missing_file_exits_2(tmp_path: Path, signer: Signer) -> None:
    (path,) = write_chain(tmp_path, signer)
    key = public_pem(tmp_path, signer)
    for files in ([tmp_path / "nope.log"], [path, tmp_path / "nope.log"]):
        result = audit_verify(*files, "--public-key", key)
        assert result.returncode == 2, output(result)
        assert "cannot read" in result.stderr
        assert "nope.log" in result.stderr
        assert_no_traceback(result)


def test_a_directory_or_no_file_is_a_usage_error(tmp_path: Path, signer: Signer) -> None:
    key = public_pem(tmp_path, signer)
    for args in ([tmp_path, "--public-key", key], ["--public-key", key], [tmp_path / "x.log"]):
        result = audit_verify(*args)
        assert result.returncode == 2, output(result)
        assert_no_traceback(result)


def test_unusable_public_keys_exit_2(tmp_path: Path, signer: Signer) -> None:
    (path,) = write_chain(tmp_path, signer)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n")
    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    private = tmp_path / "signing-key.pem"  # the private key where the public one belongs
    for key in (tmp_path / "missing.pem", garbage, rsa_key, private, path):
        result = audit_verify(path, "--public-key", key)
        assert result.returncode == 2, (key, output(result))
        assert f"--public-key {key}" in result.stderr
        assert_no_traceback(result)


def test_a_byte_that_is_not_utf8_exits_1_naming_the_seq(tmp_path: Path, signer: Signer) -> None:
    """Regression: a tampered byte that is not UTF-8 made ``verify`` raise UnicodeDecodeError,
    which ``audit verify`` does not catch: a traceback (exit 1 by accident), no seq named."""
    (path,) = write_chain(tmp_path, signer)
    data = path.read_bytes()
    at = data.index(b'"request_id":"req-150"') + len(b'"request_id":"req-')
    path.write_bytes(data[:at] + b"\xff" + data[at + 1 :])
    result = audit_verify(path, "--public-key", public_pem(tmp_path, signer))
    assert "Traceback" not in output(result), (
        "audit verify crashed on a non-UTF-8 byte:\n" + output(result)[-400:]
    )
    assert result.returncode == 1, output(result)
    assert "TAMPERED (first bad seq 150)" in result.stderr


# --- audit public-key -------------------------------------------------------------------------


def signing_env(tmp_path: Path, key: Path) -> dict[str, str]:
    config = tmp_path / "themis.yaml"
    config.write_text(SIGNING_YAML)
    return {
        "THEMIS_CONFIG": str(config),
        "THEMIS_AUDIT_SIGNING_KEY_FILE": str(key),
        "THEMIS_DATA_DIR": str(tmp_path / "data"),
    }


def test_public_key_prints_the_pem_that_verifies_the_signing_key(
    tmp_path: Path, signer: Signer
) -> None:
    key = tmp_path / "signing-key.pem"
    result = run_cli(["audit", "public-key"], signing_env(tmp_path, key))
    assert result.returncode == 0, output(result)
    assert result.stdout.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert result.stdout.endswith("-----END PUBLIC KEY-----\n")
    assert "PRIVATE" not in result.stdout
    assert result.stdout == signer.public_pem()
    printed = tmp_path / "printed.pem"
    printed.write_text(result.stdout)
    # Checkpoints made with the key of THEMIS_AUDIT_SIGNING_KEY_FILE verify with it.
    chain = tmp_path / "chain"
    chain.mkdir()
    files = write_chain(chain, Signer.load(key))
    assert verify(files, load_public_key(printed)).ok
    verified = audit_verify(*files, "--public-key", printed)
    assert verified.returncode == 0, output(verified)


def test_public_key_verifies_what_a_real_server_wrote(tmp_path: Path, signer: Signer) -> None:
    key = tmp_path / "signing-key.pem"
    env = signing_env(tmp_path, key)
    printed = tmp_path / "printed.pem"
    result = run_cli(["audit", "public-key"], env)
    assert result.returncode == 0, output(result)
    printed.write_text(result.stdout)
    server = start_server(env)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            for n in range(5):
                response = client.put(f"/entities/users:{n}", json={"n": n})
                assert response.status_code == 200, response.text
            assert client.get("/entities/users:3").status_code == 200
    finally:
        code, log = server.stop()
    assert code == 0, log
    audit_log = tmp_path / "data" / "audit" / "audit.log"
    verified = audit_verify(audit_log, "--public-key", printed)
    assert verified.returncode == 0, output(verified) + log
    assert verified.stdout.startswith("intact: ")
    events = [json.loads(line) for line in audit_log.read_text(encoding="utf-8").splitlines()]
    assert events[-1]["type"] == "checkpoint"  # the one at shutdown
    assert {e.get("category") for e in events} >= {"administrative", "data_access"}
    other = Signer.create(tmp_path / "other-key.pem")
    wrong = audit_verify(audit_log, "--public-key", public_pem(tmp_path, other, "other.pem"))
    assert wrong.returncode == 1, output(wrong)


def test_public_key_without_signing_exits_1(tmp_path: Path) -> None:
    result = run_cli(["audit", "public-key"], {"THEMIS_DATA_DIR": str(tmp_path / "data")})
    assert result.returncode == 1, output(result)
    assert "logging.audit.signing is not enabled" in result.stderr
    assert_no_traceback(result)


def test_public_key_with_an_unusable_key_file_exits_78(tmp_path: Path) -> None:
    bad = tmp_path / "bad-key.pem"
    bad.write_text("not a key\n")
    for key in (bad, tmp_path / "missing-key.pem"):
        result = run_cli(["audit", "public-key"], signing_env(tmp_path, key))
        assert result.returncode == 78, output(result)
        assert "THEMIS_AUDIT_SIGNING_KEY_FILE" in result.stderr
        assert result.stdout == ""
        assert_no_traceback(result)
