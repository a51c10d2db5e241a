"""Audit checkpoints signed inside the HSM (SoftHSM2): the private key never leaves the token,
and the chain verifies with the public key the CLI exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import run_cli, start_server

pytestmark = pytest.mark.integration


def test_checkpoints_signed_in_the_hsm_verify(softhsm: Any, tmp_path: Path) -> None:
    config = tmp_path / "themis.yaml"
    log = tmp_path / "audit.log"
    config.write_text(
        f"logging:\n  audit:\n    outputs:\n      - type: file\n        path: {log}\n"
        "    signing:\n      enabled: true\n"
    )
    env = {
        **softhsm.env(tmp_path),
        "THEMIS_CONFIG": str(config),
        "THEMIS_DATA_DIR": str(tmp_path / "data"),
    }
    init = run_cli(["keys", "init"], env)
    assert init.returncode == 0, init.stderr
    assert "audit signing key" in init.stdout
    server = start_server(env)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as api:
            assert api.put("/entities/hsm:1", json={"v": 1}).status_code == 200
    finally:
        code, output = server.stop()
    assert code == 0, output
    public = tmp_path / "public.pem"
    exported = run_cli(["audit", "public-key"], env)
    assert exported.returncode == 0, exported.stderr
    public.write_text(exported.stdout)
    verified = run_cli(["audit", "verify", str(log), "--public-key", str(public)], {})
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "checkpoints" in verified.stdout
    # The private key is in the token only: nothing in the data or audit directories.
    assert not list((tmp_path / "data").rglob("*.pem"))
