"""SoftHSM2 for the test session: a private token directory, one token, an outage switch.

Fixtures: ``softhsm`` (session) and ``pkcs11_provider`` (one provider per test, on its own key
label so that rotations do not interfere).

SoftHSM2 must be installed (Debian package softhsm2; ``make test`` installs it). It finds its
tokens through ``SOFTHSM2_CONF``, which the session fixture points at a private config whose
``directories.tokendir`` is a temporary directory: nothing touches /var/lib/softhsm.

How an HSM outage is simulated, measured with SoftHSM2 2.6.1 in a process that has the token
open (logged in, key handles cached):

* ``take_away()`` renames the token directory (``tokens`` -> ``tokens.away``). Nothing happens
  until the process next touches the token; from then on C_GetTokenInfo fails with
  CKR_GENERAL_ERROR, cached key handles with CKR_OBJECT_HANDLE_INVALID, and C_FindObjects
  finds nothing. Opening a session still succeeds (the slot stays).
* ``bring_back()`` renames it back. That alone does **not** heal a process that touched the
  token while it was away: SoftHSM has marked that token broken in memory and keeps failing
  (still GeneralError a second later; re-finding keys finds nothing, logging in again says
  UserAlreadyLoggedIn). Only C_Finalize + C_Initialize makes it read the directory again;
  the provider does that itself on its next call. A process that did not touch the token
  while it was away never notices the outage.
* Moving only the key object files away breaks the handles the same way, while C_GetTokenInfo
  still answers; they are not found again after they return, until re-initialisation.
* Making the directory unreadable (chmod 000) is no simulation when tests run as root (root
  ignores permission bits), so the fixture moves the directory instead.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from themisdb.settings import Settings, load_settings

if TYPE_CHECKING:
    from themisdb.keys.pkcs11 import Pkcs11KeyProvider

SOFTHSM_LIBRARY = Path("/usr/lib/softhsm/libsofthsm2.so")
TOKEN_LABEL = "themisdb-test"


@dataclass
class SoftHsm:
    """One initialised SoftHSM2 token in a private token directory."""

    library: str
    token_label: str
    pin: str = field(repr=False)
    so_pin: str = field(repr=False)
    conf: Path
    tokendir: Path

    @property
    def _away(self) -> Path:
        return self.tokendir.with_name(self.tokendir.name + ".away")

    def env(self, tmp_path: Path) -> dict[str, str]:
        """Server variables for this token; the PIN goes into a 0600 file under tmp_path.

        The token is shared by the whole session, so THEMIS_HSM_KEY_LABEL is derived from
        ``tmp_path``: each test directory gets its own master keys (the default label would
        let one test's ``keys init`` satisfy another's "no master key yet" expectation).
        Override it to share keys on purpose."""
        digest = hashlib.sha256(str(tmp_path.resolve()).encode()).hexdigest()[:12]
        pin_file = tmp_path / "softhsm-user-pin"  # not "hsm-pin": helpers.hardened_env writes that
        fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(self.pin + "\n")
        return {
            "THEMIS_HSM_ENABLED": "1",
            "THEMIS_HSM_LIBRARY": self.library,
            "THEMIS_HSM_TOKEN_LABEL": self.token_label,
            "THEMIS_HSM_PIN_FILE": str(pin_file),
            "THEMIS_HSM_KEY_LABEL": f"themisdb-test-{digest}",
            "SOFTHSM2_CONF": str(self.conf),
        }

    def settings(self, tmp_path: Path, **variables: str) -> Settings:
        """Settings for this token plus ``variables`` (e.g. THEMIS_HSM_KEY_LABEL)."""
        return load_settings({**self.env(tmp_path), **variables})

    def take_away(self) -> None:
        """The token vanishes for every process that has it open (see the module docstring)."""
        self.tokendir.rename(self._away)

    def bring_back(self) -> None:
        """The token files return; processes must re-initialise the library to see them."""
        if self._away.exists():
            self._away.rename(self.tokendir)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    util = shutil.which("softhsm2-util")
    if not SOFTHSM_LIBRARY.exists() or util is None:
        pytest.fail(
            f"SoftHSM2 is not installed ({SOFTHSM_LIBRARY} or softhsm2-util missing). "
            "`make test` installs the Debian package softhsm2; "
            "or run: sudo apt-get install -y softhsm2",
            pytrace=False,
        )
    root = tmp_path_factory.mktemp("softhsm")
    tokendir = root / "tokens"
    tokendir.mkdir(mode=0o700)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokendir}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n",
        encoding="utf-8",
    )
    hsm = SoftHsm(
        library=str(SOFTHSM_LIBRARY),
        token_label=TOKEN_LABEL,
        pin=secrets.token_hex(8),
        so_pin=secrets.token_hex(8),
        conf=conf,
        tokendir=tokendir,
    )
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        result = subprocess.run(
            [
                util,
                "--init-token",
                "--free",
                "--label",
                hsm.token_label,
                "--so-pin",
                hsm.so_pin,
                "--pin",
                hsm.pin,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if result.returncode != 0:
            pytest.fail(f"softhsm2-util --init-token failed: {result.stderr.strip()}")
        yield hsm
    finally:
        hsm.bring_back()
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


def unique_key_label() -> str:
    return f"themisdb-test-{secrets.token_hex(4)}"


@pytest.fixture
def pkcs11_provider(softhsm: SoftHsm, tmp_path: Path) -> Iterator[Pkcs11KeyProvider]:
    from themisdb.keys.pkcs11 import Pkcs11KeyProvider  # python-pkcs11 only when used

    settings = softhsm.settings(tmp_path, THEMIS_HSM_KEY_LABEL=unique_key_label())
    provider = Pkcs11KeyProvider.from_settings(settings, create=True)
    yield provider
    provider.close()
