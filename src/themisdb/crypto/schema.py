"""The encryption schema: per table, which fields are encrypted and how each is classified."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from themisdb.storage import check_field, check_table

Classification = Literal["public", "internal", "confidential", "pii", "restricted"]
SENSITIVE: frozenset[str] = frozenset({"pii", "restricted"})
_STRICT = ConfigDict(extra="forbid", frozen=True)


class FieldPolicy(BaseModel):
    model_config = _STRICT
    encrypt: StrictBool = False
    classification: Classification = "internal"


class TablePolicy(BaseModel):
    model_config = _STRICT
    fields: dict[str, FieldPolicy] = Field(default_factory=dict)

    @field_validator("fields")
    @classmethod
    def _top_level_names(cls, value: dict[str, FieldPolicy]) -> dict[str, FieldPolicy]:
        for name in value:
            check_field(name)
            if "." in name:
                raise ValueError(f"{name}: only top-level fields can be declared")
        return value


class EncryptionSchema(BaseModel):
    """``{"tables": {"customers": {"fields": {"ssn": {"encrypt": true,
    "classification": "pii"}}}}}``"""

    model_config = _STRICT
    tables: dict[str, TablePolicy] = Field(default_factory=dict)

    @field_validator("tables")
    @classmethod
    def _table_names(cls, value: dict[str, TablePolicy]) -> dict[str, TablePolicy]:
        for name in value:
            check_table(name)
        return value

    def encrypted_fields(self, table: str) -> frozenset[str]:
        policy = self.tables.get(table)
        if policy is None:
            return frozenset()
        return frozenset(name for name, f in policy.fields.items() if f.encrypt)

    def sensitive_fields(self, table: str) -> frozenset[str]:
        """Fields classified pii or restricted (masked for callers without pii:read)."""
        policy = self.tables.get(table)
        if policy is None:
            return frozenset()
        return frozenset(n for n, f in policy.fields.items() if f.classification in SENSITIVE)

    def covers(self, table: str, column: str) -> bool:
        """Whether a query column touches an encrypted field (itself or inside it)."""
        top = column.split(".", 1)[0]
        return top in self.encrypted_fields(table)
