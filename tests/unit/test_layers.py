"""The layers keep to their seams: the engine imports nothing of the task or HTTP layers, the HTTP and task
layers never import torch or diffusers, and what the HTTP layer reads of the engine package is torch-free."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "qwen_image_server"
TORCH_FREE_ENGINE_MODULES = {"contract", "batching", "rules", "registry", "families"}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def test_the_engine_imports_nothing_of_the_task_or_http_layers():
    for path in modules("engine"):
        bad = {name for name in imports_of(path) if name.startswith(("qwen_image_server.tasks",
                                                                     "qwen_image_server.api"))}
        assert not bad, (path.name, bad)


def test_the_http_and_task_layers_never_import_torch():
    for folder in ("api", "tasks", "media"):
        for path in modules(folder):
            imported = imports_of(path)
            bad = {name for name in imported if name.split(".")[0] in ("torch", "diffusers", "transformers")}
            engine = {name.rsplit(".", 1)[-1] for name in imported if name.startswith("qwen_image_server.engine.")}
            assert not bad, (path, bad)
            assert engine <= TORCH_FREE_ENGINE_MODULES, (path, engine - TORCH_FREE_ENGINE_MODULES)


def test_the_torch_free_engine_modules_are_torch_free():
    for name in TORCH_FREE_ENGINE_MODULES:
        imported = imports_of(PACKAGE / "engine" / f"{name}.py")
        assert not {module for module in imported if module.split(".")[0] in ("torch", "diffusers")}, name
        assert not {module.rsplit(".", 1)[-1] for module in imported
                    if module.startswith("qwen_image_server.engine.")} - TORCH_FREE_ENGINE_MODULES, name
