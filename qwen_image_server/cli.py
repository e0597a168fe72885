"""The ``qwen-image-server`` command: ``serve``, ``edit``, ``generate``, ``keys create|list|revoke``,
``demo-models``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from qwen_image_server.settings import Settings


def _settings(arguments: argparse.Namespace, names: tuple[str, ...]) -> Settings:
    """Settings from the options given on the command line; the rest from ``QIS_*`` or defaults."""
    given: dict[str, Any] = {name: getattr(arguments, name) for name in names
                             if getattr(arguments, name, None) is not None}
    if "model_aliases" in given:
        given["model_aliases"] = dict(given["model_aliases"])
    return Settings(**given)


def _alias(text: str) -> tuple[str, str]:
    name, separator, model = text.partition("=")
    if not (separator and name and model):
        raise argparse.ArgumentTypeError(f"an alias is NAME=MODEL, got {text!r}")
    return name, model


def serve(arguments: argparse.Namespace) -> int:
    import uvicorn

    from qwen_image_server.api.connections import uvicorn_config
    from qwen_image_server.app import create_app
    from qwen_image_server.keys import KeyStore

    settings = _settings(arguments, ("host", "port", "preset", "models_config", "enabled_models", "model_aliases",
                                     "data_dir", "public_base_url", "device", "create_first_key", "api_docs"))
    keys = KeyStore(settings.database_path)
    if keys.count() == 0:
        if not settings.is_loopback and not settings.create_first_key:
            print(f"refusing to listen on {settings.host}: no API key exists. Create one with "
                  "`qwen-image-server keys create`, or pass --create-first-key to have it created and "
                  "printed (into the logs) at start.", file=sys.stderr)
            return 2
        print(f"No API key existed; created one (shown once, store it now):\n\n    {keys.create('first')}\n",
              flush=True)
    uvicorn.Server(uvicorn_config(create_app(settings), settings, log_level="info")).run()
    return 0


def create_key(arguments: argparse.Namespace) -> int:
    from qwen_image_server.keys import KeyStore

    settings = _settings(arguments, ("data_dir",))
    print(KeyStore(settings.database_path).create(arguments.name))
    return 0


def list_keys(arguments: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from qwen_image_server.keys import KeyStore

    settings = _settings(arguments, ("data_dir",))
    for key in KeyStore(settings.database_path).list():
        created = datetime.fromtimestamp(key.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        revoked = "" if key.revoked_at is None else "  revoked " + datetime.fromtimestamp(
            key.revoked_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        print(f"{key.id}  {key.name}  created {created}{revoked}")
    return 0


def revoke_key(arguments: argparse.Namespace) -> int:
    from qwen_image_server.keys import KeyStore
    from qwen_image_server.tasks.sqlite import SqliteTaskStore

    settings = _settings(arguments, ("data_dir",))
    if not KeyStore(settings.database_path).revoke(arguments.key_id):
        print(f"no working key has the id {arguments.key_id!r} (see `qwen-image-server keys list`)", file=sys.stderr)
        return 1
    canceled = SqliteTaskStore(settings.database_path).cancel_pending(arguments.key_id)
    print(f"revoked {arguments.key_id}; {canceled} pending task(s) canceled")
    return 0


def demo_models(arguments: argparse.Namespace) -> int:
    from qwen_image_server.engine.demo_models import build_demo_models

    settings = _settings(arguments, ("data_dir", "demo_models_dir"))
    for family, path in build_demo_models(settings.demo_models).items():
        print(f"{family}: {path}")
    return 0


def one_shot(arguments: argparse.Namespace) -> int:
    from qwen_image_server import oneshot
    from qwen_image_server.errors import ServiceError

    request = oneshot.Request(
        model=arguments.model, prompt=arguments.prompt, images=list(getattr(arguments, "images", [])),
        output=arguments.output, n=arguments.n, size=arguments.size, seed=arguments.seed,
        negative_prompt=arguments.negative_prompt, prompt_extend=arguments.prompt_extend,
        mask=getattr(arguments, "mask", None))
    try:
        if arguments.server:
            api_key = arguments.api_key or os.environ.get("DASHSCOPE_API_KEY")
            if not api_key:
                print("--server needs an API key: --api-key or DASHSCOPE_API_KEY.", file=sys.stderr)
                return 2
            paths = oneshot.run_on_server(request, arguments.server, api_key)
        else:
            settings = _settings(arguments, ("preset", "models_config", "data_dir", "device"))
            paths = oneshot.run_in_process(request, settings)
    except (ServiceError, OSError) as error:
        print(f"error: {getattr(error, 'message', None) or error}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


def _add_one_shot(commands: Any, name: str, default_model: str, help_text: str) -> argparse.ArgumentParser:
    command = commands.add_parser(name, help=help_text)
    command.add_argument("--prompt", "-p", required=True)
    command.add_argument("--output", "-o", type=Path, default=Path("output.png"),
                         help="where to write the image (.png, .jpg, .webp); several images get -1, -2, ...")
    command.add_argument("--model", "-m", default=default_model)
    command.add_argument("--n", type=int, default=1)
    command.add_argument("--size", help="W*H")
    command.add_argument("--seed", type=int)
    command.add_argument("--negative-prompt", dest="negative_prompt")
    command.add_argument("--prompt-extend", action="store_true", dest="prompt_extend",
                         help="rewrite the prompt with the model's language model first")
    command.add_argument("--server", help="a running server's base URL: submit there as a task instead")
    command.add_argument("--api-key", dest="api_key", help="for --server (default: $DASHSCOPE_API_KEY)")
    command.add_argument("--preset", choices=["demo", "real", "apache"],
                         help="in process: demo (tiny offline models), real or apache (Apache-2.0 weights only)")
    command.add_argument("--models-config", type=Path, dest="models_config")
    command.add_argument("--data-dir", type=Path, dest="data_dir")
    command.add_argument("--device", choices=["auto", "cpu", "cuda"])
    command.set_defaults(handler=one_shot)
    return command


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="qwen-image-server", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    run = commands.add_parser("serve", help="start the HTTP server")
    run.add_argument("--host")
    run.add_argument("--port", type=int)
    run.add_argument("--preset", choices=["demo", "real", "apache"],
                     help="demo: tiny offline models (noise); real: the published weights; apache: every name on "
                          "Apache-2.0 weights only")
    run.add_argument("--models-config", type=Path, dest="models_config", help="TOML model registry overrides")
    run.add_argument("--models", dest="enabled_models", type=lambda text: text.split(","),
                     help="comma-separated API model names to serve (default: all)")
    run.add_argument("--alias", dest="model_aliases", action="append", type=_alias, metavar="NAME=MODEL",
                     help="also serve NAME with MODEL's weights (repeatable), e.g. qwen-image-3.0=qwen-image-2.1-pro")
    run.add_argument("--data-dir", type=Path, dest="data_dir")
    run.add_argument("--public-base-url", dest="public_base_url")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"])
    run.add_argument("--create-first-key", action="store_true", default=None, dest="create_first_key",
                     help="beyond loopback, create and print the first API key when none exists, instead of "
                          "refusing to start (on loopback this is always done)")
    run.add_argument("--api-docs", action="store_true", default=None, dest="api_docs",
                     help="serve Swagger UI at /docs (a pinned release from a CDN; off by default)")
    run.set_defaults(handler=serve)

    edit = _add_one_shot(commands, "edit", "qwen-image-edit-plus", "edit 1-3 images once, with a progress bar")
    edit.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    edit.add_argument("--mask", type=Path, help="inpaint: a mask as large as the image, transparent (or white) "
                                                "where it is to be edited")
    _add_one_shot(commands, "generate", "qwen-image-2.0", "generate from text once, with a progress bar")

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command",
                                                                              required=True)
    create = keys.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", default="default")
    create.add_argument("--data-dir", type=Path, dest="data_dir")
    create.set_defaults(handler=create_key)
    listing = keys.add_parser("list", help="list the keys: id, name, when created or revoked (never the key)")
    listing.add_argument("--data-dir", type=Path, dest="data_dir")
    listing.set_defaults(handler=list_keys)
    revoke = keys.add_parser("revoke", help="stop a key at once: requests, upload policies, its pending tasks")
    revoke.add_argument("key_id", metavar="ID")
    revoke.add_argument("--data-dir", type=Path, dest="data_dir")
    revoke.set_defaults(handler=revoke_key)

    demo = commands.add_parser("demo-models", help="build the tiny offline demo models")
    demo.add_argument("--data-dir", type=Path, dest="data_dir")
    demo.add_argument("--dir", type=Path, dest="demo_models_dir")
    demo.set_defaults(handler=demo_models)
    return root


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    arguments = parser().parse_args(argv)
    return int(arguments.handler(arguments))


if __name__ == "__main__":
    sys.exit(main())
