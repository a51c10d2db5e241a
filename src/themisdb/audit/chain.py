"""The tamper-evident audit chain: hashing, signed checkpoints, verification.

Every event carries ``seq`` (1, 2, 3, ...), ``prev_hash`` (the previous event's hash, 64 zeros
for seq 1) and ``hash`` = SHA-256 over the canonical JSON of the event without ``hash``
(sorted keys, no spaces, UTF-8). A checkpoint is a separate line ``{"type": "checkpoint",
"seq", "hash", "time", "key_id", "signature"}``: ECDSA P-256 (SHA-256, DER, base64) over the
canonical JSON of ``{"hash", "seq", "time"}``. Checkpoints are written every N events or T
seconds, at shutdown, and as the first line of every new file after a rotation (so a file set
whose oldest files were deleted by retention still verifies from its first checkpoint).

Verification walks the lines in order and names the first bad seq: a modified event fails its
hash, a deleted or inserted one breaks seq/prev_hash continuity, a reordered one both; a
checkpoint that does not verify with the public key or does not match the event at its seq
fails; events after the last checkpoint are a truncated or unsigned tail (accepted only with
``live=True``, for a file a running server is still writing).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

GENESIS = "0" * 64


def canonical(fields: Mapping[str, Any]) -> str:
    # ASCII only (\u escapes): the line goes unchanged into RFC 5424 syslog MSG, which must
    # otherwise start with a BOM that JSON consumers choke on.
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def event_hash(fields: Mapping[str, Any]) -> str:
    body = {k: v for k, v in fields.items() if k != "hash"}
    return hashlib.sha256(canonical(body).encode()).hexdigest()


def checkpoint_message(seq: int, chain_hash: str, time: str) -> bytes:
    return canonical({"hash": chain_hash, "seq": seq, "time": time}).encode()


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


class Signer:
    """ECDSA P-256 signing of checkpoints: with a private key in memory (a PEM file), or
    through a function that signs inside an HSM (``from_hsm``)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError("the audit signing key must be ECDSA P-256")
        key = private_key
        self._sign: Callable[[bytes], bytes] = lambda message: key.sign(
            message, ec.ECDSA(hashes.SHA256())
        )
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def from_hsm(cls, public_spki: bytes, sign: Callable[[bytes], bytes]) -> Signer:
        """A signer whose private key never leaves the token; ``sign`` returns DER."""
        public = serialization.load_der_public_key(public_spki)
        if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
            public.curve, ec.SECP256R1
        ):
            raise ValueError("the HSM audit signing key must be ECDSA P-256")
        signer = cls.__new__(cls)
        signer._sign = sign
        signer.public_key = public
        signer.key_id = key_id(public)
        return signer

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r})"

    @classmethod
    def load(cls, path: Path) -> Signer:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the audit signing key must be an ECDSA P-256 private key")
        return cls(key)

    @classmethod
    def create(cls, path: Path) -> Signer:
        """A new key, written with mode 0600 (development default only)."""
        key = ec.generate_private_key(ec.SECP256R1())
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        return cls(key)

    def public_pem(self) -> str:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def checkpoint(self, seq: int, chain_hash: str, time: str) -> dict[str, Any]:
        signature = self._sign(checkpoint_message(seq, chain_hash, time))
        return {
            "type": "checkpoint",
            "seq": seq,
            "hash": chain_hash,
            "time": time,
            "key_id": self.key_id,
            "signature": base64.b64encode(signature).decode("ascii"),
        }


@dataclass(frozen=True)
class Verdict:
    ok: bool
    message: str
    first_bad_seq: int | None = None
    events: int = 0
    checkpoints: int = 0


def _lines(paths: Iterable[Path]) -> Iterable[tuple[str, int, str]]:
    for path in paths:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                # Undecodable bytes become U+FFFD: the record then fails its checks, by line.
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                if line.strip():
                    yield str(path), number, line


def verify(
    paths: Iterable[Path], public_key: ec.EllipticCurvePublicKey, *, live: bool = False
) -> Verdict:
    """Check a chain spread over ``paths`` (oldest first)."""
    return verify_lines(_lines(paths), public_key, live=live)


