"""The model registry: API model name -> family, weights source, rules and sampling defaults.

Built-in defaults follow the hosted API's model table; a TOML file can remap names and add new ones::

    [models."qwen-image-edit-plus"]
    source = "Qwen/Qwen-Image-Edit-2509"     # HF repo id or local directory

    [models."my-edit"]
    like = "qwen-image-edit-plus"             # copy rules and family from an existing name
    source = "/models/my-finetune"
    steps = 30
    true_cfg_scale = 3.5

The ``demo`` preset points every name at the tiny offline models of its family.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qwen_image_server.engine.families import FAMILIES, Family
from qwen_image_server.engine.rules import ModelRules
from qwen_image_server.errors import ModelNotFound

DEMO_STEPS = 2


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: Family
    source: str
    rules: ModelRules
    steps: int
    true_cfg_scale: float


_EDIT_RULES = ModelRules(min_images=1, max_images=3, n_max=6, size_rule="sides", text_to_image_size=None,
                         prompt_extend=True, prompt_token_limit=800)
_RULES: dict[str, ModelRules] = {
    "qwen-image-2.0": ModelRules(min_images=0, max_images=3, n_max=6, size_rule="area",
                                 text_to_image_size=(2048, 2048), prompt_extend=True,
                                 prompt_token_limit=1300),
    "qwen-image-edit-plus": _EDIT_RULES,
    # Qwen-Image-Edit's pipeline takes a single image; size is not customisable and n is fixed at 1.
    "qwen-image-edit": replace(_EDIT_RULES, max_images=1, n_max=1, size_rule="auto", prompt_extend=False),
    "qwen-image": ModelRules(min_images=0, max_images=0, n_max=1, size_rule="fixed",
                             text_to_image_size=(1664, 928), prompt_extend=True, prompt_token_limit=800),
}

# API name -> (rules key, family, default weights).
_BUILTIN: dict[str, tuple[str, str, str]] = {
    "qwen-image-edit": ("qwen-image-edit", "qwen-image-edit", "Qwen/Qwen-Image-Edit"),
    **{
        name: ("qwen-image-edit-plus", "qwen-image-edit-plus", "Qwen/Qwen-Image-Edit-2511")
        for name in ("qwen-image-edit-plus", "qwen-image-edit-plus-2025-10-30",
                     "qwen-image-edit-plus-2025-12-15", "qwen-image-edit-max",
                     "qwen-image-edit-max-2026-01-16")
    },
    **{
        name: ("qwen-image", "qwen-image", "Qwen/Qwen-Image-2512")
        for name in ("qwen-image", "qwen-image-plus", "qwen-image-plus-2026-01-09", "qwen-image-max",
                     "qwen-image-max-2025-12-30")
    },
    **{
        name: ("qwen-image-2.0", "qwen-image-2.1", "Qwen/Qwen-Image-2.1")
        for name in ("qwen-image-2.0", "qwen-image-2.0-2026-03-03", "qwen-image-2.0-pro",
                     "qwen-image-2.0-pro-2026-03-03", "qwen-image-2.0-pro-2026-04-22",
                     "qwen-image-2.0-pro-2026-06-22")
    },
}


class ModelRegistry:
    """Looks up API model names; unknown or disabled names raise ``ModelNotFound``."""

    def __init__(self, specs: dict[str, ModelSpec]) -> None:
        self._specs = specs

    def get(self, name: str) -> ModelSpec:
        spec = self._specs.get(name)
        if spec is None:
            raise ModelNotFound(f"Model not exist: {name!r} is not served here.")
        return spec

    def names(self) -> list[str]:
        return sorted(self._specs)

    def specs(self) -> list[ModelSpec]:
        return [self._specs[name] for name in self.names()]

    def names_sharing(self, spec: ModelSpec) -> list[str]:
        """The served names on the same weights as ``spec``, which share its limits."""
        return [name for name in self.names() if self._specs[name].source == spec.source]


def builtin_specs() -> dict[str, ModelSpec]:
    specs = {}
    for name, (rules_key, family_name, source) in _BUILTIN.items():
        family = FAMILIES[family_name]
        specs[name] = ModelSpec(name, family, source, _RULES[rules_key], family.steps, family.true_cfg_scale)
    return specs


def demo_specs(demo_dir: Path) -> dict[str, ModelSpec]:
    """Every built-in name served by its family's tiny offline model, with few steps."""
    return {
        name: replace(spec, source=str(demo_dir / spec.family.name), steps=DEMO_STEPS)
        for name, spec in builtin_specs().items()
    }


def apply_config(specs: dict[str, ModelSpec], config: dict[str, Any]) -> dict[str, ModelSpec]:
    """Apply a parsed TOML config's ``[models.<name>]`` tables on top of ``specs``."""
    result = dict(specs)
    for name, table in config.get("models", {}).items():
        table = dict(table)
        like = table.pop("like", None)
        base = result.get(like or name)
        family_name = table.pop("family", None)
        if base is None and family_name is None:
            raise ValueError(f"model {name!r}: give 'like' (an existing name) or 'family'")
        if family_name is not None and family_name not in FAMILIES:
            raise ValueError(f"model {name!r}: unknown family {family_name!r}; known: {sorted(FAMILIES)}")
        family = FAMILIES[family_name] if family_name else base.family  # type: ignore[union-attr]
        if base is None:
            base = next(spec for spec in builtin_specs().values() if spec.family == family)
        unknown = set(table) - {"source", "steps", "true_cfg_scale"}
        if unknown:
            raise ValueError(f"model {name!r}: unknown keys {sorted(unknown)}")
        result[name] = replace(base, name=name, family=family, **table)
    return result


def load_registry(preset: str, demo_dir: Path, config_path: Path | None,
                  enabled: list[str] | None) -> ModelRegistry:
    specs = demo_specs(demo_dir) if preset == "demo" else builtin_specs()
    if config_path is not None:
        specs = apply_config(specs, tomllib.loads(config_path.read_text()))
    if enabled is not None:
        missing = sorted(set(enabled) - set(specs))
        if missing:
            raise ValueError(f"enabled_models names unknown models: {missing}")
        specs = {name: specs[name] for name in enabled}
    return ModelRegistry(specs)
