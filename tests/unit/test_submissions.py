"""api/submissions.py's pure parts: which jobs may share a pipeline call, and which models take a mask."""

from __future__ import annotations

import pytest

from qwen_image_server.api.submissions import PreparedJob, check_mask_support
from qwen_image_server.engine.registry import ModelRegistry, builtin_specs
from qwen_image_server.engine.rules import check_seed
from qwen_image_server.errors import InvalidParameter
from qwen_image_server.tasks.models import Job

SPECS = builtin_specs()
REGISTRY = ModelRegistry(SPECS)


def prepared(model: str, inputs: list[bytes]) -> PreparedJob:
    return PreparedJob(SPECS[model], Job(model=model, prompt="p", width=512, height=512, seed=1, n=2), inputs)


def test_text_to_image_jobs_of_a_batching_family_share_a_key():
    assert prepared("qwen-image-2.0", []).batch_key == "qwen-image-2.0|512x512|n=2"


def test_jobs_with_input_images_never_batch():
    """The batching pipelines would give every job of a batch the first job's images."""
    assert prepared("qwen-image-2.0", [b"image"]).batch_key is None


def test_families_that_cannot_batch_prompts_never_batch():
    assert prepared("qwen-image-edit-plus", []).batch_key is None


def test_a_mask_needs_a_family_with_an_inpainting_pipeline():
    check_mask_support(SPECS["qwen-image"], REGISTRY, 1)
    check_mask_support(SPECS["qwen-image-edit"], REGISTRY, 1)
    takers = "models that inpaint with a mask: qwen-image, qwen-image-edit,"
    with pytest.raises(InvalidParameter, match=takers) as caught:
        check_mask_support(SPECS["qwen-image-2.0"], REGISTRY, 1)
    assert caught.value.param == "mask"


def test_a_mask_goes_with_exactly_one_image():
    with pytest.raises(InvalidParameter, match="exactly one image; got 2"):
        check_mask_support(SPECS["qwen-image"], REGISTRY, 2)


def test_seeds_are_random_when_absent_and_bounded_when_given():
    assert 0 <= check_seed(None) <= 2**31 - 1
    with pytest.raises(InvalidParameter, match="seed"):
        check_seed(2**31)
