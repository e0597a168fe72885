"""api/submissions.py's pure parts: which jobs may share a pipeline call, and which models take a mask."""

from __future__ import annotations

import pytest
from PIL import Image

from qwen_image_server.api.submissions import PreparedJob, check_mask_support
from qwen_image_server.engine.registry import ModelRegistry, builtin_specs
from qwen_image_server.engine.rules import check_seed
from qwen_image_server.errors import InvalidParameter
from qwen_image_server.tasks.models import Job

SPECS = builtin_specs()
REGISTRY = ModelRegistry(SPECS)


def prepared(model: str, sizes: list[tuple[int, int]], n: int = 2, masked: bool = False) -> PreparedJob:
    job = Job(model=model, prompt="p", width=512, height=512, seed=1, n=n)
    if masked:
        job.mask = Image.new("L", (512, 512))
    return PreparedJob(SPECS[model], job, [b"image"] * len(sizes), sizes)


def test_names_on_the_same_plan_share_a_key_and_the_key_follows_what_lines_up_in_the_transformer():
    assert prepared("qwen-image-2.0", []).batch_key == prepared("qwen-image-2.0-pro", []).batch_key
    edit = prepared("qwen-image-edit-plus", [(800, 600)]).batch_key
    assert edit is not None
    assert edit == prepared("qwen-image-edit-max", [(1600, 1200)]).batch_key, "same aspect: same latent shape"
    assert edit != prepared("qwen-image-edit-plus", [(600, 800)]).batch_key
    assert edit != prepared("qwen-image-edit-plus", [(800, 600), (800, 600)]).batch_key
    assert edit != prepared("qwen-image-edit-plus", [(800, 600)], n=1).batch_key
    assert prepared("qwen-image-2.0", []).batch_key != prepared("qwen-image", []).batch_key


def test_masked_jobs_never_batch():
    assert prepared("qwen-image", [(512, 512)], masked=True).batch_key is None


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


def test_prompt_extension_is_asked_only_of_models_that_offer_it():
    from qwen_image_server.api.submissions import JobRequest, job_for

    request = JobRequest(prompt="a dog", prompt_extend=True)
    assert job_for(SPECS["qwen-image-edit-plus"], request, 1, 1, (512, 512)).prompt_extend
    assert not job_for(SPECS["qwen-image-edit"], request, 1, 1, (512, 512)).prompt_extend
