"""What the SDK's local-file path costs next to a data: URI, for the same image and edit.

A local path makes the SDK fetch an upload policy, POST the file to the server and send an ``oss://``
reference; a data: URI sends the bytes inside the JSON body. This times, in one run and alternating call
by call: the upload alone (getPolicy + form POST, through the SDK's own uploader) and a whole tiny edit
(``qwen-image-edit-plus`` demo model, 512x512 output) by each path. The input is a 1024x1024 PNG of noise
(about 3 MB), so the bytes matter.

    python bench/input_paths.py --runs 7
"""

from __future__ import annotations

import argparse
import base64
import statistics
import tempfile
import time
from pathlib import Path

import dashscope
import numpy as np
from dashscope import MultiModalConversation
from dashscope.utils.oss_utils import check_and_upload_local
from PIL import Image
from servers import free_port, start_server

from qwen_image_server.engine.demo_models import build_demo_models
from qwen_image_server.keys import KeyStore

MODEL = "qwen-image-edit-plus"


def noise_png(path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def edit(key: str, image: str) -> None:
    response = MultiModalConversation.call(api_key=key, model=MODEL, size="512*512", prompt_extend=False, seed=1,
                                           messages=[{"role": "user", "content": [{"image": image},
                                                                                  {"text": "make it blue"}]}])
    if response.status_code != 200:
        raise RuntimeError(f"{response.code}: {response.message}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        demo_dir = root / "demo-models"
        build_demo_models(demo_dir)
        image = root / "noise.png"
        noise_png(image)
        data_uri = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
        key = KeyStore(root / "data" / "server.db").create("bench")
        port = free_port()
        server = start_server(root / "data", demo_dir, port, MODEL, {"QIS_RATE_LIMITS_ENABLED": "false"})
        dashscope.base_http_api_url = f"http://127.0.0.1:{port}/api/v1"
        try:
            edit(key, data_uri)  # warm-up: first pipeline call
            upload, by_path, by_uri = [], [], []
            for _ in range(args.runs):
                upload.append(timed(lambda: check_and_upload_local(MODEL, str(image), key)))
                by_path.append(timed(lambda: edit(key, str(image))))
                by_uri.append(timed(lambda: edit(key, data_uri)))
        finally:
            server.terminate()
            server.wait(timeout=60)
    size_mb = image_size_mb = len(data_uri) * 3 / 4 / 1e6
    print(f"input: 1024x1024 noise PNG, {image_size_mb:.2f} MB; {args.runs} runs each, alternating\n")
    print("| path | median (s) | min (s) |")
    print("|---|---|---|")
    for name, times in (("upload alone (getPolicy + form POST)", upload), ("edit, local file", by_path),
                        ("edit, data: URI", by_uri)):
        print(f"| {name} | {statistics.median(times):.3f} | {min(times):.3f} |")
    ratio = statistics.median(by_path) / statistics.median(by_uri)
    print(f"\nlocal file / data: URI, whole edit: {ratio:.3f} (input {size_mb:.2f} MB)")


if __name__ == "__main__":
    main()
