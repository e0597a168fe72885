"""The Models API's answer (what ``dashscope.Models`` and ``Client.models`` read): the served names, a page
at a time, each with its request rules.

``model`` filters to one exact name; an unknown name is an empty page, not an error, because the SDK's
``get`` turns an empty list into its own "not found". Where the weights come from stays private: it is
the operator's repository id or local path.
"""

from __future__ import annotations

from qwen_image_server.api.dashscope.protocol import ModelCapabilities, ModelInfo, ModelsOutput, ModelsResponse
from qwen_image_server.engine.registry import ModelRegistry, ModelSpec


def list_models(registry: ModelRegistry, request_id: str, *, page_no: int, page_size: int,
                model: str | None) -> ModelsResponse:
    specs = [spec for spec in registry.specs() if model is None or spec.name == model]
    start = (page_no - 1) * page_size
    return ModelsResponse(request_id=request_id, output=ModelsOutput(
        models=[describe(spec) for spec in specs[start:start + page_size]],
        page_no=page_no, page_size=page_size, total=len(specs)))


def describe(spec: ModelSpec) -> ModelInfo:
    rules = spec.rules
    size = rules.text_to_image_size
    licences = dict.fromkeys(variant.licence for variant in spec.variants())
    return ModelInfo(model=spec.name, license="; ".join(licence.name for licence in licences),
                     commercial_use=all(licence.commercial_use for licence in licences),
                     capabilities=ModelCapabilities(
        min_images=rules.min_images, max_images=rules.max_images, max_n=rules.n_max, size_rule=rules.size_rule,
        default_size=f"{size[0]}*{size[1]}" if size else None, prompt_extend=rules.prompt_extend,
        steps=spec.steps))
