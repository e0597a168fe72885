import re
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


def test_the_2026_names_are_served_on_qwen_image_21_with_their_own_rules():
    registry = load_registry("real", Path("/unused"), None, None)
    pro, turbo = registry.get("qwen-image-2.1-pro"), registry.get("qwen-image-2.1-turbo")
    assert pro.source == turbo.source == "Qwen/Qwen-Image-2.1"
    assert (pro.rules.max_images, pro.rules.max_aspect, pro.rules.negative_prompt) == (10, 8.0, False)
    assert turbo.rules.negative_prompt and not pro.licence.commercial_use


def test_the_closed_30_names_answer_how_to_serve_them_and_follow_their_rules_once_aliased():
    with pytest.raises(ModelNotFound, match=re.escape("--alias qwen-image-3.0=qwen-image-2.1-pro")):
        load_registry("real", Path("/unused"), None, None).get("qwen-image-3.0")
    registry = load_registry("real", Path("/unused"), None, None, {"qwen-image-3.0": "qwen-image-2.1-pro"})
    aliased = registry.get("qwen-image-3.0")
    assert aliased.source == "Qwen/Qwen-Image-2.1" and aliased.rules.max_images == 3
    with pytest.raises(ValueError, match="not a model here"):
        load_registry("real", Path("/unused"), None, None, {"qwen-image-3.0": "qwen-image-9"})


def test_the_apache_preset_leaves_no_name_on_restricted_weights():
    registry = load_registry("apache", Path("/unused"), None, None)
    assert registry.non_commercial() == []
    two = registry.get("qwen-image-2.0")
    assert (two.serving(1).source, two.serving(0).source) == ("Qwen/Qwen-Image-Edit-2511", "Qwen/Qwen-Image-2512")
    assert two.serving(0).rules == two.rules and two.rules.size_rule == "area"
    assert registry.get("qwen-image-edit-plus").text_to_image is None
    assert {spec.name for spec in load_registry("real", Path("/unused"), None, None).non_commercial()} >= {
        "qwen-image-2.0", "qwen-image-2.1-pro"}


def test_a_config_can_name_the_licence_of_its_own_weights(tmp_path):
    config = write(tmp_path, """
[models."in-house"]
like = "qwen-image-2.0"
source = "/models/in-house"
licence = "Apache-2.0"
""")
    spec = load_registry("real", tmp_path, config, None).get("in-house")
    assert spec.licence.commercial_use and spec.licence.name == "Apache-2.0"
