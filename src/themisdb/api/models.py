"""Request bodies of the data API, in upstream ThemisDB's shapes (validated, extra keys refused)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Scalar = StrictStr | StrictInt | StrictFloat | StrictBool | None
_STRICT = ConfigDict(extra="forbid", populate_by_name=True)


class EntityIn(BaseModel):
    model_config = _STRICT
    key: StrictStr = Field(description="table:pk")
    blob: dict[str, Any] = Field(description="the entity, a JSON object")


class BatchIn(BaseModel):
    model_config = _STRICT
    entities: list[EntityIn] = Field(min_length=1, description="written atomically: all or none")


class PredicateIn(BaseModel):
    model_config = _STRICT
    column: StrictStr
    value: Scalar


class RangeIn(BaseModel):
    model_config = _STRICT
    column: StrictStr
    gte: Scalar = None
    lte: Scalar = None
    include_lower: StrictBool = Field(True, alias="includeLower")
    include_upper: StrictBool = Field(True, alias="includeUpper")


class OrderIn(BaseModel):
    model_config = _STRICT
    column: StrictStr
    desc: StrictBool = False
    limit: StrictInt | None = Field(None, ge=1)


class QueryIn(BaseModel):
    model_config = _STRICT
    table: StrictStr
    predicates: list[PredicateIn] = []
    range: list[RangeIn] = []
    order_by: OrderIn | None = None
    limit: StrictInt | None = Field(None, ge=1, description="also accepted inside order_by")
    return_: Literal["keys", "entities"] = Field("keys", alias="return")
    explain: StrictBool = False


class IndexIn(BaseModel):
    model_config = _STRICT
    table: StrictStr
    column: StrictStr


class ReencryptIn(BaseModel):
    model_config = _STRICT
    table: StrictStr
    after: StrictStr = Field("", description="continue after this primary key")
    limit: StrictInt = Field(500, ge=1, le=5000)


class ApiKeyIn(BaseModel):
    model_config = _STRICT
    name: StrictStr = Field(description="a label for people: letters, digits and _ . @ -")
    scopes: list[StrictStr] = Field(min_length=1, description="data:read, data:write, ...")
    tables: list[StrictStr] | None = Field(None, description="only these tables (omit: every)")
    expires_in: StrictInt | StrictFloat | None = Field(
        None, gt=0, description="seconds from now after which the key is refused"
    )


class ApiKeyChangeIn(BaseModel):
    model_config = _STRICT
    scopes: list[StrictStr] | None = Field(None, min_length=1)
    tables: list[StrictStr] | None = Field(None, description="only these tables")
    all_tables: StrictBool = Field(False, description="lift the table restriction")


BODY_MODELS: tuple[type[BaseModel], ...] = (
    EntityIn,
    BatchIn,
    QueryIn,
    IndexIn,
    ReencryptIn,
    ApiKeyIn,
    ApiKeyChangeIn,
)
