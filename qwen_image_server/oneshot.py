"""One edit or generation from the command line, with a progress bar over the denoising steps.

In process, the request is prepared exactly as the API prepares one (``api/submissions.py``: model rules,
bounded prompts, the mask) and run by the same engine, without a server or a queue. With a server URL, it
is submitted as a task to a running server, whose progress is followed by polling the task, and the
results are downloaded.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image
from tqdm import tqdm

from qwen_image_server.api.submissions import JobRequest, checked_request, job_for, load_mask
from qwen_image_server.errors import InvalidParameter, ServiceError
from qwen_image_server.media.images import ImageLimits, decode_image, encode_image
from qwen_image_server.settings import Settings

GENERATION = "/api/v1/services/aigc/multimodal-generation/generation"
OPENAI_EDITS = "/v1/images/edits"


@dataclass(frozen=True)
class Request:
    model: str
    prompt: str
    images: list[Path]
    output: Path
    n: int = 1
    size: str | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    prompt_extend: bool = False
    mask: Path | None = None  # inpainting: white (or transparent) where the first image is to be edited

    def output_paths(self, count: int) -> list[Path]:
        """``OUT`` for one image; ``OUT-1``, ``OUT-2``, ... (same suffix) for several."""
        if count == 1:
            return [self.output]
        return [self.output.with_name(f"{self.output.stem}-{index}{self.output.suffix}")
                for index in range(1, count + 1)]


def run_in_process(request: Request, settings: Settings) -> list[Path]:
    """Loads only the requested model (building the demo models first on the demo preset), runs it, saves."""
    from qwen_image_server.engine.contract import EngineBatch, EngineJob, Progress
    from qwen_image_server.engine.demo_models import build_demo_models
    from qwen_image_server.engine.engine import Device, Engine
    from qwen_image_server.engine.registry import load_registry

    output_format = _format_of(request.output)
    if settings.preset == "demo":
        build_demo_models(settings.demo_models)
    registry = load_registry(settings.preset, settings.demo_models, settings.models_config, [request.model])
    spec = registry.get(request.model)
    job_request = JobRequest(
        prompt=request.prompt, images=[path.read_bytes() for path in request.images],
        mask=request.mask.read_bytes() if request.mask else None, n=request.n,
        size=spec.rules.requested_size(request.size), seed=request.seed, negative_prompt=request.negative_prompt,
        prompt_extend=request.prompt_extend, output_format=output_format)
    spec, n, seed = checked_request(spec, registry, job_request)
    limits = ImageLimits.from_settings(settings)
    images = [decode_image(data, limits) for data in job_request.images if isinstance(data, bytes)]
    last_size = images[-1].size if images else None
    job = job_for(spec, job_request, n, seed, last_size)
    job.images = images
    if job_request.mask is not None:
        job.mask = load_mask(job_request.mask, last_size, limits)
    engine = Engine([spec.plan], Device.choose_all(settings.device, settings.cuda_devices)[0],
                    settings.prompt_extend_max_new_tokens)
    engine.load()
    engine_job = EngineJob(prompt=job.prompt, seed=job.seed, n=job.n, negative_prompt=job.negative_prompt,
                           images=job.images, mask=job.mask, prompt_extend=job.prompt_extend)
    with tqdm(total=spec.steps, unit="step", desc=spec.name) as bar:
        advance = _advance(bar)
        for event in engine.run(EngineBatch(spec.plan, job.width, job.height, [engine_job])):
            if isinstance(event, Progress):
                advance(event.step, event.total)
            else:
                [result] = event
    paths = request.output_paths(len(result.images))
    for path, image in zip(paths, result.images, strict=True):
        path.write_bytes(encode_image(image, output_format))
    return paths


def run_on_server(request: Request, server: str, api_key: str, poll_seconds: float = 0.25) -> list[Path]:
    """Submits an async task (the multimodal endpoint with ``X-DashScope-Async: enable``), follows its
    progress, and downloads its images (PNG, re-encoded when ``request.output`` asks for another format).

    With a mask, the request goes to the one endpoint that takes masks, OpenAI's image edits, which answers
    when done (no progress to follow)."""
    output_format = _format_of(request.output)
    if request.mask is not None:
        return _inpaint_on_server(request, request.mask, server, api_key, output_format)
    content = [{"image": _data_uri(path)} for path in request.images] + [{"text": request.prompt}]
    parameters = {"n": request.n, "size": request.size, "seed": request.seed,
                  "negative_prompt": request.negative_prompt, "prompt_extend": request.prompt_extend}
    body = {"model": request.model, "input": {"messages": [{"role": "user", "content": content}]},
            "parameters": {name: value for name, value in parameters.items() if value is not None}}
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=300) as client:
        created = client.post(GENERATION, json=body, headers={"X-DashScope-Async": "enable"})
        _raise_for_error(created)
        task_id = created.json()["output"]["task_id"]
        with tqdm(unit="step", desc=request.model) as bar:
            output = _follow(client, task_id, bar, poll_seconds)
        if output["task_status"] != "SUCCEEDED":
            raise ServiceError(f"task {task_id} {output['task_status']}: {output.get('code')}: "
                               f"{output.get('message')}")
        urls = [result["url"] for result in output["results"]]
        paths = request.output_paths(len(urls))
        for path, url in zip(paths, urls, strict=True):
            download = client.get(url)
            _raise_for_error(download)
            path.write_bytes(download.content if output_format == "png"
                             else encode_image(Image.open(io.BytesIO(download.content)), output_format))
    return paths


def _inpaint_on_server(request: Request, mask: Path, server: str, api_key: str, output_format: str) -> list[Path]:
    fields = {"model": request.model, "prompt": request.prompt, "n": str(request.n), "response_format": "b64_json",
              "output_format": output_format, "size": request.size.replace("*", "x") if request.size else None,
              "seed": None if request.seed is None else str(request.seed), "negative_prompt": request.negative_prompt}
    files = [("image", (path.name, path.read_bytes())) for path in request.images]
    files.append(("mask", (mask.name, mask.read_bytes())))
    with httpx.Client(base_url=server.rstrip("/"), headers={"Authorization": f"Bearer {api_key}"},
                      timeout=600) as client:
        reply = client.post(OPENAI_EDITS, data={name: value for name, value in fields.items() if value is not None},
                            files=files)
    if not reply.is_success:
        error = reply.json().get("error", {}) if reply.headers.get("content-type", "").startswith(
            "application/json") else {}
        raise ServiceError(f"HTTP {reply.status_code} {error.get('code')}: {error.get('message') or reply.text[:200]}")
    images = [base64.b64decode(item["b64_json"]) for item in reply.json()["data"]]
    paths = request.output_paths(len(images))
    for path, data in zip(paths, images, strict=True):
        path.write_bytes(data)
    return paths


def _follow(client: httpx.Client, task_id: str, bar: tqdm, poll_seconds: float) -> dict:
    advance = _advance(bar)
    while True:
        reply = client.get(f"/api/v1/tasks/{task_id}")
        _raise_for_error(reply)
        output = reply.json()["output"]
        progress = output.get("progress")
        if progress:
            advance(progress["step"], progress["total_steps"])
        if output["task_status"] in ("SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"):
            if output["task_status"] == "SUCCEEDED" and bar.total:
                bar.update(bar.total - bar.n)
            return output
        time.sleep(poll_seconds)


def _raise_for_error(reply: httpx.Response) -> None:
    if reply.is_success:
        return
    try:
        body = reply.json()
        message = f"{body.get('code')}: {body.get('message')}"
    except ValueError:
        message = reply.text[:200]
    raise ServiceError(f"HTTP {reply.status_code} {message}")


def _advance(bar: tqdm) -> Callable[[int, int], None]:
    def advance(step: int, total: int) -> None:
        bar.total = total
        bar.update(step - bar.n)

    return advance


def _data_uri(path: Path) -> str:
    return "data:application/octet-stream;base64," + base64.b64encode(path.read_bytes()).decode()


def _format_of(path: Path) -> str:
    formats = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
    if path.suffix.lower() not in formats:
        raise InvalidParameter(f"The output file must end in one of {', '.join(formats)}; got {path.name!r}.")
    return formats[path.suffix.lower()]
