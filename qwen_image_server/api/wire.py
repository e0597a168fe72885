"""The base of every API surface's request models: tolerant of unknown fields, as "compatible" APIs must be,
and strict where a lax reading would take what no client means.

Clients send parameters we do not know (the DashScope SDK's ``result_format``, OpenAI's ``quality``), so extra
fields are accepted and logged, never rejected. But a JSON ``true`` is not the integer 1: pydantic's lax
integers would take it, so integer fields are ``WireInt``.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator

log = logging.getLogger(__name__)


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not an integer")
    return value


WireInt = Annotated[int, BeforeValidator(_not_a_boolean)]


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_unknown_fields(self) -> WireModel:
        if self.model_extra:
            log.debug("ignoring unknown fields of %s: %s", type(self).__name__, sorted(self.model_extra))
        return self
