"""The base of every API surface's request models: tolerant of unknown fields, as "compatible" APIs must be.

Clients send parameters we do not know (the DashScope SDK's ``result_format``, OpenAI's ``quality``), so extra
fields are accepted and logged, never rejected.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, model_validator

log = logging.getLogger(__name__)


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_unknown_fields(self) -> WireModel:
        if self.model_extra:
            log.debug("ignoring unknown fields of %s: %s", type(self).__name__, sorted(self.model_extra))
        return self
