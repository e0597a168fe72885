"""The official ``dashscope`` SDK against a real server on loopback, as users call the hosted API."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from dashscope import MultiModalConversation
from PIL import Image

from tests.conftest import png_bytes

pytestmark = pytest.mark.usefixtures("sdk_at_server")


def call(server, model, content, **parameters):
    response = MultiModalConversation.call(
        api_key=server.key, model=model, messages=[{"role": "user", "content": content}], **parameters)
    assert response.status_code == 200, (response.code, response.message)
    return response


def images_of(response) -> list[Image.Image]:
    urls = [item["image"] for item in response.output.choices[0].message.content]
    images = []
    for url in urls:
        reply = httpx.get(url, timeout=30)
        assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"
        images.append(Image.open(io.BytesIO(reply.content)))
    return images


def test_edit_with_one_image_url(server, image_host):
    url = image_host.add("one.png", png_bytes((640, 480)))
    response = call(server, "qwen-image-edit-plus", [{"image": url}, {"text": "make it blue"}],
                    size="512*512", prompt_extend=False)
    choice = response.output.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert response.request_id
    assert (response.usage.width, response.usage.height, response.usage.image_count) == (512, 512, 1)
    [image] = images_of(response)
    assert image.size == (512, 512) and image.format == "PNG"


def test_edit_with_three_image_urls_follows_the_last_image_aspect(server, image_host):
    urls = [image_host.add(f"three-{i}.png", png_bytes(size)) for i, size in
            enumerate([(512, 512), (600, 400), (400, 800)])]
    response = call(server, "qwen-image-edit-plus",
                    [*({"image": url} for url in urls), {"text": "the cat from image 1 in image 3"}],
                    prompt_extend=False)
    [image] = images_of(response)
    width, height = image.size
    assert width % 16 == 0 and height % 16 == 0
    assert abs(width / height - 0.5) < 0.02
    assert 0.9 < width * height / 1024**2 < 1.1


def test_edit_with_a_data_uri(server):
    data_uri = "data:image/png;base64," + base64.b64encode(png_bytes((512, 384))).decode()
    response = call(server, "qwen-image-edit", [{"image": data_uri}, {"text": "add a hat"}])
    [image] = images_of(response)
    assert abs(image.size[0] / image.size[1] - 4 / 3) < 0.02


def test_text_to_image_uses_the_model_default_size(server):
    response = call(server, "qwen-image-plus", [{"text": "a lighthouse at dawn"}], prompt_extend=False)
    [image] = images_of(response)
    assert image.size == (1664, 928)


def test_text_to_image_on_qwen_image_2(server):
    response = call(server, "qwen-image-2.0-pro", [{"text": "a red fox"}], size="512*768", n=2,
                    prompt_extend=True)
    assert [image.size for image in images_of(response)] == [(512, 768), (512, 768)]


def test_n_two_gives_two_different_images(server, image_host):
    url = image_host.add("n2.png", png_bytes((512, 512)))
    response = call(server, "qwen-image-edit-max", [{"image": url}, {"text": "two takes"}], n=2,
                    size="512*512", seed=7, prompt_extend=False)
    first, second = images_of(response)
    assert response.usage.image_count == 2
    assert not np.array_equal(np.asarray(first), np.asarray(second))


def test_same_seed_gives_identical_pixels_and_another_seed_does_not(server, image_host):
    url = image_host.add("seed.png", png_bytes((512, 512)))

    def pixels(seed):
        response = call(server, "qwen-image-edit-plus", [{"image": url}, {"text": "seeded"}],
                        size="512*512", seed=seed, prompt_extend=False)
        return np.asarray(images_of(response)[0])

    first = pixels(1234)
    assert np.array_equal(first, pixels(1234))
    assert not np.array_equal(first, pixels(4321))


def test_size_is_rounded_to_multiples_of_16_and_honoured(server, image_host):
    url = image_host.add("size.png", png_bytes((512, 512)))
    response = call(server, "qwen-image-edit-plus", [{"image": url}, {"text": "resize"}], size="600*520",
                    prompt_extend=False)
    assert [image.size for image in images_of(response)] == [(608, 512)]
    assert (response.usage.width, response.usage.height) == (608, 512)


def test_watermark_marks_the_bottom_right_only(server, image_host):
    url = image_host.add("mark.png", png_bytes((512, 512)))

    def render(watermark):
        response = call(server, "qwen-image-edit-plus", [{"image": url}, {"text": "mark"}], size="512*512",
                        seed=99, watermark=watermark, prompt_extend=False)
        return np.asarray(images_of(response)[0]).astype(int)

    plain, marked = render(False), render(True)
    assert np.array_equal(plain[:256, :256], marked[:256, :256])
    assert np.abs(plain[-64:, -200:] - marked[-64:, -200:]).sum() > 1000


def test_sdk_sees_errors_in_the_hosted_shape(server):
    response = MultiModalConversation.call(api_key=server.key, model="no-such-model",
                                           messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert (response.status_code, response.code) == (404, "ModelNotFound")
    assert response.request_id and response.message


def test_sdk_with_a_wrong_key_gets_invalid_api_key(server):
    response = MultiModalConversation.call(api_key="sk-wrong", model="qwen-image-plus",
                                           messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert (response.status_code, response.code) == (401, "InvalidApiKey")
