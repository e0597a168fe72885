"""The ``qwen-image-server`` command: ``serve``, ``keys create``, ``demo-models``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from qwen_image_server.settings import Settings


def _settings(arguments: argparse.Namespace, names: tuple[str, ...]) -> Settings:
    """Settings from the options given on the command line; the rest from ``QIS_*`` or defaults."""
    given: dict[str, Any] = {name: getattr(arguments, name) for name in names
                             if getattr(arguments, name, None) is not None}
    return Settings(**given)


def serve(arguments: argparse.Namespace) -> int:
    import uvicorn

    from qwen_image_server.app import create_app
    from qwen_image_server.keys import KeyStore

    settings = _settings(arguments, ("host", "port", "preset", "models_config", "enabled_models", "data_dir",
                                     "public_base_url", "device", "allow_public_without_key"))
    keys = KeyStore(settings.database_path)
    if keys.count() == 0:
        if not settings.is_loopback and not settings.allow_public_without_key:
            print(f"refusing to listen on {settings.host}: no API key exists. Create one with "
                  "`qwen-image-server keys create`, or pass --allow-public-without-key.", file=sys.stderr)
            return 2
        print(f"No API key existed; created one (shown once, store it now):\n\n    {keys.create('first')}\n",
              flush=True)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
    return 0


def create_key(arguments: argparse.Namespace) -> int:
    from qwen_image_server.keys import KeyStore

    settings = _settings(arguments, ("data_dir",))
    print(KeyStore(settings.database_path).create(arguments.name))
    return 0


def demo_models(arguments: argparse.Namespace) -> int:
    from qwen_image_server.engine.demo_models import build_demo_models

    settings = _settings(arguments, ("data_dir", "demo_models_dir"))
    assert settings.demo_models_dir is not None
    for family, path in build_demo_models(settings.demo_models_dir).items():
        print(f"{family}: {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="qwen-image-server", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    run = commands.add_parser("serve", help="start the HTTP server")
    run.add_argument("--host")
    run.add_argument("--port", type=int)
    run.add_argument("--preset", choices=["demo", "real"], help="demo: tiny offline models (noise)")
    run.add_argument("--models-config", type=Path, dest="models_config", help="TOML model registry overrides")
    run.add_argument("--models", dest="enabled_models", type=lambda text: text.split(","),
                     help="comma-separated API model names to serve (default: all)")
    run.add_argument("--data-dir", type=Path, dest="data_dir")
    run.add_argument("--public-base-url", dest="public_base_url")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"])
    run.add_argument("--allow-public-without-key", action="store_true", default=None,
                     dest="allow_public_without_key")
    run.set_defaults(handler=serve)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command",
                                                                              required=True)
    create = keys.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", default="default")
    create.add_argument("--data-dir", type=Path, dest="data_dir")
    create.set_defaults(handler=create_key)

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
