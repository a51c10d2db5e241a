"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ServerProcess
from themisdb.keys import open_provider
from themisdb.settings import load_settings

# Real services started once per session (SoftHSM2 token, OpenBao server, rsyslog).
pytest_plugins = ["tests.services.softhsm", "tests.services.openbao", "tests.services.rsyslog"]


@pytest.fixture
def cleanup_servers() -> Iterator[list[ServerProcess]]:
    """Servers appended here are killed at teardown, whatever the test did."""
    servers: list[ServerProcess] = []
    yield servers
    for server in servers:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=10)


@pytest.fixture(scope="session")
def hsm_env(softhsm: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Variables of a real key manager (the session's SoftHSM2 token) whose master key exists:
    what a production configuration needs to pass the gate and start."""
    env: dict[str, str] = softhsm.env(tmp_path_factory.mktemp("hsm-session"))
    open_provider(load_settings(env), create=True).close()
    return env


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir(mode=0o700)
    return directory
