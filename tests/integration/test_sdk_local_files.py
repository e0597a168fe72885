"""Every SDK entry point that reaches these models, unchanged, including local files.

Local paths go through the SDK's own upload flow against our server: getPolicy, the OSS-style form
POST to the ``upload_host`` we name, then ``oss://`` references with the resolve header. The output
follows the aspect ratio of the last input image, which shows the server decoded the uploaded bytes.
"""

from __future__ import annotations

import asyncio

import dashscope
import httpx
import pytest
from dashscope import AioMultiModalConversation, MultiModalConversation
from dashscope.common.error import UploadFileException

from tests.conftest import png_bytes

EDIT_MODEL = "qwen-image-edit-plus"


pytestmark = pytest.mark.usefixtures("sdk_at_server")


def content(*images: str, text: str = "make it blue") -> list[dict[str, str]]:
    return [*({"image": image} for image in images), {"text": text}]


def messages(*images: str) -> list[dict]:
    return [{"role": "user", "content": content(*images)}]


def output_size(response) -> tuple[int, int]:
    assert response.status_code == 200, (response.code, response.message)
    return response.usage.width, response.usage.height


def test_file_uri_and_bare_path_are_uploaded_and_used(server, tmp_path):
    wide = tmp_path / "wide photo.png"
    wide.write_bytes(png_bytes((1024, 512)))
    tall = tmp_path / "tall.png"
    tall.write_bytes(png_bytes((512, 1024), (20, 90, 200)))

    by_uri = MultiModalConversation.call(api_key=server.key, model=EDIT_MODEL, messages=messages(wide.as_uri()),
                                         prompt_extend=False)
    by_path = MultiModalConversation.call(api_key=server.key, model=EDIT_MODEL,
                                          messages=messages(str(wide), str(tall)), prompt_extend=False)

    width, height = output_size(by_uri)
    assert width > height
    width, height = output_size(by_path)
    assert height > width  # the last image, uploaded from a bare path, sets the aspect ratio


def test_aio_client_uploads_local_files(server, tmp_path):
    path = tmp_path / "aio.png"
    path.write_bytes(png_bytes((768, 512)))

    async def edit():
        try:
            return await AioMultiModalConversation.call(api_key=server.key, model=EDIT_MODEL,
                                                        messages=messages(str(path)), size="512*512",
                                                        prompt_extend=False)
        finally:
            await dashscope.close_shared_aio_session()  # the SDK's pooled session belongs to this event loop

    response = asyncio.run(edit())
    assert output_size(response) == (512, 512)
    [item] = response.output.choices[0].message.content
    assert httpx.get(item["image"], timeout=30).status_code == 200


def test_two_local_files_with_one_name_in_one_call_fail_clearly(server, tmp_path):
    """The SDK keys uploads by basename under one policy; OSS refuses the overwrite, and so do we."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "same.png", tmp_path / "b" / "same.png"
    first.write_bytes(png_bytes((512, 512)))
    second.write_bytes(png_bytes((512, 512), (0, 0, 0)))
    with pytest.raises(UploadFileException, match="FileAlreadyExists"):
        MultiModalConversation.call(api_key=server.key, model=EDIT_MODEL, messages=messages(str(first), str(second)))


def test_the_same_local_file_twice_in_one_call_works(server, tmp_path):
    path = tmp_path / "twice.png"
    path.write_bytes(png_bytes((512, 512)))
    response = MultiModalConversation.call(api_key=server.key, model=EDIT_MODEL,
                                           messages=messages(str(path), str(path)), size="512*512",
                                           prompt_extend=False)
    assert output_size(response) == (512, 512)


def test_missing_local_file_is_refused_by_the_sdk_before_any_request(server):
    with pytest.raises(dashscope.common.error.InvalidInput):
        MultiModalConversation.call(api_key=server.key, model=EDIT_MODEL,
                                    messages=messages("file:///no/such/file.png"))


def test_sdk_v2_client_generates_through_the_task_api(server):
    """``Client.images.generate`` routes qwen-image names to text2image/image-synthesis and polls."""
    client = dashscope.Client(api_key=server.key, base_url=f"{server.url}/api/v1")
    job = client.images.generate(model="qwen-image-2.0", prompt="a lighthouse at dusk", size="512x512",
                                 prompt_extend=False, seed=7, timeout=120)
    assert job.succeeded and job.status == "SUCCEEDED"
    [url] = job.image_urls
    reply = httpx.get(url, timeout=30)
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"


def test_sdk_v2_async_client_generates_through_the_task_api(server):
    async def generate():
        async with dashscope.AsyncClient(api_key=server.key, base_url=f"{server.url}/api/v1") as client:
            return await client.images.generate(model="qwen-image-2.0", prompt="a red kite", size="512x512",
                                                prompt_extend=False, timeout=120)

    job = asyncio.run(generate())
    assert job.succeeded and len(job.image_urls) == 1
