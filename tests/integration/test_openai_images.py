"""The official ``openai`` SDK against a real server on loopback: OpenAI's images API over our models."""

from __future__ import annotations

import base64
import io
import time

import httpx
import openai
import pytest
import time_machine
from PIL import Image

from qwen_image_server.settings import RateLimit
from tests.conftest import free_socket, png_bytes, serving

T2I = "qwen-image-2.0"  # fast at 512x512 on CPU, n up to 6, and edits with up to 3 images


def client_for(server, key=None) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key or server.key, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def client(server):
    with client_for(server) as sdk:
        yield sdk


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def fetched(url: str) -> tuple[Image.Image, str]:
    reply = httpx.get(url, timeout=30)
    assert reply.status_code == 200
    return Image.open(io.BytesIO(reply.content)), reply.headers["content-type"]


def upload(name: str, size: tuple[int, int]) -> tuple[str, bytes, str]:
    return name, png_bytes(size), "image/png"


def mask_png(size: tuple[int, int], transparent_box: tuple[int, int, int, int]) -> tuple[str, bytes, str]:
    """OpenAI's convention: opaque everywhere but the fully transparent box to edit."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), transparent_box)
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return "mask.png", buffer.getvalue(), "image/png"


def test_generation_answers_urls_by_default(client):
    started = time.time()
    response = client.images.generate(model=T2I, prompt="a lighthouse at dusk", size="512x512", n=2)
    assert int(started) <= response.created <= time.time() + 1
    assert (response.size, response.output_format, len(response.data)) == ("512x512", "png", 2)
    for item in response.data:
        assert item.b64_json is None and item.revised_prompt is None
        image, content_type = fetched(item.url)
        assert (image.format, image.size, content_type) == ("PNG", (512, 512), "image/png")


def test_generation_in_b64_json_with_a_seed_is_reproducible(client):
    first, second = (client.images.generate(model=T2I, prompt="a red fox", size="512x512", extra_body={"seed": 11},
                                            response_format="b64_json") for _ in range(2))
    assert first.data[0].url is None
    assert first.data[0].b64_json == second.data[0].b64_json
    assert decoded(first.data[0].b64_json).size == (512, 512)


@pytest.mark.parametrize("output_format, pillow_format, content_type", [
    ("jpeg", "JPEG", "image/jpeg"), ("webp", "WEBP", "image/webp")])
def test_output_format_applies_to_urls_and_b64(client, output_format, pillow_format, content_type):
    by_url = client.images.generate(model=T2I, prompt="a kite", size="512x512", output_format=output_format,
                                    output_compression=60)
    image, served_as = fetched(by_url.data[0].url)
    assert (by_url.output_format, image.format, served_as) == (output_format, pillow_format, content_type)
    inline = client.images.generate(model=T2I, prompt="a kite", size="512x512", output_format=output_format,
                                    response_format="b64_json")
    assert decoded(inline.data[0].b64_json).format == pillow_format


def test_prompt_extension_is_an_opt_in_that_reports_the_revised_prompt(client):
    response = client.images.generate(model=T2I, prompt="a boat", size="512x512", extra_body={"prompt_extend": True})
    assert response.data[0].revised_prompt


def test_edit_with_one_image(client):
    response = client.images.edit(model="qwen-image-edit-plus", image=upload("dog.png", (640, 480)),
                                  prompt="make it blue", size="512x512", response_format="b64_json")
    assert response.size == "512x512"
    assert decoded(response.data[0].b64_json).size == (512, 512)


def test_edit_with_several_images_follows_the_last_one(client):
    response = client.images.edit(model=T2I, image=[upload("a.png", (512, 512)), upload("b.png", (768, 512))],
                                  prompt="the cat from image 1 in image 2", size="768x512")
    image, _ = fetched(response.data[0].url)
    assert image.size == (768, 512)


@pytest.mark.parametrize("model, expected_size", [("qwen-image", (1024, 1024)), ("qwen-image-edit", (1024, 1024))])
def test_a_mask_inpaints_with_the_family_inpainting_pipeline(client, model, expected_size):
    response = client.images.edit(model=model, image=upload("room.png", (512, 512)),
                                  mask=mask_png((512, 512), (0, 0, 256, 512)), prompt="a window",
                                  response_format="b64_json", output_format="webp")
    image = decoded(response.data[0].b64_json)
    assert (image.format, image.size) == ("WEBP", expected_size)


def expect_error(error_type, message_part, call, param=None):
    with pytest.raises(error_type) as caught:
        call()
    body = caught.value.body
    assert set(body) == {"message", "type", "param", "code"}, body
    assert message_part.lower() in body["message"].lower(), body
    if param is not None:
        assert body["param"] == param
    return caught.value


def test_a_mask_on_a_family_without_inpainting_names_those_with_it(client):
    error = expect_error(openai.BadRequestError, "models that inpaint with a mask: qwen-image",
                         lambda: client.images.edit(model="qwen-image-edit-plus", image=upload("a.png", (512, 512)),
                                                    mask=mask_png((512, 512), (0, 0, 8, 8)), prompt="x"),
                         param="mask")
    assert error.type == "invalid_request_error" and error.code == "InvalidParameter"


@pytest.mark.parametrize("mask, message", [
    (mask_png((400, 400), (0, 0, 8, 8)), "must match the image's size (512x512)"),
    (mask_png((512, 512), (0, 0, 0, 0)), "marks no pixel to edit"),
])
def test_a_mask_must_fit_the_image_and_mark_something(client, mask, message):
    expect_error(openai.BadRequestError, message, lambda: client.images.edit(
        model="qwen-image", image=upload("a.png", (512, 512)), mask=mask, prompt="x"), param="mask")


def test_a_bad_key_is_an_authentication_error(server):
    with client_for(server, key="sk-wrong") as sdk:
        error = expect_error(openai.AuthenticationError, "invalid api-key",
                             lambda: sdk.images.generate(model=T2I, prompt="x"))
    assert error.type == "authentication_error"


def test_unknown_and_missing_models_list_the_served_names(client):
    error = expect_error(openai.NotFoundError, "models served here:",
                         lambda: client.images.generate(model="dall-e-3", prompt="x"), param="model")
    assert "qwen-image-2.0" in error.message and "qwen-image-edit-plus" in error.message
    assert error.code == "model_not_found"
    expect_error(openai.BadRequestError, "model is required", lambda: client.images.generate(prompt="x"),
                 param="model")


@pytest.mark.parametrize("model, size, message", [
    (T2I, "512*512", "must look like '1024x1024'"), (T2I, "64x64", "512x512 to 2048x2048"),
    ("qwen-image", "1024x1024", "one of 1664x928, 1472x1104")])
def test_bad_sizes_are_explained_in_openai_notation(client, model, size, message):
    expect_error(openai.BadRequestError, message, lambda: client.images.generate(model=model, prompt="x", size=size),
                 param="size")


def test_bad_parameters_are_invalid_requests_naming_the_parameter(client):
    expect_error(openai.BadRequestError, "n must be between 1 and 6",
                 lambda: client.images.generate(model=T2I, prompt="x", size="512x512", n=7), param="n")
    expect_error(openai.BadRequestError, "blank", lambda: client.images.generate(model=T2I, prompt="  "),
                 param="prompt")
    expect_error(openai.BadRequestError, "response_format", lambda: client.images.generate(
        model=T2I, prompt="x", extra_body={"response_format": "gif"}), param="response_format")
    expect_error(openai.BadRequestError, "jpeg and webp", lambda: client.images.generate(
        model=T2I, prompt="x", output_compression=50), param="output_compression")
    expect_error(openai.BadRequestError, "prompt", lambda: client.images.edit(
        model=T2I, image=upload("a.png", (64, 64)), prompt=""), param="prompt")


def test_too_many_images(client):
    expect_error(openai.BadRequestError, "1 to 3 image(s); got 4", lambda: client.images.edit(
        model="qwen-image-edit-plus", image=[upload(f"{i}.png", (64, 64)) for i in range(4)], prompt="x"),
        param="image")


def test_an_edit_needs_an_image_that_decodes(client):
    expect_error(openai.BadRequestError, "unsupported image format", lambda: client.images.edit(
        model=T2I, image=("notes.txt", b"not an image", "text/plain"), prompt="x"))


def test_an_oversize_body_is_413_in_openai_shape(client, server):
    too_big = ("big.png", b"\0" * (server.settings.max_request_bytes + 1), "image/png")
    error = expect_error(openai.APIStatusError, "payload too large", lambda: client.images.edit(
        model=T2I, image=too_big, prompt="x"))
    assert error.status_code == 413 and error.code == "BadRequest.TooLarge"


def test_unknown_paths_under_v1_answer_in_openai_shape(server):
    reply = httpx.get(server.url + "/v1/models/nothing-here", headers={"Authorization": f"Bearer {server.key}"})
    assert reply.status_code == 404
    assert reply.json()["error"]["type"] == "not_found_error"


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory, demo_models_dir):
    with serving(tmp_path_factory.mktemp("openai-limited"), demo_models_dir, free_socket(), enabled_models=[T2I],
                 rate_limits={"*": RateLimit(per_second=2)}) as running:
        yield running


def test_over_the_rate_limit_is_a_rate_limit_error_with_retry_after(limited_server):
    errors = []
    with client_for(limited_server) as sdk, time_machine.travel(time.time(), tick=True) as clock:
        clock.shift(1.1)  # past any earlier window of this key, without sleeping through it
        for _ in range(3):
            with pytest.raises(openai.APIStatusError) as caught:
                sdk.images.generate(model=T2I, prompt="x", size="64x64")
            errors.append(caught.value)
    assert [type(error) for error in errors] == [openai.BadRequestError] * 2 + [openai.RateLimitError]
    assert errors[2].type == "rate_limit_error" and errors[2].code == "Throttling.RateQuota"
    assert int(errors[2].response.headers["Retry-After"]) >= 1
