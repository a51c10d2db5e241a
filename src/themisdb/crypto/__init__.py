"""Envelope encryption of entity fields and the encryption schema."""

from themisdb.crypto.envelope import PREFIX, Envelope, is_ciphertext, wrapped_version
from themisdb.crypto.schema import SENSITIVE, EncryptionSchema, FieldPolicy, TablePolicy

__all__ = [
    "PREFIX",
    "SENSITIVE",
    "EncryptionSchema",
    "Envelope",
    "FieldPolicy",
    "TablePolicy",
    "is_ciphertext",
    "wrapped_version",
]
