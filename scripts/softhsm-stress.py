#!/usr/bin/env python3
"""Hammer one pkcs11 key provider from many threads with wrap + unwrap round trips.

The environment describes the token exactly as it does for the server (THEMIS_HSM_ENABLED,
THEMIS_HSM_LIBRARY, THEMIS_HSM_TOKEN_LABEL, THEMIS_HSM_PIN_FILE, THEMIS_HSM_KEY_LABEL,
THEMIS_HSM_SESSION_POOL, SOFTHSM2_CONF; tests/services/softhsm.py's env() gives them):

    .venv/bin/python scripts/softhsm-stress.py --threads 16 --seconds 3 --max-ops 2000

Stops after --seconds or --max-ops round trips, whichever comes first, and prints one JSON line
(ops, seconds, round trips per second, failures). Exit status 0 when every round trip gave its
data key back, 1 otherwise; a crash inside the PKCS#11 library shows as a negative status
(-11: SIGSEGV), which is why tests run this in a subprocess.

--unlocked replaces the provider's process-wide lock with a no-op, to show why it exists:
SoftHSM2 with python-pkcs11 then segfaults within a second or so. Never use it for anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
import threading
import time

from themisdb.keys import pkcs11 as pkcs11_provider
from themisdb.settings import load_settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--max-ops", type=int, default=2000)
    parser.add_argument("--unlocked", action="store_true", help="demonstration only: crashes")
    args = parser.parse_args()

    provider = pkcs11_provider.Pkcs11KeyProvider.from_settings(
        load_settings(os.environ), create=True
    )
    if args.unlocked:
        pkcs11_provider.PKCS11_LOCK = contextlib.nullcontext()  # type: ignore[misc,assignment]

    counter = threading.Lock()
    ops = 0
    mismatches = 0
    failures: list[str] = []
    deadline = time.monotonic() + args.seconds
    start = threading.Barrier(args.threads + 1)

    def worker(number: int) -> None:
        nonlocal ops, mismatches
        aad = b"themis:stress:%d" % number
        start.wait()
        while time.monotonic() < deadline:
            with counter:
                if ops >= args.max_ops:
                    return
                ops += 1
            dek = secrets.token_bytes(32)
            try:
                same = provider.unwrap(provider.wrap(dek, aad=aad), aad=aad) == dek
            except Exception as exc:  # every failure is reported, not only the expected ones
                with counter:
                    failures.append(type(exc).__name__)
                continue
            if not same:
                with counter:
                    mismatches += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.threads)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.monotonic()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    health = provider.health()
    provider.close()
    report = {
        "threads": args.threads,
        "ops": ops,
        "seconds": round(elapsed, 3),
        "round_trips_per_s": round(ops / elapsed) if elapsed else None,
        "mismatches": mismatches,
        "failures": sorted(set(failures)),
        "failure_count": len(failures),
        "health_ok": health.ok,
    }
    print(json.dumps(report))
    return 0 if ops and not mismatches and not failures and health.ok else 1


if __name__ == "__main__":
    sys.exit(main())
