"""The built wheel works without a checkout: it carries the one PII pattern file."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_wheel_ships_the_repository_pattern_file(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("themisdb-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("themisdb/pii/default_patterns.yaml")
    assert shipped == (REPO / "config" / "security" / "pii_patterns.yaml").read_bytes()