def verify_lines(
    lines: Iterable[tuple[str, int, str]],
    public_key: ec.EllipticCurvePublicKey,
    *,
    live: bool = False,
) -> Verdict:
    """Check a chain given as (where, line number, text) triples, in order."""
    expected_seq: int | None = None
    prev_hash: str | None = None
    events = checkpoints = 0
    last_signed: int | None = None
    anchored = False

    def bad(seq: int | None, why: str) -> Verdict:
        return Verdict(False, why, seq, events, checkpoints)

    for where, number, line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            return bad(expected_seq, f"{where}:{number}: not a JSON record")
        if not isinstance(record, dict):
            return bad(expected_seq, f"{where}:{number}: not a JSON object")
        if canonical(record) != line:
            # Exactly the bytes that were hashed/signed: no duplicate keys, reordering or
            # re-spacing that one JSON reader would resolve differently from another.
            seq_value = record.get("seq")
            return bad(
                seq_value if isinstance(seq_value, int) else expected_seq,
                f"{where}:{number}: not in canonical form (altered)",
            )
        if record.get("type") == "checkpoint":
            problem = _check_checkpoint(record, public_key)
            if problem:
                return bad(
                    record.get("seq") if isinstance(record.get("seq"), int) else None,
                    f"{where}:{number}: {problem}",
                )
            if prev_hash is None:
                # A chain that starts at a checkpoint (rotated files deleted by retention).
                expected_seq, prev_hash, anchored = record["seq"] + 1, record["hash"], True
            elif record["seq"] != (expected_seq or 1) - 1 or record["hash"] != prev_hash:
                return bad(
                    record["seq"],
                    f"{where}:{number}: checkpoint does not match the event at seq {record['seq']}",
                )
            checkpoints += 1
            last_signed = record["seq"]
            continue
        seq = record.get("seq")
        if type(seq) is not int:  # bool is an int subclass: true is not a seq
            return bad(expected_seq, f"{where}:{number}: record without a seq")
        if expected_seq is None:
            if seq != 1 or record.get("prev_hash") != GENESIS:
                return bad(
                    seq, f"{where}:{number}: the chain does not start at seq 1 or at a checkpoint"
                )
            expected_seq, prev_hash, anchored = 1, GENESIS, True
        if seq != expected_seq:
            return bad(
                min(seq, expected_seq),
                f"{where}:{number}: seq {seq} where "
                f"{expected_seq} was expected (deleted, inserted or reordered)",
            )
        if record.get("prev_hash") != prev_hash:
            return bad(seq, f"{where}:{number}: prev_hash does not link to seq {seq - 1}")
        if record.get("hash") != event_hash(record):
            return bad(seq, f"{where}:{number}: seq {seq} was modified (hash mismatch)")
        prev_hash = record["hash"]
        expected_seq = seq + 1
        events += 1
    if not anchored:
        return Verdict(False, "no records", None, events, checkpoints)
    last_seq = (expected_seq or 1) - 1
    if last_signed != last_seq and not live:
        first_unsigned = (last_signed or 0) + 1
        return Verdict(
            False,
            f"seq {first_unsigned}..{last_seq} are not covered by a checkpoint "
            "(truncated after the last checkpoint, or a crash before the next one)",
            first_unsigned,
            events,
            checkpoints,
        )
    tail = "" if last_signed == last_seq else f"; seq {(last_signed or 0) + 1}.. not yet signed"
    return Verdict(
        True, f"intact: {events} events, {checkpoints} checkpoints{tail}", None, events, checkpoints
    )


def _check_checkpoint(
    record: Mapping[str, Any], public_key: ec.EllipticCurvePublicKey
) -> str | None:
    try:
        seq, chain_hash, time = record["seq"], record["hash"], record["time"]
        signature = base64.b64decode(record["signature"], validate=True)
    except (KeyError, ValueError, TypeError):
        return "malformed checkpoint"
    if not isinstance(seq, int) or not isinstance(chain_hash, str) or not isinstance(time, str):
        return "malformed checkpoint"
    try:
        public_key.verify(
            signature, checkpoint_message(seq, chain_hash, time), ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        return f"checkpoint at seq {seq} has a bad signature (modified, or another key)"
    return None


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an ECDSA public key")
    return key
