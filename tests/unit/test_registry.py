from pathlib import Path

import pytest

from qwen_image_server.engine.registry import DEMO_STEPS, load_registry
from qwen_image_server.errors import ModelNotFound


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_builtin_names_map_to_the_documented_families_and_weights():
    registry = load_registry("real", Path("/unused"), None, None)
    expectations = {
        "qwen-image-edit": ("QwenImageEditPipeline", "Qwen/Qwen-Image-Edit"),
        "qwen-image-edit-plus": ("QwenImageEditPlusPipeline", "Qwen/Qwen-Image-Edit-2511"),
        "qwen-image-edit-plus-2025-10-30": ("QwenImageEditPlusPipeline", "Qwen/Qwen-Image-Edit-2511"),
        "qwen-image-edit-max": ("QwenImageEditPlusPipeline", "Qwen/Qwen-Image-Edit-2511"),
        "qwen-image": ("QwenImagePipeline", "Qwen/Qwen-Image-2512"),
        "qwen-image-plus": ("QwenImagePipeline", "Qwen/Qwen-Image-2512"),
        "qwen-image-max": ("QwenImagePipeline", "Qwen/Qwen-Image-2512"),
        "qwen-image-2.0": ("QwenImage21Pipeline", "Qwen/Qwen-Image-2.1"),
        "qwen-image-2.0-pro-2026-06-22": ("QwenImage21Pipeline", "Qwen/Qwen-Image-2.1"),
    }
    for name, (pipeline_class, source) in expectations.items():
        spec = registry.get(name)
        assert (spec.family.pipeline_class, spec.source) == (pipeline_class, source), name


def test_unknown_model_is_model_not_found():
    with pytest.raises(ModelNotFound):
        load_registry("real", Path("/unused"), None, None).get("wan2.6-t2i")


def test_demo_preset_points_every_name_at_the_tiny_model_of_its_family(tmp_path):
    registry = load_registry("demo", tmp_path, None, None)
    for spec in registry.specs():
        assert spec.source == str(tmp_path / spec.family.name)
        assert spec.steps == DEMO_STEPS


def test_config_remaps_a_name_and_adds_a_new_one(tmp_path):
    config = write(tmp_path, """
[models."qwen-image-edit-plus"]
source = "Qwen/Qwen-Image-Edit-2509"

[models."my-edit"]
like = "qwen-image-edit-plus"
source = "/models/finetune"
steps = 30
true_cfg_scale = 3.5
""")
    registry = load_registry("real", tmp_path, config, None)
    assert registry.get("qwen-image-edit-plus").source == "Qwen/Qwen-Image-Edit-2509"
    mine = registry.get("my-edit")
    assert (mine.source, mine.steps, mine.true_cfg_scale) == ("/models/finetune", 30, 3.5)
    assert mine.family.pipeline_class == "QwenImageEditPlusPipeline"
    assert mine.rules.max_images == 3


def test_config_can_name_a_family_directly(tmp_path):
    config = write(tmp_path, '[models."t2i"]\nfamily = "qwen-image"\nsource = "/w"\n')
    assert load_registry("real", tmp_path, config, None).get("t2i").family.pipeline_class == "QwenImagePipeline"


@pytest.mark.parametrize("text, message", [
    ('[models."x"]\nsource = "/w"\n', "give 'like'"),
    ('[models."x"]\nfamily = "nope"\n', "unknown family"),
    ('[models."qwen-image"]\ncolour = "red"\n', "unknown keys"),
])
def test_config_mistakes_are_explained(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_registry("real", tmp_path, write(tmp_path, text), None)


def test_enabled_models_limit_what_is_served(tmp_path):
    registry = load_registry("demo", tmp_path, None, ["qwen-image-edit-plus"])
    assert registry.names() == ["qwen-image-edit-plus"]
    with pytest.raises(ModelNotFound):
        registry.get("qwen-image")
    with pytest.raises(ValueError, match="unknown models"):
        load_registry("demo", tmp_path, None, ["nope"])
