"""The model registry: API model name -> family, weights source and their licence, rules and sampling defaults.

Built-in defaults follow the hosted API's model table; a TOML file can remap names and add new ones::

    [models."qwen-image-edit-plus"]
    source = "Qwen/Qwen-Image-Edit-2509"     # HF repo id or local directory

    [models."my-edit"]
    like = "qwen-image-edit-plus"             # copy rules and family from an existing name
    source = "/models/my-finetune"
    steps = 30
    true_cfg_scale = 3.5

Presets:

- ``demo`` points every name at the tiny offline model of its family;
- ``real`` at the published weights: the 2.0 and 2.1 names run on Qwen-Image-2.1, under the non-commercial
  Qwen Research License;
- ``apache`` serves every hosted name on Apache-2.0 weights only: the 2.0 and 2.1 names run on
  Qwen-Image-Edit-2511 when a request brings images and on Qwen-Image-2512 when it does not.

The hosted ``qwen-image-3.0`` names have no open weights: they are served only as aliases an operator asks
for (``model_aliases``), and otherwise answer a 404 that says how.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qwen_image_server.engine.contract import Plan
from qwen_image_server.engine.families import FAMILIES, Family
from qwen_image_server.engine.rules import ModelRules
from qwen_image_server.errors import ModelNotFound

DEMO_STEPS = 2


@dataclass(frozen=True)
class Licence:
    name: str
    commercial_use: bool


APACHE = Licence("Apache-2.0", commercial_use=True)
QWEN_RESEARCH = Licence("Qwen Research License (research and evaluation only, no commercial use)",
                        commercial_use=False)
DEMO = Licence("Apache-2.0 (random demo weights built by this server)", commercial_use=True)


@dataclass(frozen=True)
class ModelSpec:
    """What one API name serves. ``text_to_image``, where set, serves the requests that bring no image (the
    ``apache`` preset's 2.0 and 2.1 names), and ``serving`` picks between the two."""

    name: str
    family: Family
    source: str
    rules: ModelRules
    steps: int
    true_cfg_scale: float
    licence: Licence
    text_to_image: ModelSpec | None = None

    @property
    def plan(self) -> Plan:
        """What the engine needs to run this name: its weights and how to sample them."""
        return Plan(self.source, self.family.name, self.steps, self.true_cfg_scale, self.rules.prompt_token_limit)

    def serving(self, image_count: int) -> ModelSpec:
        return self.text_to_image if image_count == 0 and self.text_to_image is not None else self

    def variants(self) -> list[ModelSpec]:
        return [self] if self.text_to_image is None else [self, self.text_to_image]


_EDIT_RULES = ModelRules(min_images=1, max_images=3, n_max=6, size_rule="sides", text_to_image_size=None,
                         prompt_extend=True, prompt_token_limit=800)
_TWO_ZERO_RULES = ModelRules(min_images=0, max_images=3, n_max=6, size_rule="area", text_to_image_size=(2048, 2048),
                             prompt_extend=True, prompt_token_limit=1300)
_RULES: dict[str, ModelRules] = {
    "qwen-image-2.0": _TWO_ZERO_RULES,
    # Up to 10 reference images, pictures at most 8:1; 2.1-pro takes no negative prompt, 2.1-turbo does.
    "qwen-image-2.1-pro": replace(_TWO_ZERO_RULES, max_images=10, max_aspect=8.0, negative_prompt=False),
    "qwen-image-2.1-turbo": replace(_TWO_ZERO_RULES, max_images=10, max_aspect=8.0),
    "qwen-image-3.0": replace(_TWO_ZERO_RULES, max_aspect=8.0),
    "qwen-image-edit-plus": _EDIT_RULES,
    # Qwen-Image-Edit's pipeline takes a single image; size is not customisable and n is fixed at 1.
    "qwen-image-edit": replace(_EDIT_RULES, max_images=1, n_max=1, size_rule="auto", prompt_extend=False),
    "qwen-image": ModelRules(min_images=0, max_images=0, n_max=1, size_rule="fixed",
                             text_to_image_size=(1664, 928), prompt_extend=True, prompt_token_limit=800),
}

# The published weights: repository -> (family, licence).
EDIT_WEIGHTS = "Qwen/Qwen-Image-Edit-2511"
TEXT_TO_IMAGE_WEIGHTS = "Qwen/Qwen-Image-2512"
_WEIGHTS: dict[str, tuple[str, Licence]] = {
    "Qwen/Qwen-Image-Edit": ("qwen-image-edit", APACHE),
    EDIT_WEIGHTS: ("qwen-image-edit-plus", APACHE),
    TEXT_TO_IMAGE_WEIGHTS: ("qwen-image", APACHE),
    "Qwen/Qwen-Image-2.1": ("qwen-image-2.1", QWEN_RESEARCH),
}

# API name -> (rules key, default weights).
_BUILTIN: dict[str, tuple[str, str]] = {
    "qwen-image-edit": ("qwen-image-edit", "Qwen/Qwen-Image-Edit"),
    **{name: ("qwen-image-edit-plus", EDIT_WEIGHTS)
       for name in ("qwen-image-edit-plus", "qwen-image-edit-plus-2025-10-30", "qwen-image-edit-plus-2025-12-15",
                    "qwen-image-edit-max", "qwen-image-edit-max-2026-01-16")},
    **{name: ("qwen-image", TEXT_TO_IMAGE_WEIGHTS)
       for name in ("qwen-image", "qwen-image-plus", "qwen-image-plus-2026-01-09", "qwen-image-max",
                    "qwen-image-max-2025-12-30")},
    **{name: ("qwen-image-2.0", "Qwen/Qwen-Image-2.1")
       for name in ("qwen-image-2.0", "qwen-image-2.0-2026-03-03", "qwen-image-2.0-pro",
                    "qwen-image-2.0-pro-2026-03-03", "qwen-image-2.0-pro-2026-04-22",
                    "qwen-image-2.0-pro-2026-06-22")},
    "qwen-image-2.1-pro": ("qwen-image-2.1-pro", "Qwen/Qwen-Image-2.1"),
    "qwen-image-2.1-turbo": ("qwen-image-2.1-turbo", "Qwen/Qwen-Image-2.1"),
}

# Hosted names without open weights -> the name whose rules an alias of them follows.
CLOSED_MODELS: dict[str, str] = {"qwen-image-3.0": "qwen-image-3.0", "qwen-image-3.0-pro": "qwen-image-3.0"}
CLOSED_MODEL_STAND_IN = "qwen-image-2.1-pro"  # the closest open model: 2.1, text-to-image and edits


def _closed_model_hint(name: str) -> str:
    return (f"Model not exist: {name!r} has no open weights, so this server does not serve it unless asked to. "
            f"To answer it with the closest open model, start the server with `--alias {name}="
            f"{CLOSED_MODEL_STAND_IN}` (or QIS_MODEL_ALIASES='{{\"{name}\": \"{CLOSED_MODEL_STAND_IN}\"}}'); "
            f"with --preset apache that alias runs on Apache-2.0 weights.")


class ModelRegistry:
    """Looks up API model names; unknown or disabled names raise ``ModelNotFound``."""

    def __init__(self, specs: dict[str, ModelSpec]) -> None:
        self._specs = specs

    def get(self, name: str) -> ModelSpec:
        spec = self._specs.get(name)
        if spec is None:
            if name in CLOSED_MODELS:
                raise ModelNotFound(_closed_model_hint(name))
            raise ModelNotFound(f"Model not exist: {name!r} is not served here.")
        return spec

    def names(self) -> list[str]:
        return sorted(self._specs)

    def specs(self) -> list[ModelSpec]:
        return [self._specs[name] for name in self.names()]

    def names_sharing(self, spec: ModelSpec) -> list[str]:
        """The served names on the same weights as ``spec``, which share its limits."""
        return [name for name in self.names() if self._specs[name].source == spec.source]

    def non_commercial(self) -> list[ModelSpec]:
        """Served names whose weights (any of their variants) may not be used commercially."""
        return [spec for spec in self.specs() if any(not part.licence.commercial_use for part in spec.variants())]


def _spec(name: str, rules_key: str, source: str) -> ModelSpec:
    family_name, licence = _WEIGHTS[source]
    family = FAMILIES[family_name]
    return ModelSpec(name, family, source, _RULES[rules_key], family.steps, family.true_cfg_scale, licence)


def builtin_specs() -> dict[str, ModelSpec]:
    return {name: _spec(name, rules_key, source) for name, (rules_key, source) in _BUILTIN.items()}


def demo_specs(demo_dir: Path, apache: bool = False) -> dict[str, ModelSpec]:
    """Every built-in name served by its family's tiny offline model, with few steps; ``apache``: routed as the
    ``apache`` preset routes them."""
    return {name: _as_demo(spec, demo_dir) for name, spec in (apache_specs() if apache else builtin_specs()).items()}


def _as_demo(spec: ModelSpec, demo_dir: Path) -> ModelSpec:
    return replace(spec, source=str(demo_dir / spec.family.name), steps=DEMO_STEPS, licence=DEMO,
                   text_to_image=spec.text_to_image and _as_demo(spec.text_to_image, demo_dir))


def apache_only(specs: dict[str, ModelSpec], edit: ModelSpec, text_to_image: ModelSpec) -> dict[str, ModelSpec]:
    """``specs`` with every name on weights that are not Apache-2.0 moved to ``edit`` (requests with images, at
    most as many as its family takes) and ``text_to_image`` (requests without); rules stay the name's own."""
    moved = {}
    for name, spec in specs.items():
        if spec.licence.commercial_use:
            moved[name] = spec
            continue
        rules = replace(spec.rules, max_images=min(spec.rules.max_images, edit.family.max_images))
        moved[name] = replace(edit, name=name, rules=rules,
                              text_to_image=replace(text_to_image, name=name, rules=rules))
    return moved


def apache_specs() -> dict[str, ModelSpec]:
    specs = builtin_specs()
    return apache_only(specs, specs["qwen-image-edit-plus"], specs["qwen-image"])


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
        unknown = set(table) - {"source", "steps", "true_cfg_scale", "licence"}
        if unknown:
            raise ValueError(f"model {name!r}: unknown keys {sorted(unknown)}")
        if "licence" in table:  # the operator's own weights: say what they may be used for
            licence_name = str(table.pop("licence"))
            table["licence"] = Licence(licence_name, commercial_use=licence_name == APACHE.name)
        result[name] = replace(base, name=name, family=family, text_to_image=None, **table)
    return result


def add_aliases(specs: dict[str, ModelSpec], aliases: dict[str, str]) -> dict[str, ModelSpec]:
    """Serves each alias with the named model; an alias of a closed hosted name keeps that name's rules."""
    result = dict(specs)
    for alias, target in aliases.items():
        if target not in specs:
            raise ValueError(f"model alias {alias!r} names {target!r}, which is not a model here")
        rules = _RULES[CLOSED_MODELS[alias]] if alias in CLOSED_MODELS else specs[target].rules
        rules = replace(rules, max_images=min(rules.max_images, specs[target].rules.max_images))
        variant = specs[target].text_to_image
        result[alias] = replace(specs[target], name=alias, rules=rules,
                                text_to_image=variant and replace(variant, name=alias, rules=rules))
    return result


def load_registry(preset: str, demo_dir: Path, config_path: Path | None, enabled: list[str] | None,
                  aliases: dict[str, str] | None = None) -> ModelRegistry:
    specs = {"demo": lambda: demo_specs(demo_dir), "real": builtin_specs, "apache": apache_specs}[preset]()
    if config_path is not None:
        specs = apply_config(specs, tomllib.loads(config_path.read_text()))
    specs = add_aliases(specs, aliases or {})
    if enabled is not None:
        missing = sorted(set(enabled) - set(specs))
        if missing:
            raise ValueError(f"enabled_models names unknown models: {missing}")
        specs = {name: specs[name] for name in enabled}
    return ModelRegistry(specs)
