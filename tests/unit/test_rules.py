import pytest

from qwen_image_server.engine.registry import builtin_specs
from qwen_image_server.engine.rules import parse_size, round_to_multiple, size_for_aspect
from qwen_image_server.errors import InvalidParameter

SPECS = builtin_specs()


def rules(name):
    return SPECS[name].rules


@pytest.mark.parametrize("text, expected", [("1024*768", (1024, 768)), (" 512 * 640 ", (512, 640))])
def test_parse_size_accepts_width_star_height(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["1024x1024", "1024", "a*b", "0*512", "-1*5", "1024*1024*2", "",
                                  "\uff15\uff11\uff12*512", "512*\u0665\u0661\u0662", "\u00b2*512",
                                  "512\t*512", "512*512\n"])
def test_parse_size_rejects_other_shapes(text):
    with pytest.raises(InvalidParameter):
        parse_size(text)


def test_edit_sizes_round_to_multiples_of_16_like_the_hosted_api():
    assert rules("qwen-image-edit-plus").output_size(parse_size("1033*1032"), None, 16) == (1040, 1024)


def test_edit_plus_checks_each_side():
    edit = rules("qwen-image-edit-plus")
    assert edit.output_size(parse_size("512*2048"), None, 16) == (512, 2048)
    for bad in ("511*1024", "1024*2049", "3072*1024"):
        with pytest.raises(InvalidParameter, match="width and height"):
            edit.output_size(parse_size(bad), None, 16)


def test_qwen_image_2_checks_total_pixels_only():
    two = rules("qwen-image-2.0-pro")
    assert two.output_size(parse_size("3072*1024"), None, 32) == (3072, 1024)
    with pytest.raises(InvalidParameter, match="total pixels"):
        two.output_size(parse_size("4096*2048"), None, 32)
    with pytest.raises(InvalidParameter, match="total pixels"):
        two.output_size(parse_size("256*256"), None, 32)


def test_text_to_image_models_take_only_the_five_fixed_sizes():
    plus = rules("qwen-image-plus")
    assert plus.output_size(None, None, 16) == (1664, 928)
    assert plus.output_size(parse_size("1328*1328"), None, 16) == (1328, 1328)
    with pytest.raises(InvalidParameter, match="one of"):
        plus.output_size(parse_size("1024*1024"), None, 16)


def test_without_size_edits_follow_the_last_image_at_about_one_megapixel():
    width, height = rules("qwen-image-edit-plus").output_size(None, (2000, 1000), 16)
    assert width % 16 == 0 and height % 16 == 0
    assert abs(width / height - 2.0) < 0.05
    assert 0.95 < width * height / 1024**2 < 1.05


def test_qwen_image_edit_ignores_size_because_it_is_not_customisable():
    edit = rules("qwen-image-edit")
    assert edit.requested_size("not a size") is None
    assert edit.output_size((512, 512), (1024, 1024), 16) == (1024, 1024)


def test_requested_size_takes_openai_separator():
    assert rules("qwen-image-2.0").requested_size("768x512", "x") == (768, 512)
    with pytest.raises(InvalidParameter, match="1024x1024"):
        rules("qwen-image-2.0").requested_size("768*512", "x")


def test_n_rules():
    rules("qwen-image-edit-plus").check_n(6)
    with pytest.raises(InvalidParameter, match="between 1 and 6"):
        rules("qwen-image-edit-plus").check_n(7)
    with pytest.raises(InvalidParameter, match="num_images_per_prompt must be 1"):
        rules("qwen-image-max").check_n(2)


def test_image_count_rules():
    rules("qwen-image-2.0").check_image_count(0)
    rules("qwen-image-edit-plus").check_image_count(3)
    with pytest.raises(InvalidParameter, match="1 to 3"):
        rules("qwen-image-edit-plus").check_image_count(4)
    with pytest.raises(InvalidParameter, match="1 to 3"):
        rules("qwen-image-edit-plus").check_image_count(0)
    with pytest.raises(InvalidParameter, match="text only"):
        rules("qwen-image").check_image_count(1)
    with pytest.raises(InvalidParameter, match="exactly 1"):
        rules("qwen-image-edit").check_image_count(2)


def test_rounding_helpers():
    assert round_to_multiple(8, 16) == 16
    assert size_for_aspect(1, 1, 1024 * 1024, 32) == (1024, 1024)


def test_prompts_are_bounded_in_characters_well_beyond_their_token_limit():
    edit = rules("qwen-image-edit-plus")
    assert edit.prompt_character_limit == 8 * edit.prompt_token_limit
    assert edit.bound_prompt("x" * 30_000_000) == "x" * edit.prompt_character_limit
    assert edit.bound_prompt("a cat in a hat") == "a cat in a hat"
