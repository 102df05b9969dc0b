"""Query parameter models that refuse names they do not know.

A mistyped filter (``?devce_id=x`` or ``?stauts=failed``) would otherwise be ignored, and the
answer would look like data for that filter. Every list endpoint takes its parameters as one
subclass of :class:`StrictQuery` (``params: Annotated[SiteListQuery, Query()]``), so that an
unknown name is a 422 naming it and listing the names the endpoint accepts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError


class StrictQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def parameter_names(cls) -> list[str]:
        """The names a client may send: each field's alias when it has one."""
        return [field.alias or name for name, field in cls.model_fields.items()]

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_parameters(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        accepted = cls.parameter_names()
        unknown = [name for name in data if name not in accepted and name not in cls.model_fields]
        if unknown:
            allowed = ", ".join(accepted) or "no parameters"
            errors = [
                InitErrorDetails(
                    type=PydanticCustomError(
                        "unknown_parameter",
                        "unknown query parameter '{name}'; this endpoint accepts: {allowed}",
                        {"name": name, "allowed": allowed},
                    ),
                    loc=(name,),
                    input=data[name],
                )
                for name in unknown
            ]
            # Raised as a ValidationError so that each error keeps its parameter's location.
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return data


class NoParameters(StrictQuery):
    """For a list endpoint that takes no parameters: any name sent is refused all the same."""
