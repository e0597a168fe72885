"""Median latency of one tiny edit: a bare diffusers pipeline call vs. the same job through the server.

Both sides run the same demo model, inputs, size, steps and seed, alternating call by call in one run
so machine noise hits both alike. Each side is a fresh subprocess started with the same environment
(the bare side is this script in ``--bare-worker`` mode), because CPU inference speed varies from one
process to another with glibc malloc's state (the tiny VAE allocates 1 GiB attention matrices). Where
jemalloc is installed (Debian's ``libjemalloc2``) both sides preload it, which removes that variation.
The server (``qwen-image-server serve``) is called with the official ``dashscope`` SDK; its peak
resident memory is read from /proc at the end.

    python bench/edit_latency.py --runs 7
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dashscope
import torch
from diffusers import QwenImageEditPlusPipeline
from PIL import Image
from servers import ENVIRONMENT, JEMALLOC, free_port, start_server

from qwen_image_server.engine.demo_models import build_demo_models
from qwen_image_server.engine.registry import DEMO_STEPS
from qwen_image_server.keys import KeyStore

MODEL = "qwen-image-edit-plus"
PROMPT = "make the sky purple"
SIZE = 512
SEED = 42


def input_image() -> Image.Image:
    return Image.linear_gradient("L").resize((SIZE, SIZE)).convert("RGB")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bare_worker(demo_dir: Path) -> None:
    """Loads the pipeline, then runs one bare call per line read from stdin, answering each line."""
    pipeline = QwenImageEditPlusPipeline.from_pretrained(demo_dir / MODEL, dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    image = input_image()
    print("ready", flush=True)
    for _ in sys.stdin:
        pipeline(image=[image], prompt=PROMPT, negative_prompt=" ", true_cfg_scale=4.0, width=SIZE, height=SIZE,
                 num_inference_steps=DEMO_STEPS, generator=[torch.Generator("cpu").manual_seed(SEED)])
        print("done", flush=True)


def start_bare_worker(demo_dir: Path) -> subprocess.Popen:
    command = [sys.executable, __file__, "--bare-worker", str(demo_dir)]
    process = subprocess.Popen(command, env=ENVIRONMENT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--bare-worker", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.bare_worker:
        bare_worker(arguments.bare_worker)
        return

    with tempfile.TemporaryDirectory() as scratch:
        demo_dir = Path(os.environ.get("QIS_DEMO_MODELS_DIR", Path(scratch) / "demo-models"))
        build_demo_models(demo_dir)
        data_dir = Path(scratch) / "data"
        key = KeyStore(data_dir / "server.db").create("bench")
        port = free_port()
        server = start_server(data_dir, demo_dir, port, MODEL)
        worker = start_bare_worker(demo_dir)
        dashscope.base_http_api_url = f"http://127.0.0.1:{port}/api/v1"
        try:
            buffer = io.BytesIO()
            input_image().save(buffer, format="PNG")
            data_uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

            def bare() -> None:
                assert worker.stdin is not None and worker.stdout is not None
                worker.stdin.write("go\n")
                worker.stdin.flush()
                worker.stdout.readline()

            def served() -> None:
                response = dashscope.MultiModalConversation.call(
                    api_key=key, model=MODEL, size=f"{SIZE}*{SIZE}", seed=SEED, prompt_extend=False,
                    messages=[{"role": "user", "content": [{"image": data_uri}, {"text": PROMPT}]}])
                if response.status_code != 200:
                    raise RuntimeError(f"{response.code}: {response.message}")

            bare(), served()  # warm-up
            timings: dict[str, list[float]] = {"bare pipeline": [], "server + SDK": []}
            for _ in range(arguments.runs):
                for name, call in (("bare pipeline", bare), ("server + SDK", served)):
                    started = time.perf_counter()
                    call()
                    timings[name].append(time.perf_counter() - started)
            peak = peak_rss_mib(server.pid)
        finally:
            for process in (server, worker):
                process.terminate()
                process.wait(timeout=60)

    bare_median = statistics.median(timings["bare pipeline"])
    served_median = statistics.median(timings["server + SDK"])
    print(f"tiny edit ({MODEL} demo, {SIZE}x{SIZE}, {DEMO_STEPS} steps, true CFG), "
          f"{arguments.runs} runs each, alternating, {torch.get_num_threads()} torch threads per process\n")
    print("| path | median s | min s | max s |")
    print("|---|---|---|---|")
    for name, values in timings.items():
        print(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |")
    print(f"\nratio server/bare (medians): {served_median / bare_median:.3f}")
    print(f"server peak RSS: {peak:.0f} MiB")
    print(f"allocator: {'jemalloc (LD_PRELOAD), both sides' if JEMALLOC.exists() else 'glibc malloc'}")


if __name__ == "__main__":
    main()
