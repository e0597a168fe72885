"""OpenAI's model objects for the served names.

``created`` is when this server started: open weights have no creation time the API could report, and
one fixed value keeps the list and a retrieve in agreement.
"""

from __future__ import annotations

from qwen_image_server.api.openai.protocol import Model, ModelList
from qwen_image_server.engine.registry import ModelRegistry


def model_list(registry: ModelRegistry, created: int) -> ModelList:
    return ModelList(data=[Model(id=name, created=created) for name in registry.names()])


def model_object(registry: ModelRegistry, name: str, created: int) -> Model:
    """Raises ``ModelNotFound`` for a name not served here."""
    return Model(id=registry.get(name).name, created=created)
