"""The base of every model pagelens stores and serves: camelCase JSON both ways."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class Wire(BaseModel):
    """camelCase JSON both ways; unknown keys in stored JSON are ignored, never an error."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        json_schema_serialization_defaults_required=True,
    )

    def to_json(self) -> dict[str, Any]:
        """The JSON value (dicts, lists, strings, numbers) of this model, as stored and served."""
        return self.model_dump(mode="json")
